"""The layout of a run's directory (`train.py --workdir=DIR`), the one place that reads and writes it.

    config.json                      the run's config as JSON, written by `train.py` at each start
    metrics.jsonl                    one record a line: {"step": int, "split": "train" or "eval", metric: value, ...}
    events.out.tfevents.*            the same metrics for TensorBoard (`config.tensorboard`)
    checkpoints/<step>/              Orbax checkpoints: `state` (the TrainState), `data` (a Grain iterator's position)
    broken_checkpoints/<step>-<ns>/  checkpoints that could not be read, moved aside when resuming
    nonfinite_step_<step>.json       statistics of the batch of a non-finite step (`config.on_nonfinite="stop"`)
    plugins/profile/<time>/          `jax.profiler` traces (`config.profile`)
    *.png                            the task's figures (`config.write_figures`)

Tools that read a finished run (`scripts/`) need only this module, not `train.py`.
"""

import json
import os
import shutil
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
BROKEN_CHECKPOINTS = "broken_checkpoints"
STATE = "state"  # The checkpoint item of the TrainState.
DATA = "data"  # The checkpoint item of a Grain iterator's position, for a task that reads a data set.


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes `config` to `<workdir>/config.json`, for the tools that read the run later."""
  with open(os.path.join(workdir, CONFIG), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=1))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config of the run in `workdir`, as `write_config` wrote it."""
  with open(os.path.join(workdir, CONFIG), encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def has_metrics(workdir: str) -> bool:
  """Whether the run in `workdir` has written any metrics."""
  return os.path.exists(os.path.join(workdir, METRICS))


def read_metrics(workdir: str, split: str) -> list[dict[str, float]]:
  """The records of `split` ("train" or "eval") in `<workdir>/metrics.jsonl`, in order."""
  with open(os.path.join(workdir, METRICS), encoding="utf-8") as f:
    return [record for record in map(json.loads, f) if record["split"] == split]


class MetricWriter:
  """Appends metrics to `metrics.jsonl` and TensorBoard event files (process 0 only).

  Resuming at step `resume_step` first drops the records of later steps, which
  the resumed run writes again, so the file never holds a step twice.
  """

  def __init__(self, workdir: str, resume_step: int, *, tensorboard: bool):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    path = os.path.join(workdir, METRICS)
    records = []
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        # A line cut short by a kill is dropped with the records after the resume step.
        records = [line for line in f if line.endswith("\n") and json.loads(line)["step"] <= resume_step]
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(records)
      os.replace(path + ".tmp", path)
    self._written = {(r["split"], r["step"]) for r in map(json.loads, records)}
    self._jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run, closed by close())
    self._tensorboard = None
    if tensorboard:
      # Imported only when used: tensorboardX imports PyTorch where it is installed (seconds).
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      # TensorBoard hides the events of steps after `purge_step` left by the killed run.
      self._tensorboard = SummaryWriter(logdir=workdir, purge_step=resume_step + 1 if resume_step else None)

  def has(self, split: str, step: int) -> bool:
    return self._active and (split, step) in self._written

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    if not self._active:
      return
    self._written.add((split, step))
    self._jsonl.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
    self._jsonl.flush()
    if self._tensorboard is not None:
      for name, value in metrics.items():
        self._tensorboard.add_scalar(f"{split}/{name}", value, step)
      self._tensorboard.flush()

  def close(self) -> None:
    if self._active:
      self._jsonl.close()
      if self._tensorboard is not None:
        self._tensorboard.close()


def checkpoint_manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
  """The Orbax manager of `<workdir>/checkpoints`, keeping the newest `max_to_keep`."""
  return ocp.CheckpointManager(
      os.path.join(workdir, CHECKPOINTS),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, cleanup_tmp_directories=True))


def _items(state_arg, data_arg) -> ocp.args.Composite:
  return ocp.args.Composite(**{STATE: state_arg}, **({} if data_arg is None else {DATA: data_arg}))


def save_checkpoint(checkpoints: ocp.CheckpointManager, step: int, state: Any, data: Any = None) -> None:
  """Saves `state` (and `data`, a Grain `CheckpointSave`) as the checkpoint of `step`."""
  checkpoints.save(step, args=_items(ocp.args.StandardSave(state), data), force=True)


def restore_newest(checkpoints: ocp.CheckpointManager, workdir: str, state: Any, data: Any = None) -> Any:
  """The state of the newest readable checkpoint, restored in the structure of `state`; None without one.

  `data`, a Grain `CheckpointRestore`, moves its iterator to the same step. Unreadable checkpoints are
  moved to `<workdir>/broken_checkpoints/` (by process 0) and the one before each is tried.
  """
  abstract_state = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  for step in sorted(checkpoints.all_steps(), reverse=True):
    try:
      restored = checkpoints.restore(step, args=_items(ocp.args.StandardRestore(abstract_state), data))[STATE]
    except Exception as error:  # noqa: BLE001 (any failure to read means: use an older one)
      logging.warning("Checkpoint at step %d cannot be read (%s: %s); trying the one before it.",
                      step, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
      if jax.process_index() == 0:
        broken = os.path.join(workdir, BROKEN_CHECKPOINTS)
        os.makedirs(broken, exist_ok=True)
        shutil.move(os.path.join(workdir, CHECKPOINTS, str(step)), os.path.join(broken, f"{step}-{time.time_ns()}"))
      checkpoints.reload()
      continue
    logging.info("Resumed from the checkpoint at step %d.", step)
    return restored
  return None


def latest_params(workdir: str) -> tuple[int, Any]:
  """`(step, params)` of the newest checkpoint in `workdir`, on this process's first device.

  For tools that read a finished run; whichever devices wrote it, nothing but its files is needed.
  """
  manager = ocp.CheckpointManager(os.path.join(workdir, CHECKPOINTS))
  step = manager.latest_step()
  manager.close()
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {workdir}/{CHECKPOINTS}.")
  path = os.path.join(workdir, CHECKPOINTS, str(step), STATE)
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata)
  return step, checkpointer.restore(path, target)["params"]


def nonfinite_report_path(workdir: str, step: int) -> str:
  """Where `train.py` writes the statistics of the batch of a non-finite `step`."""
  return os.path.join(workdir, f"nonfinite_step_{step}.json")
