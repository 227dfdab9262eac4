"""The training loop, through the same function `train.py` runs."""

import json
import os

import jax
import numpy as np
import pytest

from configs import instances
from configs import multitask
from configs import orientation
from configs import propel
from rundir import read_metrics
import tasks
import tasks.multitask
import tiny_configs
import train


def tiny_config(experiment="orientation", **overrides):
  config = tiny_configs.get_config(experiment)
  config.update(overrides)
  return config


def test_training_writes_its_outputs_and_follows_the_seed(tmp_path):
  """One test, so that the orientation programs are compiled once for both runs."""
  metrics = train.train_and_evaluate(tiny_config(tensorboard=True), str(tmp_path / "seed0"))
  assert np.isfinite(metrics["mean_abs_error_deg"])
  assert 0 <= metrics["within_5deg"] <= metrics["within_10deg"] <= 1
  records = read_metrics(tmp_path / "seed0", "train")
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  assert all(np.isfinite(r["loss"]) for r in records)
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "seed0"))
  assert sorted(os.listdir(tmp_path / "seed0" / "checkpoints")) == ["2", "4"]

  profile = {"start_step": 2, "num_steps": 1}
  train.train_and_evaluate(tiny_config(num_train_steps=2, seed=1, profile=profile), str(tmp_path / "seed1"))
  loss_at = lambda workdir: [r["loss"] for r in read_metrics(workdir, "train")]
  assert loss_at(tmp_path / "seed1") != loss_at(tmp_path / "seed0")[:2]
  # The profiler trace of step 2, where TensorBoard's profile plugin looks for it.
  (trace_dir,) = (tmp_path / "seed1" / "plugins" / "profile").iterdir()
  assert any(path.name.endswith(".xplane.pb") for path in trace_dir.iterdir())
  assert not (tmp_path / "seed0" / "plugins").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"task": "orientaton"}, "Unknown task 'orientaton'"),
    ({"loss": "l1"}, "config.loss must be one of"),
    ({"on_nonfinite": "ignore"}, "on_nonfinite must be 'stop' or 'skip'"),
    ({"log_every_steps": 0}, "log_every_steps must be positive"),
    ({"log_every_steps": 4}, "checkpoint_every_steps=2 must be a multiple of config.log_every_steps=4"),
    ({"image_size": 17, "model": {"features": (4, 8)}}, "UNet with 2 levels needs input .* divisible by 2"),
    ({"optimizer": {"name": "adamm"}}, "optimizer.name must be one of"),
    ({"schedule": {"name": "cosine"}}, "schedule.name must be"),
    ({"profile": {"start_step": 0, "num_steps": 2}}, "start_step must be in"),
])
def test_bad_settings_are_config_errors_raised_before_compiling(overrides, message):
  with pytest.raises(tasks.ConfigError, match=message):
    train.build_training(tiny_config(**overrides))


def test_unknown_config_variant():
  with pytest.raises(ValueError, match="variant"):
    orientation.get_config("huge")


@pytest.mark.parametrize("config", [orientation.get_config(), orientation.get_config("full"),
                                    propel.get_config(), multitask.get_config(), instances.get_config()])
def test_configs_have_the_loop_fields(config):
  train.check_loop_config(config, num_devices=1)
  for field in ("task", "num_train_steps", "batch_size", "seed", "optimizer", "schedule"):
    assert field in config
  assert config.task in tasks.available()


@pytest.mark.parametrize("loss", ["propel", "weighted_propel", "mdn"])
def test_propel_experiment_runs_a_few_steps(tmp_path, loss):
  metrics = train.train_and_evaluate(tiny_config("propel", loss=loss, num_train_steps=2), str(tmp_path))
  assert 0 <= metrics["ambiguous/mean_error_deg"] <= 180
  assert "nll" in metrics


# "trainable" has weighting parameters and "dwa" weighting state; "upgrad" and "nash_mtl" solve problems in
# the Gramian, "graddrop" is random; the tiny three-task config runs GradNorm in the tests over EXPERIMENTS.
# The last two only in the slow run: in the loop they are one more aggregator like "upgrad", and
# tests/test_aggregation.py checks them under jit.
@pytest.mark.parametrize("weighting", ["trainable", "dwa", "upgrad", pytest.param("nash_mtl", marks=pytest.mark.slow),
                                       pytest.param("graddrop", marks=pytest.mark.slow)])
def test_multitask_experiment_runs_a_few_steps(tmp_path, weighting):
  metrics = train.train_and_evaluate(tiny_config("multitask", weighting=weighting, num_train_steps=2), str(tmp_path))
  assert 0 <= metrics["iou"] <= 1 and 0 <= metrics["accuracy"] <= 1
  records = read_metrics(tmp_path, "train")
  assert all(np.isfinite(r["weight_localization"]) and np.isfinite(r["loss_classification"]) for r in records)


def test_three_tasks_train_and_report_the_size_error(tmp_path):
  metrics = train.train_and_evaluate(tiny_config("three_tasks", num_train_steps=2), str(tmp_path))
  assert metrics["size_error_px"] >= 0 and 0 <= metrics["iou"] <= 1
  assert {"weight_size", "loss_size"} <= set(read_metrics(tmp_path, "train")[-1])


@pytest.mark.parametrize("shared_params, message", [
    ((), r"shared_params must name some of the model's modules, got \(\)"), (("Encoder",), r"unknown: \['Encoder'\]")])
def test_a_gradient_level_method_needs_shared_parameters(shared_params, message):
  with pytest.raises(tasks.ConfigError, match=message):
    train.build_training(tiny_config("multitask", weighting="upgrad", shared_params=shared_params))


def test_the_step_is_one_program_for_every_seed():
  """The seed enters through the state and the batch, so a seed sweep compiles the step once."""
  def step_program(seed):
    training = train.build_training(tiny_config("three_tasks", seed=seed))
    state, batch = jax.eval_shape(training.init), jax.eval_shape(training.next_batch, seed, 0)
    return training.step.lower(state, batch).as_text()
  assert step_program(0) == step_program(1)


@pytest.mark.parametrize("representation_gradients", [False, True], ids=["parameters", "representation"])
def test_the_mean_method_moves_shared_parameters_by_the_mean_task_gradient(representation_gradients):
  """Plain SGD with "mean": the shared parameters move by the mean of the per-task gradients (jax.jacrev of
  the task losses), each head by its own task's. At the representation the mean is exact too (linearity)."""
  config = tiny_config("three_tasks", weighting="mean", representation_gradients=representation_gradients)
  config.optimizer.update(dict(name="sgd", momentum=0.0, learning_rate=1.0, grad_clip_norm=0.0))
  training = train.build_training(config, jax.devices()[:1])
  state, batch = training.init(), training.next_batch(config.seed, 0)
  task_losses = tasks.multitask.logged_task_losses(training.task, tasks.multitask.names_of_tasks(config))
  params, task_state = jax.device_get((state.params, state.task_state))
  jacobian = jax.jit(jax.jacrev(lambda p: task_losses(p, task_state, batch, jax.random.key(0))[0]))(params)
  expected = jax.tree.map(lambda value, rows, shared: value - (rows.mean(0) if shared else rows.sum(0)),
                          params, jacobian, tasks.multitask.shared_mask(config, params))
  stepped = jax.device_get(training.step(state, batch)[0].params)
  jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6), stepped, expected)


@pytest.mark.parametrize("overrides, message", [
    (dict(weighting="trainable"), "representation_gradients applies to the gradient-level methods"),
    (dict(shared_params=("ConvBlock_0",)), r"must be its modules \('ConvBlock_0', 'ConvBlock_1'\)")])
def test_representation_gradients_need_a_gradient_level_method_and_the_encoder(overrides, message):
  with pytest.raises(tasks.ConfigError, match=message):
    train.build_training(tiny_config("three_tasks", representation_gradients=True, **overrides))


@pytest.mark.parametrize("experiment", list(tiny_configs.EXPERIMENTS))
def test_every_task_draws_its_figures(tmp_path, experiment):
  config = tiny_config(experiment)
  task = tasks.build(config)
  if config.task == "multitask":  # Its figure is the history of the weights and losses in the train records.
    names = tasks.multitask.TASK_NAMES[:config.num_tasks]
    with open(tmp_path / "metrics.jsonl", "w", encoding="utf-8") as f:
      f.writelines(json.dumps({"step": s, "split": "train", **{f"weight_{n}": 0.5 for n in names},
                               **{f"loss_{n}": 1.0 / s for n in names}}) + "\n" for s in (1, 2))
  paths = task.write_figures(*jax.device_get(task.init(jax.random.key(0))), str(tmp_path))
  assert paths and all(os.path.getsize(path) > 0 for path in paths)


# The "fixed" and "uncertainty" weightings differ from those run above only inside
# `losses.loss_weighting`, which tests/test_multitask.py covers.
@pytest.mark.parametrize("config", [
    tiny_config(loss="mse"), tiny_config("propel", loss="mse")],
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


@pytest.mark.parametrize("experiment", tiny_configs.EXPERIMENTS)
def test_bfloat16_compute_trains_like_float32_with_float32_state(experiment):
  losses_by_dtype = {}
  for dtype in ("float32", "bfloat16"):
    training = train.build_training(tiny_config(experiment, compute_dtype=dtype))
    state = training.init()
    step_losses = []
    for step in range(3):
      state, metrics, finite = training.step(state, training.next_batch(0, step))
      assert all(jax.device_get(finite).values()), (dtype, step)
      step_losses.append(float(metrics["loss"]))
    losses_by_dtype[dtype] = step_losses
    # Parameters and optimizer state (so the checkpoints) stay float32 whatever the compute dtype.
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
      assert leaf.dtype in (np.float32, np.int32), (dtype, leaf.dtype)
  np.testing.assert_allclose(losses_by_dtype["bfloat16"], losses_by_dtype["float32"], rtol=0.05)


def test_an_unknown_compute_dtype_is_a_config_error():
  with pytest.raises(tasks.ConfigError, match="compute_dtype must be one of"):
    train.build_training(tiny_config(compute_dtype="float16"))
