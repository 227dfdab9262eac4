"""The training loop, through the same function `train.py` runs."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import tasks
import train
from configs import multitask
from configs import orientation
from configs import propel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_orientation_config(**overrides):
  config = orientation.get_config()
  config.image_size = 16
  config.model.features = (4, 8)
  config.batch_size = 4
  config.eval.num_examples = 8
  config.eval.batch_size = 8
  config.schedule.name = "constant"
  config.log_every_steps = 1
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 2
  config.progress_bar = False
  config.update(overrides)
  return config


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def latest_params(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())
  manager.close()
  return restored["params"]


@pytest.mark.parametrize("loss", ["angular", "mse"])
def test_few_steps_train_and_write_outputs(tmp_path, loss):
  metrics = train.train_and_evaluate(tiny_orientation_config(num_train_steps=3, loss=loss), str(tmp_path))
  assert np.isfinite(metrics["mean_abs_error_deg"])
  assert 0 <= metrics["within_5deg"] <= metrics["within_10deg"] <= 1
  lines = read_metrics(tmp_path)
  assert [l["step"] for l in lines if l["split"] == "train"] == [1, 2, 3]
  assert all(np.isfinite(l["loss"]) for l in lines if l["split"] == "train")
  assert os.path.exists(tmp_path / "orientation_examples.png")
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))


def test_resume_continues_at_the_right_step_and_matches_an_uninterrupted_run(tmp_path):
  uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
  train.train_and_evaluate(tiny_orientation_config(num_train_steps=4), str(uninterrupted))
  train.train_and_evaluate(tiny_orientation_config(num_train_steps=2), str(resumed))
  train.train_and_evaluate(tiny_orientation_config(num_train_steps=4), str(resumed))
  steps = [l["step"] for l in read_metrics(resumed) if l["split"] == "train"]
  assert steps == [1, 2, 3, 4]
  jax.tree.map(np.testing.assert_array_equal, latest_params(resumed), latest_params(uninterrupted))
  loss_at = lambda workdir: [l["loss"] for l in read_metrics(workdir) if l["split"] == "train"]
  assert loss_at(resumed) == loss_at(uninterrupted)


def test_same_seed_same_result_and_other_seed_differs(tmp_path):
  run = lambda name, seed: train.train_and_evaluate(
      tiny_orientation_config(num_train_steps=2, seed=seed), str(tmp_path / name))
  first = run("a", 0)
  assert run("b", 0) == first
  assert run("c", 1) != first


def test_unknown_task_and_bad_options_are_clear_errors(tmp_path):
  config = tiny_orientation_config()
  config.task = "orientaton"
  with pytest.raises(ValueError, match="Unknown task 'orientaton'; available tasks: .*orientation"):
    train.train_and_evaluate(config, str(tmp_path))
  with pytest.raises(ValueError, match="config.loss"):
    tasks.build(tiny_orientation_config(loss="l1"))
  with pytest.raises(ValueError, match="variant"):
    orientation.get_config("huge")


def test_command_line_rejects_a_misspelled_override(tmp_path):
  result = subprocess.run(
      [sys.executable, "train.py", "--config=configs/orientation.py", f"--workdir={tmp_path}",
       "--config.num_train_step=10"],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode != 0
  assert "Did you mean" in result.stderr and "num_train_steps" in result.stderr


@pytest.mark.parametrize("config", [orientation.get_config(), orientation.get_config("full"),
                                    propel.get_config(), multitask.get_config()])
def test_configs_have_the_loop_fields(config):
  for field in ("task", "num_train_steps", "batch_size", "seed", "optimizer", "schedule"):
    assert field in config
  assert config.task in tasks.available()


def tiny_run_settings(**overrides):
  return dict(num_train_steps=2, batch_size=4, log_every_steps=1, eval_every_steps=100,
              checkpoint_every_steps=100, progress_bar=False, **overrides)


@pytest.mark.parametrize("loss", ["propel", "mdn", "mse"])
def test_propel_experiment_runs_a_few_steps(tmp_path, loss):
  config = propel.get_config()
  config.update(tiny_run_settings(loss=loss, canvas_size=16, digit_size=12.0))
  config.model.features, config.model.hidden = (4,), 8
  config.eval.angles_per_digit = 1
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert 0 <= metrics["ambiguous/mean_error_deg"] <= 180
  assert ("nll" in metrics) == (loss != "mse")
  assert os.path.exists(tmp_path / "propel_mixtures.png")


@pytest.mark.parametrize("weighting", ["fixed", "trainable", "uncertainty", "dwa"])
def test_multitask_experiment_runs_a_few_steps(tmp_path, weighting):
  config = multitask.get_config()
  config.update(tiny_run_settings(weighting=weighting, canvas_size=16, min_digit_size=8.0, max_digit_size=10.0,
                                  dwa_period=1))
  config.model.features = (4, 4)
  config.eval.num_examples = 16
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert 0 <= metrics["iou"] <= 1 and 0 <= metrics["accuracy"] <= 1
  records = [l for l in read_metrics(tmp_path) if l["split"] == "train"]
  assert all(np.isfinite(r["weighted_loss_localization"]) for r in records)
  assert os.path.exists(tmp_path / "multitask_weights.png")
