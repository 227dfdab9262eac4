"""Input checks and reductions shared by every loss family.

Every check runs at trace time, on shapes, dtypes and static options, so it
costs nothing inside a jitted step. A wrong rank or mismatched shapes are
chex `AssertionError`s; a dimension of impossible size (an odd 2D, no
components, no channels) or shapes that do not broadcast are `ValueError`s;
a wrong dtype (integers where floats are expected, and the reverse) is a
`TypeError`; a bad option is a `ValueError` or, for a non-integer count, a
`TypeError`. Each message names the argument, the shape it must have and the
shape it got, e.g. "`task_losses` must have shape (N,) = (2,) like `weights`
(2,), got (3,)". Values (label ids, say) can only be checked outside
`jax.jit`; each function documents what it does with them inside.

Empty inputs are not errors: a "mean" over no elements (an empty batch, no
pixels, everything masked) is 0 with a zero gradient, never 0/0 = NaN; "sum"
is 0 and "none" returns an empty array.
"""

from collections.abc import Mapping, Sequence
import operator
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

REDUCTIONS = ("mean", "sum", "none")


def shape_message(name: str, shape: Sequence[int], expected: str, like: tuple[str, Any] | None = None) -> str:
  """The message "`name` must have shape EXPECTED [like `other` OTHER_SHAPE], got SHAPE"."""
  text = f"`{name}` must have shape {expected}"
  if like is not None:
    text += f" like `{like[0]}` {tuple(like[1].shape)}"
  return f"{text}, got {tuple(shape)}"


def chex():
  """The chex module, imported on first use (it imports absl, which `import losses` must not)."""
  import chex as chex_module  # pylint: disable=g-import-not-at-top
  return chex_module


def is_traced(x: Any) -> bool:
  """True under `jax.jit`/`vmap`/`grad` tracing, where values cannot be inspected."""
  return isinstance(x, jax.core.Tracer)


def host_values(x: Any) -> np.ndarray | None:
  """`x` as a NumPy array if the host already holds its values, else None.

  NumPy arrays and Python data are held by the host; so is a `jax.Array` that
  is not a tracer and lives on CPU devices. A tracer has no values, and an
  array on an accelerator would need a device-to-host copy.
  """
  if is_traced(x):
    return None
  if isinstance(x, jax.Array) and (
      not x.is_fully_addressable or any(device.platform != "cpu" for device in x.devices())):
    return None
  return np.asarray(x)


def as_float(x: ArrayLike, name: str) -> jax.Array:
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


def check_rank(x: ArrayLike, name: str, rank: int, expected: str, like=None) -> ArrayLike:
  chex().assert_rank(x, rank, custom_message=shape_message(name, x.shape, expected, like))
  return x


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
  """A static (Python or NumPy) integer option such as a number of segments."""
  if isinstance(value, (bool, np.bool_)) or is_traced(value):
    raise TypeError(f"`{name}` must be a static Python int, got {value!r}.")
  try:
    value = operator.index(value)
  except TypeError:
    raise TypeError(f"`{name}` must be a static Python int, got {value!r}.") from None
  if minimum is not None and value < minimum:
    raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
  return value


def check_number(value: Any, name: str, *, minimum: float | None = None, strict: bool = False,
                 why: str = "", static: bool = False) -> Any:
  """A real scalar option, range-checked where the host holds its value (see `host_values`).

  Traced values (and scalars on an accelerator) pass unchecked unless `static`, when the value
  selects the formula and must be a concrete number at trace time.
  """
  if is_traced(value) and static:
    raise TypeError(f"`{name}` must be a static Python number (it is used at trace time), "
                    "got a traced value.")
  values = host_values(value) if not static else np.asarray(value)
  if values is None:
    chex().assert_rank(value, 0, custom_message=f"`{name}` must be a scalar, got shape {jnp.shape(value)}")
    return value
  try:
    number = float(values.item()) if values.ndim == 0 else None
  except (TypeError, ValueError):
    number = None
  if number is None:
    raise TypeError(f"`{name}` must be a real scalar, got {value!r}.")
  if minimum is not None and not (number > minimum if strict else number >= minimum):
    raise ValueError(f"`{name}` must be {'>' if strict else '>='} {minimum}{why}, got {value}.")
  return value


def check_reduction(reduction: str) -> None:
  if reduction not in REDUCTIONS:
    raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}.")


def reduce_masked(values: ArrayLike, mask: ArrayLike | None, reduction: str) -> jax.Array:
  """Reduces per-element `values` over the elements where `mask` is set.

  `mask` (same shape as `values`, boolean or non-negative weights) zeroes the
  excluded elements with `jnp.where`, so that neither their value nor their
  gradient leaks into the result. "mean" divides by the number (total weight)
  of included elements and is 0, with a zero gradient, when nothing is
  included (an empty batch or an all-zero mask).
  """
  check_reduction(reduction)
  if mask is not None:
    mask = jnp.asarray(mask)
    expected = f"{values.shape}, that of the per-element loss"
    chex().assert_equal_shape([values, mask], custom_message=shape_message("mask", mask.shape, expected))
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


def check_mixture(pred: ArrayLike, name: str) -> jax.Array:
  """A float `(B, I, 2D)` mixture: I ≥ 1 components of D ≥ 1 means then D standard deviations."""
  pred = as_float(pred, name)
  message = shape_message(name, pred.shape, "(B, I, 2D): D means then D standard deviations per component, "
                          "I >= 1, D >= 1")
  chex().assert_rank(pred, 3, custom_message=message)
  if pred.shape[1] == 0 or pred.shape[2] == 0 or pred.shape[2] % 2:
    raise ValueError(message)
  return pred


def broadcast_floats(arrays: Mapping[str, ArrayLike], expected: str) -> tuple[ArrayLike, ...]:
  """Float arrays (named by the keys) that broadcast to one shape of rank ≥ 1, in a common dtype."""
  arrays = {name: as_float(x, name) for name, x in arrays.items()}
  shapes = ", ".join(f"`{name}` {x.shape}" for name, x in arrays.items())
  try:
    shape = jnp.broadcast_shapes(*(x.shape for x in arrays.values()))
  except ValueError:
    shape = None
  if shape is None or len(shape) == 0:
    raise ValueError(f"{shapes} must broadcast to one shape {expected} of rank >= 1.")
  dtype = jnp.result_type(*arrays.values())
  return tuple(x.astype(dtype) for x in arrays.values())


def check_labels(labels: ArrayLike, name: str, max_id: int | None = None, *, limit: str = "") -> jax.Array:
  """An integer `(B, H, W)` label map with ids in [0, `max_id`] (no upper bound if None).

  Where the host holds the values (see the module docstring) an id out of
  range is a `ValueError` (`limit` names the option that sets `max_id`);
  elsewhere the ids are returned unchecked and the caller treats those out
  of range as background.
  """
  values = host_values(labels)
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"`{name}` must be an integer label map (B, H, W), got dtype {labels.dtype}.")
  chex().assert_rank(labels, 3, custom_message=shape_message(name, labels.shape, "(B, H, W)"))
  if values is not None and values.size:
    low, high = int(values.min()), int(values.max())
    if low < 0 or (max_id is not None and high > max_id):
      bounds = f"in [0, {max_id}]" if max_id is not None else ">= 0"
      hint = f"; raise `{limit}`" if limit and max_id is not None and high > max_id else ""
      raise ValueError(f"`{name}` must hold ids {bounds}, found [{low}, {high}]{hint}.")
  return labels


def check_embeddings(embeddings: ArrayLike, name: str, like: ArrayLike, like_name: str) -> jax.Array:
  """Float `(B, H, W, C)` embeddings, C ≥ 1, sharing (B, H, W) with the `(B, H, W)` map `like`."""
  embeddings = as_float(embeddings, name)
  message = shape_message(name, embeddings.shape, "(B, H, W, C) with C >= 1", (like_name, like)) + (
      " (they must share B, H, W)")
  chex().assert_rank(embeddings, 4, custom_message=message)
  chex().assert_equal_shape_prefix([like, embeddings], 3, custom_message=message)
  if embeddings.shape[-1] == 0:
    raise ValueError(message)
  return embeddings


def check_iou_thresholds(thresholds: Any) -> Any:
  """Non-empty IoU thresholds in [0.5, 1), where one object can match at most one other (checked if concrete)."""
  values = host_values(thresholds)
  if values is None:
    chex().assert_rank(thresholds, 1, custom_message=shape_message("thresholds", jnp.shape(thresholds), "(T,)"))
    return thresholds
  values = values.astype(np.float64)
  if values.ndim != 1 or values.size == 0:
    raise ValueError(shape_message("thresholds", values.shape, "(T,) with T >= 1"))
  if not ((values >= 0.5) & (values < 1.0)).all():
    raise ValueError(f"`thresholds` must lie in [0.5, 1) (matching is one-to-one only there), got {values.tolist()}.")
  return thresholds


def safe_norm(x: jax.Array) -> jax.Array:
  """‖x‖ over the last axis with gradient 0 (not NaN) at x = 0."""
  squared = jnp.sum(x * x, axis=-1)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def check_instance_inputs(embeddings, labels, max_instances, background):
  """The checked `(B, H, W, C)` embeddings, `(B, H, W)` labels and static options of an embedding loss."""
  max_instances = check_int(max_instances, "max_instances", minimum=0)
  background = check_int(background, "background")
  labels = check_labels(labels, "labels", max_instances, limit="max_instances")
  embeddings = check_embeddings(embeddings, "embeddings", labels, "labels")
  return embeddings, labels, max_instances, background


def image_instances(ids: jax.Array, psi: jax.Array, background: int, max_instances: int):
  """One image's pixels as `(H·W,)` segment ids and `(H·W, C)` embeddings, which pixels are in an instance,
  and the per-segment pixel counts `(K+1,)` and mean embeddings `(K+1, C)` of those pixels.

  Ids out of [0, `max_instances`] (unchecked inside a trace) are read as the background.
  """
  ids, psi = ids.reshape(-1), psi.reshape(-1, psi.shape[-1])
  valid = (ids != background) & (ids >= 0) & (ids <= max_instances)
  ids = jnp.where(valid, ids, background)
  counts = jax.ops.segment_sum(valid.astype(psi.dtype), ids, max_instances + 1)
  sums = jax.ops.segment_sum(jnp.where(valid[:, None], psi, 0.0), ids, max_instances + 1)
  return ids, psi, valid, counts, sums / jnp.maximum(counts, 1.0)[:, None]


def check_sigmas(sigmas: ArrayLike, embeddings: jax.Array) -> jax.Array:
  """Float bandwidths `(B, H, W)` (one per pixel) or `(B, H, W, C)` (one per embedding dimension) as
  `(B, H, W, 1)` or `(B, H, W, C)`, sharing (B, H, W) and C with the `(B, H, W, C)` `embeddings`."""
  sigmas = as_float(sigmas, "sigmas")
  message = shape_message("sigmas", sigmas.shape, "(B, H, W) or (B, H, W, C)", ("embeddings", embeddings))
  chex().assert_rank(sigmas, {3, 4}, custom_message=message)
  chex().assert_equal_shape_prefix([sigmas, embeddings], 3, custom_message=message)
  if sigmas.ndim == 3:
    return sigmas[..., None]
  if sigmas.shape[-1] != 1:
    chex().assert_equal_shape([sigmas, embeddings], custom_message=message)
  return sigmas


def gaussian(psi: jax.Array, centre: jax.Array, sigma: jax.Array) -> jax.Array:
  """φ = exp(−Σ_d (ψ_d − c_d)² / (2σ_d²)) over the last axis; σ broadcasts (one or one per dimension).

  σ² is floored at √tiny (the square root of the smallest normal number, ~1e-19 in float32), so σ = 0
  gives φ = 1 at the centre and 0 elsewhere, not 0/0, and the gradients stay finite (1/σ⁴ does not
  overflow); the sign of σ does not matter.
  """
  variance = jnp.maximum(sigma * sigma, np.sqrt(jnp.finfo(psi.dtype).tiny))
  return jnp.exp(-jnp.sum((psi - centre) ** 2 / (2.0 * variance), axis=-1))


KERNELS = ("laplacian", "gaussian")


def check_kernel(kernel: str) -> str:
  if kernel not in KERNELS:
    raise ValueError(f"`kernel` must be one of {KERNELS}, got {kernel!r}.")
  return kernel


def kernel_exponent(psi: jax.Array, centre: jax.Array, sigma: ArrayLike, kernel: str) -> jax.Array:
  """a ≥ 0 with the steered kernel K = exp(−a) between `psi` (…, C) and `centre`: a = ‖ψ − c‖/σ ("laplacian")
  or ‖ψ − c‖²/(2σ²) ("gaussian"), over the last axis.

  σ² is floored at √tiny as in `gaussian` (σ = 0 stays finite; its sign does not matter); the Laplacian's
  norm has a zero gradient at ψ = c. K > 0.5 exactly where a < ln 2.
  """
  variance = jnp.maximum(jnp.square(sigma), np.sqrt(jnp.finfo(psi.dtype).tiny)).astype(psi.dtype)
  difference = psi - centre
  if kernel == "gaussian":
    return jnp.sum(difference * difference, axis=-1) / (2.0 * variance)
  return safe_norm(difference) / jnp.sqrt(variance)


def shuffled_instances(draws: jax.Array, present: jax.Array) -> jax.Array:
  """The ids `(K+1,)` of one image in the increasing order of their uniform `draws` `(K+1,)` in [0, 1), the
  `present` ones first: a uniformly random order of the present instances."""
  return jnp.argsort(jnp.where(present, draws, 2.0))


def check_key(key: Any) -> jax.Array:
  """A PRNG key: a typed key array `jax.random.key(…)` of shape () or a raw uint32 `(2,)` `PRNGKey`."""
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(shape_message("key", key.shape, "() (one typed key)"))
  elif key.dtype != jnp.uint32 or key.shape != (2,):
    raise TypeError(f"`key` must be a PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), got dtype "
                    f"{key.dtype} and shape {key.shape}.")
  return key
