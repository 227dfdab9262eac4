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
    gradients: for a task that computes its own gradients (a multi-task model trained by a
      gradient-level method, `tasks.multitask.GradientAggregation`): `(params, task_state, batch, rng)
      -> ((loss, (metrics, task_state)), grads)`, the contract of `jax.value_and_grad(loss,
      has_aux=True)`, which the loop uses when this is None. `loss` then stays the task's scalar
      objective for tools that need one; any state of the method is part of `task_state`.
  """

  init: Callable[[jax.Array], tuple[PyTree, PyTree]]
  train_batch: Callable[[jax.Array, jax.Array], dict[str, jax.Array]] | None
  loss: Callable[[PyTree, PyTree, dict[str, jax.Array], jax.Array], tuple[jax.Array, tuple[Metrics, PyTree]]]
  evaluate: Callable[[PyTree, PyTree], dict[str, float]]
  write_figures: Callable[[PyTree, PyTree, str], list[str]]
  train_loader: Callable[[int, int, int], Any] | None = None
  gradients: Callable[[PyTree, PyTree, dict[str, jax.Array], jax.Array],
                      tuple[tuple[jax.Array, tuple[Metrics, PyTree]], PyTree]] | None = None

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
