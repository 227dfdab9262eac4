"""Generic training loop: `python train.py --config=configs/<experiment>.py --workdir=DIR`.

The loop knows nothing about any experiment: `config.task` names a module in
`tasks/` that supplies the data stream, the parameters, the loss and the
evaluation. The loop owns the optimizer, sharding over devices,
checkpointing and logging. Restarting the same command resumes from the
latest checkpoint in `--workdir`.
"""

import json
import os
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import flax
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax
import orbax.checkpoint as ocp
import rich.progress

import tasks

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  task_state: Any


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  peak = config.optimizer.learning_rate
  if config.schedule.name == "constant":
    return optax.constant_schedule(peak)
  if config.schedule.name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=config.schedule.warmup_steps,
        decay_steps=max(config.num_train_steps, config.schedule.warmup_steps + 1),
        end_value=peak * config.schedule.final_learning_rate_factor)
  raise ValueError(f"Unknown schedule {config.schedule.name!r}; use 'warmup_cosine' or 'constant'.")


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  schedule = make_schedule(config)
  options = config.optimizer
  optimizers = {
      "adamw": lambda: optax.adamw(schedule, weight_decay=options.weight_decay),
      "adam": lambda: optax.adam(schedule),
      "sgd": lambda: optax.sgd(schedule, momentum=options.momentum),
  }
  if options.name not in optimizers:
    raise ValueError(f"Unknown optimizer {options.name!r}; use one of {sorted(optimizers)}.")
  clip = [optax.clip_by_global_norm(options.grad_clip_norm)] if options.grad_clip_norm > 0 else []
  return optax.chain(*clip, optimizers[options.name]())


class MetricWriter:
  """Appends metrics to `metrics.jsonl` and TensorBoard event files (process 0 only)."""

  def __init__(self, workdir: str):
    self._active = jax.process_index() == 0
    if self._active:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      self._tensorboard = SummaryWriter(logdir=workdir)

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    if not self._active:
      return
    self._jsonl.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
    self._jsonl.flush()
    for name, value in metrics.items():
      self._tensorboard.add_scalar(f"{split}/{name}", value, step)
    self._tensorboard.flush()

  def close(self) -> None:
    if self._active:
      self._jsonl.close()
      self._tensorboard.close()


def _progress_bar(enabled: bool) -> rich.progress.Progress:
  return rich.progress.Progress(
      rich.progress.TextColumn("[bold]step {task.completed}/{task.total}"),
      rich.progress.BarColumn(),
      rich.progress.TextColumn("loss {task.fields[loss]:.4g}  {task.fields[rate]:.2f} steps/s"),
      rich.progress.TimeRemainingColumn(),
      disable=not enabled or jax.process_index() != 0,
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config.task` for `config.num_train_steps`, resuming from `workdir`.

  Returns:
    The metrics of the final evaluation.
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  devices = jax.devices()
  if config.batch_size % len(devices):
    raise ValueError(
        f"config.batch_size={config.batch_size} is not divisible by the {len(devices)} devices "
        "the batch is sharded over.")
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

  task = tasks.build(config)
  optimizer = make_optimizer(config)
  init_rng, loss_rng = jax.random.split(jax.random.key(config.seed))

  def init_state():
    params, task_state = task.init(init_rng)
    return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                      opt_state=optimizer.init(params), task_state=task_state)

  def train_step(state, batch):
    rng = jax.random.fold_in(loss_rng, state.step)
    grad_fn = jax.value_and_grad(task.loss, has_aux=True)
    (loss, (metrics, task_state)), grads = grad_fn(state.params, state.task_state, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                           opt_state=opt_state, task_state=task_state)
    return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads), **metrics}

  state = jax.jit(init_state, out_shardings=replicated)()
  checkpoints = ocp.CheckpointManager(
      os.path.join(workdir, "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.max_checkpoints_to_keep))
  if checkpoints.latest_step() is not None:
    abstract_state = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = checkpoints.restore(checkpoints.latest_step(), args=ocp.args.StandardRestore(abstract_state))
    logging.info("Resumed from the checkpoint at step %d.", int(state.step))

  train_step = jax.jit(train_step, in_shardings=(replicated, batch_sharding),
                       out_shardings=(replicated, replicated), donate_argnums=0)
  next_batch = jax.jit(task.train_batch, out_shardings=batch_sharding)
  writer = MetricWriter(workdir)
  first_step, last_step = int(state.step), config.num_train_steps
  eval_metrics = {}
  pending, interval_start = [], time.perf_counter()
  with _progress_bar(config.progress_bar) as progress:
    bar = progress.add_task("train", total=last_step, completed=first_step, loss=float("nan"), rate=0.0)
    for step in range(first_step + 1, last_step + 1):
      state, metrics = train_step(state, next_batch(config.seed, step - 1))
      pending.append(metrics)
      if step % config.log_every_steps == 0 or step == last_step:
        summary = {k: float(np.mean(v)) for k, v in jax.device_get(jax.tree.map(lambda *x: x, *pending)).items()}
        now = time.perf_counter()
        summary["steps_per_second"] = len(pending) / (now - interval_start)
        pending, interval_start = [], now
        writer.write(step, "train", summary)
        progress.update(bar, completed=step, loss=summary["loss"], rate=summary["steps_per_second"])
        logging.info("step %d: %s", step, summary)
      if step % config.eval_every_steps == 0 or step == last_step:
        eval_metrics = task.evaluate(state.params, state.task_state)
        writer.write(step, "eval", eval_metrics)
        logging.info("eval at step %d: %s", step, eval_metrics)
        interval_start = time.perf_counter()  # Keep evaluation out of steps/s.
      if step % config.checkpoint_every_steps == 0 or step == last_step:
        checkpoints.save(step, args=ocp.args.StandardSave(state), force=True)
  checkpoints.wait_until_finished()
  checkpoints.close()
  if not eval_metrics:  # Restarted after the last step: nothing ran, evaluate the final state again.
    eval_metrics = task.evaluate(state.params, state.task_state)
    writer.write(last_step, "eval", eval_metrics)
  writer.close()
  if jax.process_index() == 0:
    for path in task.write_figures(state.params, state.task_state, workdir):
      logging.info("Wrote %s", path)
  return eval_metrics


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Orbax logs every step of every save at INFO; keep the log about training.
  logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
