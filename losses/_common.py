"""Input checks and reductions shared by every loss family."""

from typing import Optional

import chex
import jax.numpy as jnp

REDUCTIONS = ("mean", "sum", "none")


def as_float(x: chex.Array, name: str) -> chex.Array:
  """Returns `x` as a float array of at least float32 precision.

  bfloat16/float16 inputs are upcast so that the arithmetic never runs in a
  16-bit type; float64 stays float64. Integer or boolean inputs are rejected
  with an error that names the argument, because silently casting labels or
  indices to floats usually hides a bug in the caller.
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"`{name}` must be a floating-point array, got dtype {x.dtype}.")
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def check_reduction(reduction: str) -> None:
  if reduction not in REDUCTIONS:
    raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}.")


def reduce_masked(values: chex.Array, mask: Optional[chex.Array], reduction: str) -> chex.Array:
  """Reduces per-element `values` over the elements where `mask` is set.

  `mask` (same shape as `values`, boolean or non-negative weights) zeroes the
  excluded elements with `jnp.where`, so that neither their value nor their
  gradient leaks into the result. "mean" divides by the number (total weight)
  of included elements and is 0 when nothing is included.
  """
  check_reduction(reduction)
  if mask is not None:
    chex.assert_equal_shape(
        [values, mask], custom_message="`mask` must have the shape of the per-element loss")
    weights = mask.astype(values.dtype)
    values = jnp.where(weights > 0, values * weights, 0.0)
  if reduction == "none":
    return values
  total = jnp.sum(values)
  if reduction == "sum":
    return total
  if mask is None:
    return total / max(values.size, 1)
  # With nothing included `total` is 0, and 0 / tiny = 0.
  return total / jnp.maximum(jnp.sum(weights), jnp.finfo(values.dtype).tiny)
