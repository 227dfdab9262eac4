"""Angular losses for per-pixel orientation maps encoded as (cos, sin) pairs.

A network that predicts an angle field outputs two channels per pixel, read as
the vector (cos β, sin β); the target is (cos α, sin α). The error is the
unsigned angle between the two vectors,

    θ = |wrap(β − α)| ∈ [0, π],

and the loss is θ^(1+δ) with δ = 0.2, whose derivative with respect to the
predicted angle is (1+δ)·θ^δ·sign(β − α): it keeps pulling large errors like an
L1 loss and fades out smoothly near the optimum. The loss comes from
DeepOrientation (Cywińska et al., "DeepOrientation: convolutional neural
network for fringe pattern orientation map estimation", Optics Express 30(23),
2022).

Numerical choices, each fixing a defect of the versions in circulation:

* θ = atan2(|a × b|, a · b) rather than arccos(a · b). Arccos needs unit
  vectors and clipping (a common clip to [1e-6, 1 − 1e-6] maps every error
  above 90° to 90° with zero gradient), has an infinite derivative at 0 and π,
  and cannot resolve errors below ~0.08° in float32. The atan2 form is exact
  for every angle, resolves 0.01° in float32, and is invariant to the lengths
  of both vectors, so a network cannot lower the loss by inflating |pred|.
* The gradient is a custom JVP from the closed form
  dθ = sign(a × b)·(dβ − dα), dβ = (p₀ dp₁ − p₁ dp₀)/|p|²: exact, and defined
  (as 0) where autodiff of atan2 gives NaN — an all-zero vector (atan2(0, 0)),
  θ = 0 and θ = π, where the angle has a kink (θ = π is a maximum, so any
  perturbation moves the prediction off it).
* Inputs in bfloat16/float16 are computed in float32; float64 stays float64.
"""

from typing import Optional, Sequence

import chex
import jax
import jax.numpy as jnp

from losses import _common


def _check_vector_pairs(y_true: chex.Array, y_pred: chex.Array) -> tuple[chex.Array, chex.Array]:
  y_true = _common.as_float(y_true, "y_true")
  y_pred = _common.as_float(y_pred, "y_pred")
  expected = f"`y_true` {y_true.shape} and `y_pred` {y_pred.shape} must have the same shape (..., 2)"
  chex.assert_equal_shape([y_true, y_pred], custom_message=expected)
  chex.assert_rank(y_true, {*range(1, 33)}, custom_message=expected)
  chex.assert_axis_dimension(y_true, -1, 2, custom_message=expected)
  dtype = jnp.promote_types(y_true.dtype, y_pred.dtype)
  return y_true.astype(dtype), y_pred.astype(dtype)


def _safe_divide(numerator: chex.Array, denominator: chex.Array) -> chex.Array:
  positive = denominator > 0
  return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


@jax.custom_jvp
def _unsigned_angle(t0, t1, p0, p1):
  cross = t0 * p1 - t1 * p0
  dot = t0 * p0 + t1 * p1
  # A zero vector makes both products ±0; atan2(0, −0) would read π, so −0 is read as +0.
  return jnp.arctan2(jnp.abs(cross), jnp.where(dot == 0, 0.0, dot))


@_unsigned_angle.defjvp
def _unsigned_angle_jvp(primals, tangents):
  t0, t1, p0, p1 = primals
  dt0, dt1, dp0, dp1 = tangents
  cross = t0 * p1 - t1 * p0
  # Calling the custom function (not atan2) keeps higher derivatives on this rule.
  theta = _unsigned_angle(t0, t1, p0, p1)
  d_beta = _safe_divide(p0 * dp1 - p1 * dp0, p0 * p0 + p1 * p1)
  d_alpha = _safe_divide(t0 * dt1 - t1 * dt0, t0 * t0 + t1 * t1)
  return theta, jnp.sign(cross) * (d_beta - d_alpha)


def angular_distance(y_true: chex.Array, y_pred: chex.Array) -> chex.Array:
  """Unsigned angle, in radians in [0, π], between 2-vectors on the last axis.

  Args:
    y_true: `(..., 2)` target vectors (cos α, sin α); any length > 0.
    y_pred: `(..., 2)` predicted vectors (cos β, sin β); any length. A zero
      vector has no direction: its angle reads as 0 with zero gradient, so
      mask such pixels if they can occur in the target.

  Returns:
    `(...)` array θ = atan2(|t × p|, t · p) in at least float32.
  """
  y_true, y_pred = _check_vector_pairs(y_true, y_pred)
  return _unsigned_angle(y_true[..., 0], y_true[..., 1], y_pred[..., 0], y_pred[..., 1])


def angular_loss(
    y_true: chex.Array,
    y_pred: chex.Array,
    *,
    delta: float = 0.2,
    mask: Optional[chex.Array] = None,
    reduction: str = "mean",
) -> chex.Array:
  """The angular loss θ^(1+δ) between (cos, sin) maps (DeepOrientation, 2022).

  Args:
    y_true: `(..., 2)` target vectors, e.g. `(B, H, W, 2)`.
    y_pred: `(..., 2)` predicted vectors; only their direction matters.
    delta: the exponent offset δ ≥ 0; the gradient with respect to the
      predicted angle is (1+δ)·θ^δ·sign(β − α), 0 at θ = 0. A Python
      number is checked; a traced δ (e.g. annealed inside jit) is not.
    mask: optional `(...)` boolean (or non-negative weight) array; pixels
      where it is 0 have no valid orientation and contribute neither value
      nor gradient.
    reduction: "mean" over the unmasked pixels (0 with a zero gradient if
      there are none, e.g. an empty batch `(0, H, W, 2)`), "sum", or "none"
      for the `(...)` per-pixel loss (masked pixels set to 0).

  Returns:
    A scalar, or the `(...)` per-pixel loss for `reduction="none"`.
  """
  _common.check_number(delta, "delta", minimum=0.0, why=" (the gradient is infinite at 0 otherwise)")
  _common.check_reduction(reduction)
  theta = angular_distance(y_true, y_pred)
  return _common.reduce_masked(theta ** (1.0 + delta), mask, reduction)


def encode_orientation(angle: chex.Array, *, axial: bool = False) -> chex.Array:
  """Maps angles `(...)` to unit vectors `(..., 2)`.

  With `axial=True` the angle is an orientation of period π (a fringe or an
  edge: θ and θ + π are the same) and is encoded as (cos 2θ, sin 2θ), the
  standard doubled-angle representation that makes it continuous.
  """
  angle = _common.as_float(angle, "angle")
  scaled = 2.0 * angle if axial else angle
  return jnp.stack([jnp.cos(scaled), jnp.sin(scaled)], axis=-1)


def decode_orientation(vectors: chex.Array, *, axial: bool = False) -> chex.Array:
  """Inverse of `encode_orientation`: angles in [0, 2π), or [0, π) if axial."""
  vectors = _common.as_float(vectors, "vectors")
  chex.assert_axis_dimension(vectors, -1, 2, custom_message=f"`vectors` {vectors.shape} must have shape (..., 2)")
  angle = jnp.mod(jnp.arctan2(vectors[..., 1], vectors[..., 0]), 2.0 * jnp.pi)
  return 0.5 * angle if axial else angle


def orientation_metrics(
    y_true: chex.Array,
    y_pred: chex.Array,
    *,
    mask: Optional[chex.Array] = None,
    axial: bool = False,
    thresholds_deg: Sequence[float] = (5.0, 10.0),
) -> dict[str, chex.Array]:
  """Mean absolute angle error (degrees) and the share of pixels within each threshold.

  With `axial=True` the inputs are doubled-angle encodings (cos 2θ, sin 2θ)
  and the errors are those of θ itself, in [0°, 90°].

  Returns:
    `{"mean_abs_error_deg": ..., "within_5deg": ..., "within_10deg": ...}`
    (one `within_*` entry per threshold), averaged over the unmasked pixels;
    all 0 when there are none (an empty batch or an all-zero mask).
  """
  error_deg = jnp.degrees(angular_distance(y_true, y_pred)) * (0.5 if axial else 1.0)
  metrics = {"mean_abs_error_deg": _common.reduce_masked(error_deg, mask, "mean")}
  for threshold in thresholds_deg:
    within = (error_deg <= threshold).astype(error_deg.dtype)
    metrics[f"within_{threshold:g}deg"] = _common.reduce_masked(within, mask, "mean")
  return metrics
