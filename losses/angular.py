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
* On the CPU, float32 atan2 is evaluated with plain arithmetic (XLA's CPU
  lowering of `jnp.arctan2` is a scalar library call, slower than the
  rest of the loss together); on every other backend (GPU, TPU), where the native
  atan2 is a fast vector instruction, `jnp.arctan2` is used. The choice is
  made when the function is lowered (`jax.lax.platform_dependent`), so one
  traced program serves every backend. The CPU path is an octant reduction to |z| ≤ tan(π/8) with one
  division, z = num/den, and an odd minimax polynomial of degree 11 for
  atan(z) (relative error 7e-10, far below float32 rounding). The
  polynomial is written homogeneously in (num, den), each first scaled by
  the same power of two (exact), so the single division comes last. It
  agrees with float64 `arctan2` of the same float32 inputs to within 4
  float32 ulps over the whole plane (tested on a dense grid; `jnp.arctan2`
  itself is within 2). Float64 inputs use `jnp.arctan2` everywhere, exact
  to float64.
* θ^(1+δ) is θ·exp(δ·log θ) (0 at θ = 0; integer δ uses integer powers),
  not `θ ** (1 + δ)`, which XLA lowers to a scalar `pow` call (slower
  than exp and log together on the CPU); the two agree to float32
  rounding of δ·log θ.
* The gradient is a custom JVP from the closed form
  dθ = sign(a × b)·(dβ − dα), dβ = (p₀ dp₁ − p₁ dp₀)/|p|², fused with the
  power: d(θ^(1+δ)) = (1+δ)·θ^δ·dθ, with θ^δ = θ^(1+δ)/θ for fractional δ,
  so one exp/log serves both the value and the gradient and nothing is
  differentiated through atan2 or pow. It is exact (where θ^(1+δ) itself
  underflows float32, θ < 1e-32 for δ = 0.2, it is 0), and defined (as 0)
  where autodiff of atan2 gives NaN — an all-zero vector (atan2(0, 0)),
  θ = 0 and θ = π, where the angle has a kink (θ = π is a maximum, so any
  perturbation moves the prediction off it). The tangent of an argument
  that is not differentiated (usually `targets`) is not computed. Both
  atan2 paths share this rule.
* Inputs in bfloat16/float16 are computed in float32; float64 stays float64.
"""

from collections.abc import Sequence
import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from losses import _common


def _check_vector_pairs(predictions: ArrayLike, targets: ArrayLike) -> tuple[jax.Array, jax.Array]:
  predictions = _common.as_float(predictions, "predictions")
  targets = _common.as_float(targets, "targets")
  expected = f"`predictions` {predictions.shape} and `targets` {targets.shape} must have the same shape (..., 2)"
  chex = _common.chex()
  chex.assert_equal_shape([predictions, targets], custom_message=expected)
  chex.assert_rank(predictions, {*range(1, 33)}, custom_message=expected)
  chex.assert_axis_dimension(predictions, -1, 2, custom_message=expected)
  dtype = jnp.promote_types(predictions.dtype, targets.dtype)
  return predictions.astype(dtype), targets.astype(dtype)


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  positive = denominator > 0
  return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


# atan(z) = z·(1 + Σ_k c_k z^(2k)), k = 1…5, minimax in relative error on
# |z| ≤ tan(π/8) (error 6.6e-10), fitted in float64 by reweighted least squares.
_ATAN_COEFFICIENTS = (-0.33333315505230315, 0.19998489435813419, -0.14243848730926562,
                      0.10596001517277367, -0.06083453257313703)
_TAN_PI_8 = 0.41421356237309503
_PI_4_HEAD = float(np.float32(np.pi / 4))
_PI_4_TAIL = float(np.float32(np.pi / 4 - _PI_4_HEAD))


def _power_of_two_scale(x: jax.Array) -> jax.Array:
  """2^k (float32) with x·2^k in [1, 2) for normal x ≥ 0; clamped at the ends of the exponent range."""
  biased_exponent = jax.lax.shift_right_logical(jax.lax.bitcast_convert_type(x, jnp.int32), 23)
  scale_exponent = jnp.clip(254 - biased_exponent, 1, 253)
  return jax.lax.bitcast_convert_type(jax.lax.shift_left(scale_exponent, 23), jnp.float32)


def _atan2_upper_polynomial(y: jax.Array, x: jax.Array) -> jax.Array:
  """atan2(y, x) ∈ [0, π] for float32 y ≥ 0, from arithmetic that XLA:CPU vectorises.

  Octant reduction: with a = |x|, m = max(a, y), n = min(a, y), the angle
  atan(n/m) ∈ [0, π/4] is atan(z) for z = n/m ≤ tan(π/8), or
  π/4 + atan(z) for z = (n − m)/(n + m) otherwise; then π/2 − · if y > a
  and π − · if x < 0. The polynomial is evaluated homogeneously,
  atan(num/den) = num·(v⁵ + Σ c_k u^k v^(5−k)) / (den·v⁵), u = num², v = den²,
  after scaling num and den by the same power of two (exact) so that nothing
  over- or underflows; the one division comes last.
  """
  a = jnp.abs(x)
  larger, smaller = jnp.maximum(a, y), jnp.minimum(a, y)
  upper_octant = smaller > _TAN_PI_8 * larger
  numerator = jnp.where(upper_octant, smaller - larger, smaller)
  denominator = jnp.where(upper_octant, smaller + larger, larger)
  scale = _power_of_two_scale(denominator)
  n, d = numerator * scale, denominator * scale
  u, v = n * n, d * d
  v2 = v * v
  v4 = v2 * v2
  c1, c2, c3, c4, c5 = _ATAN_COEFFICIENTS
  h = c5 * u
  h = (h + c4 * v) * u
  h = (h + c3 * v2) * u
  h = (h + c2 * (v2 * v)) * u
  h = (h + c1 * v4) * u
  v5 = v4 * v
  # The reflections give θ = offset + sign·atan(num/den); folding them into one
  # fraction, (offset·D + sign·N)/D, leaves a single division at the end.
  # The offset is k·π/4, k ∈ {0, …, 4}; π/4 is split into a float32 head and
  # its rounding error, so that the constant adds no error of its own.
  steep, negative = y > a, x < 0
  eighths = jnp.where(upper_octant, 1.0, 0.0)
  eighths = jnp.where(steep, 2.0 - eighths, eighths)
  eighths = jnp.where(negative, 4.0 - eighths, eighths)
  sign = jnp.where(steep != negative, -1.0, 1.0)
  fraction_numerator, fraction_denominator = n * (v5 + h), d * v5
  # D is 0 only when x = y = 0 (then N = 0 and the angle is 0).
  return (eighths * _PI_4_HEAD * fraction_denominator
          + (sign * fraction_numerator + eighths * _PI_4_TAIL * fraction_denominator)) / jnp.maximum(
              fraction_denominator, jnp.finfo(jnp.float32).tiny)


def _atan2_upper(y: jax.Array, x: jax.Array) -> jax.Array:
  """atan2(y, x) ∈ [0, π] for y ≥ 0: the polynomial for float32 on the CPU, `jnp.arctan2` otherwise."""
  if y.dtype != jnp.float32:
    return jnp.arctan2(y, x)
  return jax.lax.platform_dependent(y, x, cpu=_atan2_upper_polynomial, default=jnp.arctan2)


def _angle(predictions: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The unsigned angle θ and the cross product t × p (its sign is the sign of β − α)."""
  t0, t1, p0, p1 = targets[..., 0], targets[..., 1], predictions[..., 0], predictions[..., 1]
  cross = t0 * p1 - t1 * p0
  dot = t0 * p0 + t1 * p1
  # A zero vector makes both products ±0; atan2(0, −0) would read π, so −0 is read as +0.
  dot = jnp.where(dot == 0, 0.0, dot)
  return _atan2_upper(jnp.abs(cross), dot), cross


def _power_of_angle(theta: jax.Array, delta: float) -> jax.Array:
  """θ^δ for θ ≥ 0 without `pow`: 1 for δ = 0, integer powers, else exp(δ·log θ) (0 at θ = 0)."""
  if delta == 0:
    return jnp.ones_like(theta)
  if float(delta).is_integer():
    return theta ** int(delta)
  # The inner `where` keeps log away from 0, so no derivative of this is NaN there.
  return jnp.where(theta == 0, 0.0, jnp.exp(delta * jnp.log(jnp.where(theta == 0, 1.0, theta))))


def _value(theta: jax.Array, power: jax.Array) -> jax.Array:
  """θ·θ^δ, exactly 0 at θ = 0.

  The select also ends the per-pixel computation on purpose: XLA's CPU
  backend hands a reduction's elementwise producers to a library kernel
  (YNNPACK) when they are plain arithmetic, and there this chain runs much
  slower than in XLA's own fused loop. A select is not
  handed over, so the loop stays whole and only finished values are summed.
  """
  return jnp.where(theta == 0, 0.0, theta * power)


def _squared_norm(v: jax.Array) -> jax.Array:
  """|v|² over the last axis; written out, since XLA runs a reduction over a size-2 axis slowly."""
  return v[..., 0] * v[..., 0] + v[..., 1] * v[..., 1]


def _rotate(v: jax.Array) -> jax.Array:
  """(v₀, v₁) → (−v₁, v₀): the direction in which the angle of v grows."""
  return v[..., ::-1] * jnp.array([-1.0, 1.0], v.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _angle_power(predictions: jax.Array, targets: jax.Array, delta: float) -> jax.Array:
  """θ^(1+δ) per pixel, θ = atan2(|t × p|, t · p); θ itself for δ = 0."""
  theta, _ = _angle(predictions, targets)
  return _value(theta, _power_of_angle(theta, delta))


def _angle_power_jvp(delta, primals, tangents):
  predictions, targets = primals
  dp, dt = tangents
  # θ from the custom function itself (not atan2), so that higher derivatives
  # also use this rule.
  theta = _angle_power(predictions, targets, 0.0)
  _, cross = _angle(predictions, targets)
  power = _power_of_angle(theta, delta)
  value = _value(theta, power)
  # d(θ^(1+δ)) = (1+δ)·θ^δ·sign(t × p)·(dβ − dα), dβ = (rot p · dp)/|p|².
  # For a fractional δ, θ^δ is taken as value/θ: XLA then keeps a single
  # exp/log pass, shared by the value and the gradient.
  if delta == 0 or float(delta).is_integer():
    slope, scale = (1.0 + delta) * power * jnp.sign(cross), 1.0
  else:
    slope, scale = (1.0 + delta) * value * jnp.sign(cross), theta
  tangent = jnp.zeros_like(theta)
  if not isinstance(dp, jax.custom_derivatives.SymbolicZero):
    coefficient = _safe_divide(slope, scale * _squared_norm(predictions))
    tangent = tangent + jnp.sum(coefficient[..., None] * _rotate(predictions) * dp, axis=-1)
  if not isinstance(dt, jax.custom_derivatives.SymbolicZero):
    coefficient = _safe_divide(slope, scale * _squared_norm(targets))
    tangent = tangent - jnp.sum(coefficient[..., None] * _rotate(targets) * dt, axis=-1)
  return value, tangent


_angle_power.defjvp(_angle_power_jvp, symbolic_zeros=True)
# Called outside `jit`, the public functions compile one program per signature instead of one per operation.
_compiled_angle_power = jax.jit(_angle_power, static_argnums=2)


def angular_distance(predictions: ArrayLike, targets: ArrayLike) -> jax.Array:
  """Unsigned angle θ = atan2(|t × p|, t · p), in radians in [0, π], between 2-vectors on the last axis.

  Args:
    predictions: `(..., 2)` predicted vectors (cos β, sin β); any length. A
      zero vector has no direction: its angle reads as 0 with zero gradient,
      so mask such pixels if they can occur in the targets.
    targets: `(..., 2)` target vectors (cos α, sin α); any length > 0.

  Returns:
    `(...)` angles in the inputs' float dtype (at least float32).

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> predictions = jnp.array([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> targets = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    >>> print(losses.angular_distance(predictions, targets).round(4))
    [0.     1.5708 3.1416]
  """
  predictions, targets = _check_vector_pairs(predictions, targets)
  return _compiled_angle_power(predictions, targets, 0.0)


def angular_loss(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    delta: float = 0.2,
    mask: ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
  """The angular loss θ^(1+δ) between (cos, sin) maps (DeepOrientation, 2022).

  Args:
    predictions: `(..., 2)` predicted vectors, e.g. `(B, H, W, 2)`; only
      their direction matters.
    targets: `(..., 2)` target vectors of the same shape.
    delta: the exponent offset δ ≥ 0; the gradient with respect to the
      predicted angle is (1+δ)·θ^δ·sign(β − α), 0 at θ = 0. A static
      Python number: it selects the formula (no power for δ = 0, integer
      powers, one exp/log otherwise), so a traced δ is a `TypeError`.
    mask: optional `(...)` boolean (or non-negative weight) array; pixels
      where it is 0 have no valid orientation and contribute neither value
      nor gradient.
    reduction: "mean" over every element of `(...)` (all pixels of all
      images) that the mask includes, weighted by the mask (0 with a zero
      gradient if it includes none, e.g. an empty batch `(0, H, W, 2)`);
      "sum"; or "none" for the `(...)` per-pixel loss (masked pixels 0).

  Returns:
    A scalar, or the `(...)` per-pixel loss for `reduction="none"`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import losses
    >>> targets = losses.encode_orientation(jnp.zeros((2, 4, 4)))
    >>> predictions = losses.encode_orientation(jnp.full((2, 4, 4), 0.5))
    >>> print(round(float(losses.angular_loss(predictions, targets, delta=0.2)), 4))  # 0.5 ** 1.2
    0.4353
    >>> gradient = jax.grad(losses.angular_loss)(predictions, targets)
    >>> gradient.shape
    (2, 4, 4, 2)
  """
  _common.check_number(delta, "delta", minimum=0.0, why=" (the gradient is infinite at 0 otherwise)",
                       static=True)
  _common.check_reduction(reduction)
  predictions, targets = _check_vector_pairs(predictions, targets)
  return _compiled_angular_loss(predictions, targets, mask, float(delta), reduction)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _compiled_angular_loss(predictions, targets, mask, delta, reduction):
  return _common.reduce_masked(_angle_power(predictions, targets, delta), mask, reduction)


def encode_orientation(angle: ArrayLike, *, axial: bool = False) -> jax.Array:
  """Maps angles `(...)` to unit vectors `(..., 2)`.

  With `axial=True` the angle is an orientation of period π (a fringe or an
  edge: θ and θ + π are the same) and is encoded as (cos 2θ, sin 2θ), the
  standard doubled-angle representation that makes it continuous.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> print(losses.encode_orientation(jnp.array([0.0, jnp.pi / 2]), axial=True).round(4))
    [[ 1.  0.]
     [-1. -0.]]
  """
  angle = _common.as_float(angle, "angle")
  scaled = 2.0 * angle if axial else angle
  return jnp.stack([jnp.cos(scaled), jnp.sin(scaled)], axis=-1)


def decode_orientation(vectors: ArrayLike, *, axial: bool = False) -> jax.Array:
  """Inverse of `encode_orientation`: angles in [0, 2π), or [0, π) if axial.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> angles = jnp.array([0.1, 3.0])
    >>> decoded = losses.decode_orientation(losses.encode_orientation(angles, axial=True), axial=True)
    >>> [round(float(angle), 4) for angle in decoded]
    [0.1, 3.0]
  """
  vectors = _common.as_float(vectors, "vectors")
  _common.chex().assert_axis_dimension(
      vectors, -1, 2, custom_message=f"`vectors` {vectors.shape} must have shape (..., 2)")
  angle = jnp.mod(jnp.arctan2(vectors[..., 1], vectors[..., 0]), 2.0 * jnp.pi)
  return 0.5 * angle if axial else angle


def _masked_std(values: jax.Array, mask: ArrayLike | None) -> jax.Array:
  """The sample standard deviation (N − 1 in the denominator) of the included values; 0 for fewer than 2."""
  weights = jnp.ones_like(values) if mask is None else jnp.asarray(mask).astype(values.dtype)
  count = jnp.sum(weights)
  mean = _common.reduce_masked(values, weights, "mean")
  squares = _common.reduce_masked((values - mean) ** 2, weights, "sum")
  return jnp.sqrt(jnp.where(count > 1, squares / jnp.maximum(count - 1, 1), 0.0))


def orientation_metrics(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    axial: bool = False,
    thresholds_deg: Sequence[float] = (5.0, 10.0),
) -> dict[str, jax.Array]:
  """Angle errors of (cos, sin) maps: mean absolute error, share within thresholds, and GOE.

  With `axial=True` the inputs are doubled-angle encodings (cos 2θ, sin 2θ)
  and the errors are those of θ itself, in [0°, 90°].

  GOE is DeepOrientation's global orientation error (Cywińska et al. 2022,
  `GOE.m` in their code): the standard deviation of sin(θ̂ − θ) over the
  pixels, with N − 1 in the denominator as MATLAB's `var`, in radians' sine
  (dimensionless). For orientations (`axial=True`) the difference is first
  wrapped to (−π/2, π/2], so that θ̂ and θ̂ + π, the same orientation, give
  the same error; `GOE.m` takes the sine of the raw difference, whose sign
  flips when the two orientations straddle the wrap. For directions the
  sine's own period is the wrap. Like the other entries, it pools all the
  included pixels of `(...)`; call it per image for the paper's per-image
  values.

  Args:
    predictions: `(..., 2)` predicted vectors.
    targets: `(..., 2)` target vectors of the same shape.
    mask: optional `(...)` boolean array of the pixels to include.
    axial: inputs are doubled-angle encodings of orientations of period π.
    thresholds_deg: the thresholds of the `within_*` entries, in degrees.

  Returns:
    `{"mean_abs_error_deg", "within_5deg", "within_10deg", "goe"}` (one
    `within_*` entry per threshold) over the included pixels; all 0 when
    there are none (an empty batch or an all-zero mask), GOE also for one.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> truth = jnp.zeros((1, 3))
    >>> estimate = jnp.radians(jnp.array([[2.0, -4.0, 12.0]]))
    >>> metrics = losses.orientation_metrics(
    ...     losses.encode_orientation(estimate), losses.encode_orientation(truth))
    >>> {name: round(float(value), 4) for name, value in metrics.items()}
    {'mean_abs_error_deg': 6.0, 'within_5deg': 0.6667, 'within_10deg': 0.6667, 'goe': 0.1402}
  """
  predictions, targets = _check_vector_pairs(predictions, targets)
  metrics = _compiled_orientation_metrics(predictions, targets, mask, bool(axial), tuple(thresholds_deg))
  names = ["mean_abs_error_deg", *(f"within_{threshold:g}deg" for threshold in thresholds_deg), "goe"]
  return {name: metrics[name] for name in names}  # In this order: `jit` returns a dict's keys sorted.


@functools.partial(jax.jit, static_argnums=(3, 4))
def _compiled_orientation_metrics(predictions, targets, mask, axial, thresholds_deg):
  scale = 0.5 if axial else 1.0
  theta = _angle_power(predictions, targets, 0.0) * scale
  error_deg = jnp.degrees(theta)
  metrics = {"mean_abs_error_deg": _common.reduce_masked(error_deg, mask, "mean")}
  for threshold in thresholds_deg:
    within = (error_deg <= threshold).astype(error_deg.dtype)
    metrics[f"within_{threshold:g}deg"] = _common.reduce_masked(within, mask, "mean")
  _, cross = _angle(predictions, targets)
  # sin of the signed difference β − α (halved and so wrapped to (−π/2, π/2] when axial).
  sine_error = jnp.where(cross < 0, -1.0, 1.0) * jnp.sin(theta)
  metrics["goe"] = _masked_std(sine_error, mask)
  return metrics
