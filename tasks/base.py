"""The contract between an experiment and the generic training loop."""

import dataclasses
from typing import Any, Callable

import jax

PyTree = Any
Metrics = dict[str, jax.Array]


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
    loss: `(params, task_state, batch, rng) -> (loss, (metrics, task_state))`,
      pure and jittable; `loss` is the scalar that is differentiated and
      `metrics` a flat dict of scalars to log.
    evaluate: `(params, task_state) -> dict[str, float]` on the task's fixed
      held-out set.
    write_figures: `(params, task_state, workdir) -> list of written paths`.
  """

  init: Callable[[jax.Array], tuple[PyTree, PyTree]]
  train_batch: Callable[[jax.Array, jax.Array], dict[str, jax.Array]]
  loss: Callable[[PyTree, PyTree, dict[str, jax.Array], jax.Array], tuple[jax.Array, tuple[Metrics, PyTree]]]
  evaluate: Callable[[PyTree, PyTree], dict[str, float]]
  write_figures: Callable[[PyTree, PyTree, str], list[str]]
