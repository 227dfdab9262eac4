"""The contract between an experiment and the generic training loop."""

from collections.abc import Callable
import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
Metrics = dict[str, jax.Array]


class ConfigError(ValueError):
  """A config setting that cannot work, reported before anything is compiled."""


@dataclasses.dataclass(frozen=True)
class Representation:
  """The model split at the representation every task reads, for gradients taken there (`TaskGradients`).

  Attributes:
    encode: `(params, batch) -> representation`, a pytree of arrays computed by the shared parameters only.
    task_losses: `(params, representation, task_state, batch, rng) -> (losses (N,), (metrics, task_state))`,
      the unweighted task losses given the representation, reading only the tasks' own parameters.
  """

  encode: Callable[[PyTree, dict[str, jax.Array]], PyTree]
  task_losses: Callable[..., tuple[jax.Array, tuple[Metrics, PyTree]]]


@dataclasses.dataclass(frozen=True)
class TaskGradients:
  """What the loop needs to train a multi-task model with a gradient-level method (`Task.task_gradients`).

  The loop differentiates each task's loss separately inside the jitted step, one VJP per task: each
  backpropagates only through what its loss reads, so a head's backward pass runs once, for its own
  task. The parameters `shared` selects get the update `aggregator` makes of their N per-task gradients;
  every other parameter (a task's own head) gets the gradient of the summed losses, which is its own
  task's gradient, as TorchJD's `mtl_backward` does.

  With `representation` set, the aggregator combines the per-task gradients with respect to the shared
  representation instead, and one backward pass through the encoder takes the combination to the shared
  parameters (LibMTL's `rep_grad`): the encoder's backward runs once instead of N times, but the
  aggregator sees the gradients of the batch's features, not of the parameters, so it is an
  approximation of the method (exact for the mean).

  Attributes:
    task_names: the N tasks; the loop logs `weight_<name>`, the weights of the combination of the task
      gradients closest to each update.
    task_losses: `(params, task_state, batch, rng) -> (losses (N,), (metrics, task_state))`, unweighted.
    shared: `params -> pytree of bools` (the structure of `params`), true for the parameters every task
      reads.
    aggregator: an `optax.GradientTransformationExtraArgs` (`losses.gradient_aggregator`) over the list
      of shared parameter arrays (or of the representation's arrays):
      `update(grads with a leading task axis, state, params, task_losses=...)`.
    representation: None, or the model split at its shared representation, to aggregate there.
  """

  task_names: tuple[str, ...]
  task_losses: Callable[[PyTree, PyTree, dict[str, jax.Array], jax.Array], tuple[jax.Array, tuple[Metrics, PyTree]]]
  shared: Callable[[PyTree], PyTree]
  aggregator: Any
  representation: Representation | None = None


@dataclasses.dataclass(frozen=True)
class Task:
  """Everything `train.py` needs to know about one experiment.

  Attributes:
    init: `rng -> (params, task_state)`. `params` is the differentiable pytree
      the optimizer updates (model weights, and any trainable loss weights);
      `task_state` is a non-differentiable pytree the loss may update (running
      loss averages, say), `{}` when unused.
    train_batch: `(seed, step) -> batch`, a pure jittable function producing
      the global batch for a step: a dict of arrays with a leading batch axis
      of `config.batch_size`. The loop shards it over the devices, and
      resuming at a step replays exactly the batches of an uninterrupted run.
      None for a task that reads a data set through `train_loader`.
    loss: `(params, task_state, batch, rng) -> (loss, (metrics, task_state))`,
      pure and jittable; `loss` is the scalar that is differentiated and
      `metrics` a flat dict of scalars to log.
    evaluate: `(params, task_state) -> dict[str, float]` on the task's fixed
      held-out set.
    write_figures: `(params, task_state, workdir) -> list of written paths`.
    train_loader: for a task that reads a data set instead of `train_batch`:
      `(seed, process_index, process_count) -> grain.DatasetIterator` over this
      process's share of each step's batch (`config.batch_size /
      process_count` examples, NumPy arrays), one element per step in order.
      The loop puts its state in every checkpoint and restores it on resume.
    task_gradients: for a multi-task model trained by a gradient-level method: the per-task losses,
      the shared parameters and the aggregator (`TaskGradients`). The loop then differentiates those
      instead of `loss`, which stays the task's scalar objective for tools that need one.
  """

  init: Callable[[jax.Array], tuple[PyTree, PyTree]]
  train_batch: Callable[[jax.Array, jax.Array], dict[str, jax.Array]] | None
  loss: Callable[[PyTree, PyTree, dict[str, jax.Array], jax.Array], tuple[jax.Array, tuple[Metrics, PyTree]]]
  evaluate: Callable[[PyTree, PyTree], dict[str, float]]
  write_figures: Callable[[PyTree, PyTree, str], list[str]]
  train_loader: Callable[[int, int, int], Any] | None = None
  task_gradients: TaskGradients | None = None

  def __post_init__(self):
    if (self.train_batch is None) == (self.train_loader is None):
      raise ValueError("A task supplies exactly one of train_batch (procedural data) and train_loader (a data set).")


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config) -> Any:
  """The models' activation dtype named by `config.compute_dtype`; parameters and losses stay float32."""
  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ConfigError(f"config.compute_dtype must be one of {tuple(COMPUTE_DTYPES)}, got {config.compute_dtype!r}.")
  return COMPUTE_DTYPES[config.compute_dtype]


def step_key(seed: int, step: jax.Array) -> jax.Array:
  """The PRNG key of the training batch at `step`: resuming at a step replays the same data."""
  return jax.random.fold_in(jax.random.key(seed), step)


def sampled_batches(sample: Callable[[jax.Array, int], PyTree], batch_size: int):
  """`train_batch(seed, step)` drawing `sample(key, batch_size)` from the step's key (see `step_key`)."""
  return lambda seed, step: sample(step_key(seed, step), batch_size)


def init_on_images(model, image_shape: tuple[int, ...]) -> Callable[[jax.Array], PyTree]:
  """`rng -> params` of a Flax `model` that reads `(B, *image_shape)` images, initialised on one zero image."""
  return lambda rng: model.init(rng, jnp.zeros((1, *image_shape)))["params"]


def write_figure(workdir: str, filename: str, draw: Callable[[str], None]) -> list[str]:
  """Calls `draw(path)` for `path` = `workdir/filename` and returns `[path]`, as `Task.write_figures` does."""
  path = os.path.join(workdir, filename)
  draw(path)
  return [path]


def map_in_chunks(fn: Callable[..., PyTree], params: PyTree, images: jax.Array, chunk_size: int) -> PyTree:
  """`fn(params, images)` over chunks of `chunk_size` images, the outputs concatenated on axis 0."""
  chunks = [fn(params, images[i:i + chunk_size]) for i in range(0, images.shape[0], chunk_size)]
  return jax.tree.map(lambda *parts: jnp.concatenate(parts), *chunks)


def pyplot():
  """`matplotlib.pyplot` on the file-only Agg backend, imported only when a figure is drawn."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt
