"""Generic training loop: `python train.py --config=configs/<experiment>.py --workdir=DIR`.

The loop knows nothing about any experiment: `config.task` names a module in
`tasks/` that supplies the data stream, the parameters, the loss (or its own
gradients) and the evaluation. The loop owns the optimizer, sharding over devices and hosts,
checkpointing, logging and the guards that keep a long run safe:

* Restarting the same command resumes from the latest complete checkpoint in
  `--workdir` and replays the data stream from that step (procedural data are
  a function of the step; a data set's Grain iterator state is part of the
  checkpoint), so a run killed at any moment finishes with the parameters and
  metrics of an uninterrupted run.
  A checkpoint that cannot be read is moved aside and the one before it used.
* SIGTERM (a preemption notice) saves a checkpoint at the current step and
  exits with status 143.
* A step whose loss, metrics or gradients are not finite is never applied; by
  default the run stops there (`config.on_nonfinite="stop"`), otherwise it is
  skipped and counted (`"skip"`).

What the run leaves in `--workdir` (config, metrics, checkpoints, reports) is laid out, written and
read by `rundir.py`.
"""

from collections.abc import Callable
import contextlib
import dataclasses
import json
import os
import signal
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import flax
import grain
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax
import orbax.checkpoint as ocp
import rich.progress

import rundir
import tasks
from tasks.base import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Initialise jax.distributed for a multi-process run. On Cloud TPU, SLURM, Open MPI and Kubernetes "
    "the processes find each other; elsewhere give --coordinator_address, --num_processes and --process_id. "
    "Implied by --coordinator_address or the JAX_COORDINATOR_ADDRESS environment variable.")
_COORDINATOR_ADDRESS = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process, 0 to num_processes - 1.")

PREEMPTED_EXIT_STATUS = 128 + signal.SIGTERM


class NonFiniteError(FloatingPointError):
  """A training step produced a non-finite loss, metric or gradient."""


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint of the current step was saved."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  task_state: Any
  skipped_steps: jax.Array  # Non-finite steps that were not applied (config.on_nonfinite="skip").
  # The raw data of the loss's PRNG key. In the state rather than derived from config.seed inside the step, so
  # that the step's program is the same for every seed and a sweep over seeds compiles it once (the
  # persistent compilation cache).
  loss_key: jax.Array


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  peak = config.optimizer.learning_rate
  if config.schedule.name == "constant":
    return optax.constant_schedule(peak)
  if config.schedule.name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=config.schedule.warmup_steps,
        decay_steps=max(config.num_train_steps, config.schedule.warmup_steps + 1),
        end_value=peak * config.schedule.final_learning_rate_factor)
  raise ConfigError(f"config.schedule.name must be 'warmup_cosine' or 'constant', got {config.schedule.name!r}.")


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  schedule = make_schedule(config)
  options = config.optimizer
  optimizers = {
      "adamw": lambda: optax.adamw(schedule, weight_decay=options.weight_decay),
      "adam": lambda: optax.adam(schedule),
      "sgd": lambda: optax.sgd(schedule, momentum=options.momentum),
  }
  if options.name not in optimizers:
    raise ConfigError(f"config.optimizer.name must be one of {sorted(optimizers)}, got {options.name!r}.")
  clip = [optax.clip_by_global_norm(options.grad_clip_norm)] if options.grad_clip_norm > 0 else []
  return optax.chain(*clip, optimizers[options.name]())


def check_loop_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises `ConfigError` for loop settings that cannot work, before anything is compiled."""
  for field in ("num_train_steps", "batch_size", "log_every_steps", "eval_every_steps",
                "checkpoint_every_steps", "max_checkpoints_to_keep"):
    if config[field] <= 0:
      raise ConfigError(f"config.{field} must be positive, got {config[field]}.")
  if config.batch_size % num_devices:
    raise ConfigError(
        f"config.batch_size={config.batch_size} is not divisible by the {num_devices} devices "
        "the batch is sharded over.")
  if config.checkpoint_every_steps % config.log_every_steps:
    raise ConfigError(
        f"config.checkpoint_every_steps={config.checkpoint_every_steps} must be a multiple of "
        f"config.log_every_steps={config.log_every_steps}, so that a resumed run logs the same averages.")
  if config.on_nonfinite not in ("stop", "skip"):
    raise ConfigError(f"config.on_nonfinite must be 'stop' or 'skip', got {config.on_nonfinite!r}.")
  profile = config.profile
  if profile.num_steps < 0 or (profile.num_steps and not 1 <= profile.start_step <= config.num_train_steps):
    raise ConfigError(
        f"config.profile traces steps start_step={profile.start_step} to start_step + num_steps - 1 "
        f"(num_steps={profile.num_steps}); start_step must be in [1, num_train_steps={config.num_train_steps}] "
        "and num_steps >= 0 (0: no trace).")


@dataclasses.dataclass(frozen=True)
class Training:
  """The jitted pieces of a run, placed on a mesh with one `data` axis over `devices`.

  Attributes:
    task: the experiment.
    mesh: the devices, on one axis named `data`.
    init: `() -> TrainState`, replicated on every device.
    step: `(state, batch) -> (state, metrics, finite)`. `metrics` are the
      scalars to log; `finite` maps each metric and each gradient leaf to
      whether it is finite. A step with any non-finite entry leaves params,
      optimizer and task state unchanged and counts in `skipped_steps`.
    next_batch: `(seed, step) -> batch`, sharded over the devices along the
      batch axis: each process computes only the part its devices hold. None
      for a task that reads a data set (`Task.train_loader`); `BatchStream`
      serves both kinds.
  """

  task: tasks.Task
  mesh: jax.sharding.Mesh
  init: Callable[[], TrainState]
  step: Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array], dict[str, jax.Array]]]
  next_batch: Callable[[int, int], Any]


def build_training(config: ml_collections.ConfigDict, devices=None) -> Training:
  """Checks `config`, builds its task and traces (without compiling) the initial state.

  Raises:
    ConfigError: with a one-line message, for any setting that cannot work.
  """
  devices = jax.devices() if devices is None else devices
  check_loop_config(config, len(devices))
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  try:
    task = tasks.build(config)
  except ValueError as error:  # Raised by the losses' and models' own option checks.
    raise ConfigError(str(error)) from error
  optimizer = make_optimizer(config)

  def rngs():  # (init, loss) keys, derived inside the jitted functions so that nothing runs before them.
    return jax.random.split(jax.random.key(config.seed))

  # The task's own gradients (Task.gradients), or those of its loss.
  gradients = task.gradients or jax.value_and_grad(task.loss, has_aux=True)

  def init():
    init_key, loss_key = rngs()
    params, task_state = task.init(init_key)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=optimizer.init(params), task_state=task_state,
                      skipped_steps=zero, loss_key=jax.random.key_data(loss_key))

  try:
    jax.eval_shape(init)  # Shape errors of the model and config surface here, not in the compiler.
  except ValueError as error:
    raise ConfigError(str(error).splitlines()[0]) from error

  def step(state, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.loss_key), state.step)
    (loss, (metrics, task_state)), grads = gradients(state.params, state.task_state, batch, rng)
    squared_norms = jax.tree.map(lambda g: jnp.sum(jnp.square(g.astype(jnp.float32))), grads)
    metrics = {"loss": loss, "grad_norm": jnp.sqrt(sum(jax.tree.leaves(squared_norms))), **metrics}
    finite = {name: jnp.isfinite(value).all() for name, value in metrics.items()}
    for path, value in jax.tree_util.tree_flatten_with_path(squared_norms)[0]:
      finite["grad" + jax.tree_util.keystr(path)] = jnp.isfinite(value)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    applied = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state, task_state=task_state)
    withheld = state.replace(step=state.step + 1, skipped_steps=state.skipped_steps + 1)
    all_finite = jnp.stack(list(finite.values())).all()
    return jax.tree.map(lambda a, b: jnp.where(all_finite, a, b), applied, withheld), metrics, finite

  return Training(
      task=task,
      mesh=mesh,
      init=jax.jit(init, out_shardings=replicated),
      step=jax.jit(step, in_shardings=(replicated, batch_sharding), out_shardings=replicated,
                   donate_argnums=0),
      next_batch=None if task.train_batch is None else jax.jit(task.train_batch, out_shardings=batch_sharding))


class BatchStream:
  """The global training batches in step order: the task's procedural `train_batch`, or its Grain loader.

  A loader's iterator yields this process's share of each batch; the shares become one global array
  sharded over the mesh, and the iterator's position is saved with every checkpoint (`save_arg`) and
  restored with it (`restore_arg`). The batches of the last two steps are kept for the report of a
  non-finite step, which is checked one step late.
  """

  def __init__(self, training: Training, seed: int):
    self._training, self._seed = training, seed
    self._sharding = jax.sharding.NamedSharding(training.mesh, jax.sharding.PartitionSpec("data"))
    loader = training.task.train_loader
    self._iterator = None if loader is None else loader(seed, jax.process_index(), jax.process_count())
    self._recent = {}

  def next(self, step: int):
    """The batch of `step` (0-based). A loader's batches come in order from where it was restored."""
    if self._iterator is None:
      batch = self._training.next_batch(self._seed, step)
    else:
      batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._sharding, x), next(self._iterator))
    self._recent = {s: b for s, b in self._recent.items() if s == step - 1} | {step: batch}
    return batch

  def recent(self, step: int):
    return self._recent[step]

  def save_arg(self) -> grain.checkpoint.CheckpointSave | None:
    return None if self._iterator is None else grain.checkpoint.CheckpointSave(self._iterator)

  def restore_arg(self) -> grain.checkpoint.CheckpointRestore | None:
    return None if self._iterator is None else grain.checkpoint.CheckpointRestore(self._iterator)


class _PreemptionNotice:
  """Remembers a SIGTERM so the loop can checkpoint and stop between steps."""

  def __init__(self):
    self.received = False
    self._previous = None
    if jax.process_count() == 1:  # With several processes JAX's own notifier agrees on a step.
      with contextlib.suppress(ValueError):  # Not the main thread: leave signals alone.
        self._previous = signal.signal(signal.SIGTERM, self._receive)

  def _receive(self, signum, frame):
    del signum, frame
    self.received = True

  def reached(self, checkpoints: ocp.CheckpointManager, step: int) -> bool:
    return self.received or (jax.process_count() > 1 and checkpoints.reached_preemption(step))

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _statistics(tree) -> dict[str, dict[str, Any]]:
  def describe(x):
    x = np.asarray(x)
    values = x.astype(np.float64)
    finite = values[np.isfinite(values)]
    return {"shape": list(x.shape), "dtype": str(x.dtype), "num_nonfinite": int(values.size - finite.size),
            **({"min": float(finite.min()), "max": float(finite.max()), "mean": float(finite.mean()),
                "std": float(finite.std())} if finite.size else {})}
  return {jax.tree_util.keystr(path): describe(x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _report_nonfinite(batch, workdir: str, step: int, metrics, finite, last_checkpoint):
  """Writes the statistics of `batch`, the batch of `step`, and raises `NonFiniteError`."""
  bad = [name for name, ok in jax.device_get(finite).items() if not ok]
  grads = [name for name in bad if name.startswith("grad[")]
  terms = [name for name in bad if name not in grads]
  if grads:
    terms.append(f"gradients of {len(grads)} of {sum(n.startswith('grad[') for n in finite)} parameter arrays "
                 f"(first {grads[0]})")
  path = rundir.nonfinite_report_path(workdir, step)
  if jax.process_index() == 0:
    report = {"step": step, "nonfinite": bad, "metrics": jax.tree.map(float, jax.device_get(metrics)),
              "batch": _statistics(jax.device_get(batch))}
    with open(path, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1)
  raise NonFiniteError(
      f"Step {step} produced non-finite {', '.join(terms)}; the update was not applied. Batch statistics: "
      f"{path}. The last checkpoint (step {last_checkpoint}) is intact; set config.on_nonfinite='skip' "
      "to skip such steps instead.")


class _StepProfiler:
  """Traces the steps `config.profile.start_step` … `start_step + num_steps − 1` with `jax.profiler`.

  The trace goes to `workdir/plugins/profile/<timestamp>/`: the `.xplane.pb` that TensorBoard's profile
  plugin reads, and `perfetto_trace.json.gz` for the Perfetto UI. Each traced step is a `StepTraceAnnotation`, and the
  last one is waited for, so that the trace holds the device work of every traced step.
  """

  def __init__(self, profile: ml_collections.ConfigDict, workdir: str):
    self._first, self._last = profile.start_step, profile.start_step + profile.num_steps - 1
    self._workdir = workdir
    self._active = False

  def step(self, step: int) -> contextlib.AbstractContextManager:
    if step == self._first and self._last >= self._first:
      jax.profiler.start_trace(self._workdir, create_perfetto_trace=True)
      self._active = True
    return jax.profiler.StepTraceAnnotation("train", step_num=step) if self._active else contextlib.nullcontext()

  def after(self, step: int, outputs) -> None:
    if self._active and step == self._last:
      self.stop(outputs)

  def stop(self, outputs=None) -> None:
    if self._active:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self._active = False
      logging.info("Wrote the profile of steps %d to %d under %s/plugins/profile.", self._first, self._last,
                   self._workdir)


def _progress_bar(enabled: bool) -> rich.progress.Progress:
  return rich.progress.Progress(
      rich.progress.TextColumn("[bold]step {task.completed}/{task.total}"),
      rich.progress.BarColumn(),
      rich.progress.TextColumn("loss {task.fields[loss]:.4g}  {task.fields[rate]:.2f} steps/s"),
      rich.progress.TimeRemainingColumn(),
      disable=not enabled or jax.process_index() != 0,
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict[str, float]:
  """Trains `config.task` for `config.num_train_steps` on `devices` (all), resuming from `workdir`.

  Returns:
    The metrics of the final evaluation.

  Raises:
    ConfigError: before anything is compiled, for settings that cannot work.
    NonFiniteError: when a step is not finite and `config.on_nonfinite="stop"`.
    Preempted: after SIGTERM, once the current step is checkpointed.
  """
  training = build_training(config, devices)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  checkpoints = rundir.checkpoint_manager(workdir, config.max_checkpoints_to_keep)
  if jax.process_index() == 0:  # What the run was, for the tools that read it later (scripts/).
    rundir.write_config(workdir, config)
  stream = BatchStream(training, config.seed)
  state = training.init()
  restored = rundir.restore_newest(checkpoints, workdir, state, stream.restore_arg())
  if restored is not None:  # The newest readable checkpoint; `stream` was moved to its step.
    state = restored
  first_step, last_step = int(state.step), config.num_train_steps
  last_checkpoint = first_step
  writer = rundir.MetricWriter(workdir, resume_step=first_step, tensorboard=config.tensorboard)
  preemption = _PreemptionNotice()
  profiler = _StepProfiler(config.profile, workdir)
  eval_metrics = {}

  def save(step):
    nonlocal last_checkpoint
    rundir.save_checkpoint(checkpoints, step, state, stream.save_arg())
    last_checkpoint = step

  def check(step, metrics, finite):
    if config.on_nonfinite == "stop" and not all(jax.device_get(finite).values()):
      checkpoints.wait_until_finished()
      _report_nonfinite(stream.recent(step - 1), workdir, step, metrics, finite, last_checkpoint)

  def log(step, pending):
    values = jax.device_get([(m, f) for _, m, f in pending])
    kept = [m for m, f in values if all(f.values())] or [m for m, _ in values]
    summary = {name: float(np.mean([m[name] for m in kept])) for name in kept[0]}
    summary["skipped_steps"] = int(state.skipped_steps)
    summary["steps_per_second"] = len(pending) / (time.perf_counter() - interval_start)
    writer.write(step, "train", summary)
    progress.update(bar, completed=step, loss=summary["loss"], rate=summary["steps_per_second"])
    logging.info("step %d: %s", step, summary)

  pending, interval_start = [], time.perf_counter()
  try:
    with _progress_bar(config.progress_bar) as progress:
      bar = progress.add_task("train", total=last_step, completed=first_step, loss=float("nan"), rate=0.0)
      for step in range(first_step + 1, last_step + 1):
        with profiler.step(step):
          state, metrics, finite = training.step(state, stream.next(step - 1))
        profiler.after(step, metrics)
        if pending:  # Checked one step late, so that the host keeps dispatching ahead of the devices.
          check(*pending[-1])
        pending.append((step, metrics, finite))
        preempted = preemption.reached(checkpoints, step)
        if step % config.log_every_steps == 0 or step == last_step or preempted:
          check(*pending[-1])
          log(step, pending)
          pending, interval_start = [], time.perf_counter()
        if step % config.eval_every_steps == 0 or step == last_step:
          eval_metrics = training.task.evaluate(*jax.device_get((state.params, state.task_state)))
          writer.write(step, "eval", eval_metrics)
          logging.info("eval at step %d: %s", step, eval_metrics)
          interval_start = time.perf_counter()  # Keep evaluation out of steps/s.
        if step % config.checkpoint_every_steps == 0 or step == last_step or preempted:
          save(step)
        if preempted:
          checkpoints.wait_until_finished()
          raise Preempted(f"SIGTERM received: saved the checkpoint at step {step}; run the same command to resume.")
    checkpoints.wait_until_finished()
  finally:
    profiler.stop()
    preemption.restore()
    checkpoints.close()
    writer.close()
  host_state = jax.device_get((state.params, state.task_state))
  if not eval_metrics:  # Restarted after the last step: nothing ran, evaluate the final state again.
    eval_metrics = training.task.evaluate(*host_state)
    if not writer.has("eval", last_step):
      writer.write(last_step, "eval", eval_metrics)
  if config.write_figures and jax.process_index() == 0:
    for path in training.task.write_figures(*host_state, workdir):
      logging.info("Wrote %s", path)
  return eval_metrics


def initialise_distributed() -> None:
  """Joins a multi-process run when asked to by a flag or JAX_COORDINATOR_ADDRESS."""
  if not (_DISTRIBUTED.value or _COORDINATOR_ADDRESS.value or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # Only used when the devices are CPUs.
  jax.distributed.initialize(coordinator_address=_COORDINATOR_ADDRESS.value, num_processes=_NUM_PROCESSES.value,
                             process_id=_PROCESS_ID.value)
  logging.info("Process %d of %d; %d local and %d global devices.", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or `--config.*` override reported in one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    raise SystemExit(f"Flag error: {error}") from None
  except (AttributeError, KeyError) as error:  # An override naming no config field; ml_collections suggests one.
    name, *suggestion = str(error).replace("\\'", "").strip("'\"").split("\\n")
    raise SystemExit(f"Config error: no field {name!r}. {' '.join(suggestion)}".rstrip()) from None
  except (TypeError, ValueError) as error:
    raise SystemExit(f"Config error: {error}") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Orbax logs every step of every save at INFO; keep the log about training.
  logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
  initialise_distributed()
  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except ConfigError as error:
    raise SystemExit(f"Config error: {error}") from None
  except Preempted as notice:
    logging.warning("%s", notice)
    raise SystemExit(PREEMPTED_EXIT_STATUS) from None


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=parse_flags)
