"""The same training on 1 device, 8 devices and 2 processes."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import rundir
from rundir import read_metrics
import runs
import tiny_configs
import train

# Minutes of CPU: run by .ci/run after the README's test command (`-m slow`).
pytestmark = pytest.mark.slow


def test_eight_devices_give_the_parameters_of_one_for_every_experiment():
  result = subprocess.run(
      [sys.executable, "tests/same_params_on_devices.py"], cwd=runs.ROOT, capture_output=True, text=True,
      # Its own compilation cache: XLA:CPU splits loops over threads by the device count, so a program
      # compiled here rounds differently from the same program compiled by a 1-device process.
      env=runs.subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8",
                              JAX_COMPILATION_CACHE_DIR=os.path.join(jax.config.jax_compilation_cache_dir, "8")),
      timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  differences = json.loads(result.stdout.splitlines()[-1])
  assert sorted(differences) == sorted(tiny_configs.EXPERIMENTS)
  for experiment, difference in differences.items():
    assert difference["num_devices"] == [1, 8], experiment
    assert difference["max_abs_change"] > 1e-4, experiment  # The steps did move the parameters,
    assert difference["max_abs_difference"] < 1e-6, experiment  # by the same amount up to float32 rounding.


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one(tmp_path):
  """Two processes on localhost, one CPU device each, share the batch of a single-process run."""
  address, sgd = f"localhost:{free_port()}", "--config.optimizer.name=sgd"  # See same_params_on_devices.py.
  processes = [
      subprocess.Popen([*runs.TINY_ORIENTATION, f"--workdir={tmp_path / 'two'}", sgd,
                        f"--coordinator_address={address}", "--num_processes=2", f"--process_id={index}"],
                       cwd=runs.ROOT, env=runs.subprocess_env(), stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
      for index in range(2)]
  for process in processes:
    assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]

  config = tiny_configs.get_config("orientation")
  config.optimizer.name = "sgd"
  train.train_and_evaluate(config, str(tmp_path / "one"))
  (step_two, params_two), (step_one, params_one) = map(rundir.latest_params, (tmp_path / "two", tmp_path / "one"))
  assert step_two == step_one == config.num_train_steps
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params_two, params_one)
  # Process 0 alone wrote the metrics: one record per step, equal to the single process's.
  two, one = read_metrics(tmp_path / "two", "train"), read_metrics(tmp_path / "one", "train")
  assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, config.num_train_steps + 1))
  np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-5)
