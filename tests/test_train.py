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


def test_training_writes_its_outputs_resumes_exactly_and_follows_the_seed(tmp_path):
  """One test, so that the orientation programs are compiled once for all of these runs."""
  uninterrupted, resumed, other_seed = tmp_path / "uninterrupted", tmp_path / "resumed", tmp_path / "other_seed"
  metrics = train.train_and_evaluate(tiny_orientation_config(num_train_steps=4), str(uninterrupted))
  assert np.isfinite(metrics["mean_abs_error_deg"])
  assert 0 <= metrics["within_5deg"] <= metrics["within_10deg"] <= 1
  assert all(np.isfinite(l["loss"]) for l in read_metrics(uninterrupted) if l["split"] == "train")
  assert os.path.exists(uninterrupted / "orientation_examples.png")
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(uninterrupted))

  # Stopped after step 2 and restarted with the same command: steps 3 and 4 follow.
  train.train_and_evaluate(tiny_orientation_config(num_train_steps=2), str(resumed))
  train.train_and_evaluate(tiny_orientation_config(num_train_steps=4), str(resumed))
  steps = [l["step"] for l in read_metrics(resumed) if l["split"] == "train"]
  assert steps == [1, 2, 3, 4]
  jax.tree.map(np.testing.assert_array_equal, latest_params(resumed), latest_params(uninterrupted))
  loss_at = lambda workdir: [l["loss"] for l in read_metrics(workdir) if l["split"] == "train"]
  assert loss_at(resumed) == loss_at(uninterrupted)  # Same seed: the same run, bit for bit.
  train.train_and_evaluate(tiny_orientation_config(num_train_steps=2, seed=1), str(other_seed))
  assert loss_at(other_seed) != loss_at(uninterrupted)[:2]


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


def tiny_propel_config(**overrides):
  config = propel.get_config()
  config.update(tiny_run_settings(canvas_size=16, digit_size=12.0, **overrides))
  config.model.features, config.model.hidden = (4,), 8
  config.eval.angles_per_digit = 1
  return config


def tiny_multitask_config(**overrides):
  config = multitask.get_config()
  config.update(tiny_run_settings(canvas_size=16, min_digit_size=8.0, max_digit_size=10.0, dwa_period=1,
                                  **overrides))
  config.model.features = (4, 4)
  config.eval.num_examples = 16
  return config


@pytest.mark.parametrize("loss", ["propel", "mdn"])
def test_propel_experiment_runs_a_few_steps(tmp_path, loss):
  metrics = train.train_and_evaluate(tiny_propel_config(loss=loss), str(tmp_path))
  assert 0 <= metrics["ambiguous/mean_error_deg"] <= 180
  assert "nll" in metrics
  assert os.path.exists(tmp_path / "propel_mixtures.png")


# "trainable" has weighting parameters and "dwa" weighting state.
@pytest.mark.parametrize("weighting", ["trainable", "dwa"])
def test_multitask_experiment_runs_a_few_steps(tmp_path, weighting):
  metrics = train.train_and_evaluate(tiny_multitask_config(weighting=weighting), str(tmp_path))
  assert 0 <= metrics["iou"] <= 1 and 0 <= metrics["accuracy"] <= 1
  records = [l for l in read_metrics(tmp_path) if l["split"] == "train"]
  assert all(np.isfinite(r["weighted_loss_localization"]) for r in records)
  assert os.path.exists(tmp_path / "multitask_weights.png")


# The "fixed" and "uncertainty" weightings differ from those run above only inside
# `losses.loss_weighting`, which tests/test_multitask.py covers.
@pytest.mark.parametrize("config", [
    tiny_orientation_config(loss="mse", model={"features": (4,)}), tiny_propel_config(loss="mse")],
                         ids=["orientation-mse", "propel-mse"])
def test_other_options_give_finite_losses_and_gradients(config):
  """The options the loop tests above leave out, through the task's loss alone (cheaper than a run)."""
  task = tasks.build(config)
  params, task_state = task.init(jax.random.key(0))
  batch = jax.jit(task.train_batch)(config.seed, 0)
  grad_fn = jax.jit(jax.value_and_grad(task.loss, has_aux=True))
  (value, (metrics, _)), grads = grad_fn(params, task_state, batch, jax.random.key(1))
  assert np.isfinite(value) and all(np.isfinite(m) for m in jax.tree.leaves(metrics))
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
