"""What happens when a run dies, diverges or is misconfigured."""

import dataclasses
import functools
import json
import os
import re
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import airbus_layout
import rundir
from rundir import read_metrics
import runs
import tasks
import tiny_configs
import train

COMMAND = runs.TINY_ORIENTATION


def start_run(workdir, *overrides, command=COMMAND):
  return subprocess.Popen([*command, f"--workdir={workdir}", *overrides], cwd=runs.ROOT, env=runs.subprocess_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(process, condition, timeout=300):
  """Polls `condition()` every 0.5 ms; fails if the process ends or the time runs out first."""
  deadline = time.monotonic() + timeout
  while not condition():
    if process.poll() is not None:
      pytest.fail(f"The run ended before the moment to stop it:\n{process.stderr.read()[-3000:]}")
    if time.monotonic() > deadline:
      process.kill()
      pytest.fail("Timed out waiting for the moment to stop the run.")
    time.sleep(0.0005)


def checkpoint_being_written(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any("tmp" in name for name in os.listdir(directory))


def last_train_step(workdir):
  try:
    records = read_metrics(workdir, "train")
  except (FileNotFoundError, json.JSONDecodeError):  # Not written yet, or caught mid-line.
    return 0
  return records[-1]["step"] if records else 0


def without_timing(records):
  return [{k: v for k, v in r.items() if k != "steps_per_second"} for r in records]


def assert_same_run(workdir, reference):
  step, params = rundir.latest_params(workdir)
  reference_step, reference_params = rundir.latest_params(reference)
  assert step == reference_step
  jax.tree.map(np.testing.assert_array_equal, params, reference_params)
  for split in ("train", "eval"):
    assert without_timing(read_metrics(workdir, split)) == without_timing(read_metrics(reference, split))


# Procedural data replay from the step; the Airbus loader's Grain iterator resumes from its checkpointed state;
# three_tasks trains with GradNorm, whose weights and initial losses are its task state (the aggregator's).
@pytest.mark.slow  # Minutes of CPU: run by .ci/run after the README's test command.
@pytest.mark.parametrize("experiment", ["orientation", "airbus", "three_tasks"])
def test_killed_preempted_and_damaged_runs_resume_to_the_uninterrupted_result(tmp_path, experiment):
  """One run stopped in every way in turn; each restart is the same command. Checkpoints every 4 steps."""
  reference, run_dir = tmp_path / "reference", tmp_path / "run"
  config = tiny_configs.get_config(experiment)
  config.update(dict(num_train_steps=12, checkpoint_every_steps=4))
  steps = ["--config.num_train_steps=12", "--config.checkpoint_every_steps=4"]
  if experiment == "airbus":
    config.data_dir = str(tmp_path / "airbus")
    airbus_layout.write_layout(config.data_dir)
    steps.append(f"--config.data_dir={config.data_dir}")
  start = functools.partial(start_run, command=[*COMMAND[:2], f"--config=tests/tiny_configs.py:{experiment}"])
  train.train_and_evaluate(config, str(reference))

  run = start(run_dir, *steps)  # SIGKILL while a checkpoint is being written,
  wait_for(run, lambda: checkpoint_being_written(run_dir))
  run.kill()
  run.wait()
  run = start(run_dir, *steps)  # SIGKILL between two checkpoints,
  wait_for(run, lambda: last_train_step(run_dir) >= 6)
  run.kill()
  run.wait()
  run = start(run_dir, *steps)  # SIGTERM, which saves a checkpoint at the step it arrives,
  wait_for(run, lambda: last_train_step(run_dir) >= 9)
  run.send_signal(signal.SIGTERM)
  assert run.wait(timeout=120) == train.PREEMPTED_EXIT_STATUS, run.stderr.read()[-3000:]
  assert "saved the checkpoint at step" in run.stderr.read()
  preempted_at, _ = rundir.latest_params(run_dir)
  assert 9 <= preempted_at == last_train_step(run_dir) < 12 and preempted_at % 4  # Not a scheduled step.
  run = start(run_dir, *steps)  # then left to finish.
  assert run.wait(timeout=300) == 0, run.stderr.read()[-3000:]
  assert_same_run(run_dir, reference)

  for directory, _, files in os.walk(run_dir / "checkpoints" / "12"):  # Cut the last checkpoint's files short:
    for name in files:
      with open(os.path.join(directory, name), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(directory, name)) // 2)
  train.train_and_evaluate(config, str(run_dir))  # it is moved aside and the one before it used.
  assert os.listdir(run_dir / "broken_checkpoints")
  assert_same_run(run_dir, reference)


def poisoned_task(monkeypatch, bad_step):
  """Builds tasks whose training batch at `bad_step` (0-based) holds a NaN pixel."""
  build = tasks.build

  def build_poisoned(config):
    task = build(config)

    def train_batch(seed, step):
      batch = task.train_batch(seed, step)
      image = batch["image"]
      return {**batch, "image": image.at[0, 0, 0].set(jnp.where(step == bad_step, jnp.nan, image[0, 0, 0]))}

    return dataclasses.replace(task, train_batch=train_batch)

  monkeypatch.setattr(tasks, "build", build_poisoned)


def test_a_non_finite_step_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
  poisoned_task(monkeypatch, bad_step=2)
  expected = r"Step 3 produced non-finite goe, grad_norm, loss, .*gradients of 10 of 10 .*\(step 2\)"
  with pytest.raises(train.NonFiniteError, match=expected):
    train.train_and_evaluate(tiny_configs.get_config("orientation"), str(tmp_path))
  with open(tmp_path / "nonfinite_step_3.json", encoding="utf-8") as f:
    report = json.load(f)
  assert report["batch"]["['image']"]["num_nonfinite"] == 1
  step, params = rundir.latest_params(tmp_path)
  assert step == 2 and all(np.isfinite(p).all() for p in jax.tree.leaves(params))


def test_skipping_non_finite_steps_counts_them(tmp_path, monkeypatch):
  poisoned_task(monkeypatch, bad_step=2)
  config = tiny_configs.get_config("orientation")
  config.on_nonfinite = "skip"
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(metrics["mean_abs_error_deg"])
  records = read_metrics(tmp_path, "train")
  assert [r["skipped_steps"] for r in records] == [0, 0, 1, 1]
  assert np.isnan(records[2]["loss"]) and np.isfinite(records[3]["loss"])
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(rundir.latest_params(tmp_path)[1]))


# One setting of each kind; tests/test_train.py checks the other errors in-process.
@pytest.mark.parametrize("override, message", [
    ("--config.task=orientaton", "Unknown task 'orientaton'; available tasks: .*orientation"),
    ("--config.num_train_step=10", "no field 'num_train_step'. Did you mean .*num_train_steps"),
    ("--config.batch_size=6", "batch_size=6 is not divisible by the 8 devices"),
])
def test_config_errors_are_one_line_before_anything_compiles(tmp_path, override, message):
  env = runs.subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_LOG_COMPILES="1")
  result = subprocess.run([*COMMAND, f"--workdir={tmp_path}", override], cwd=runs.ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode != 0
  assert "Compiling" not in result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip() and not re.match(r"[IWE]\d{4} ", line)]
  assert len(lines) == 1 and re.search(message, lines[0]), result.stderr
