"""PROPEL: a closed-form L2 loss between a Gaussian target and a predicted mixture.

PROPEL (Asad, Basaru, Arif, Slabaugh, "PROPEL: Probabilistic Parametric
Regression Loss for Convolutional Neural Networks", ICPR 2020) lets a network
output I Gaussians Pᵢ = N(μᵢ, diag σᵢ²) in D dimensions and compares their
mixture p_model = Σᵢ wᵢ Pᵢ with the isotropic ground truth P_gt = N(y, σ²·1)
through the squared L2 distance of the two densities,

    ‖p_gt − p_model‖² = T2 − T1,
    T1 = 2 Σᵢ wᵢ G(P_gt, Pᵢ),
    T2 = H(P_gt) + Σᵢ Σⱼ wᵢ wⱼ G(Pᵢ, Pⱼ),

where G(a, b) = ∫ N_a N_b = Π_d N(μ_a,d; μ_b,d, σ_a,d² + σ_b,d²) is the
overlap of two Gaussians and H(a) = G(a, a) = Π_d 1/(2√π σ_a,d). The loss is
the log ratio

    L = log₁₀ T2 − log₁₀ T1 ≥ 0,

zero exactly when the mixture equals P_gt (T2 − T1 ≥ 0 is a squared norm).
The paper's mixture is equally weighted, wᵢ = 1/I: the weights are then a
common factor of each sum, T1 = (2/I) Σᵢ G(P_gt, Pᵢ) and
T2 = H(P_gt) + (1/I²) Σᵢ Σⱼ G(Pᵢ, Pⱼ), which is PROPEL. Any other weights
(Σᵢ wᵢ = 1, from a weight head) keep the closed form, and let the network
give about half of the mass to each mode of an ambiguous input and about
none to a mode it can rule out; a zero weight removes its component. Units
(log10), layout (D means then D standard deviations per component) and
`sigma` (the ground truth's standard deviation) follow the reference
implementation, the PyPI package `torchpropel` 0.0.3, which has equal
weights only.

Numerical choices, and where the result differs from `torchpropel`:

* Everything is computed in the log domain, every overlap relative to
  H(P_gt) (which cancels in the ratio), so the terms stay near 0 for good
  predictions and float32 keeps ~1e-6 absolute accuracy even at D = 128.
  With m = max(σ_a, σ_b) and q = 1 + (min/max)² ∈ [1, 2] (so s² = σ_a² + σ_b²
  = m²q), log G(a, b) − log H(P_gt) = −Σ_d [log(m/σ) + ½ log(q/2) + ½ z²],
  z² = (μ_a − μ_b)²/s²: log(m/σ) is the larger of the components' own
  log(σ_i/σ), computed once per component, and the q terms take one log of
  a product per pair (per 64 dimensions; the factors are in [½, 1], so the
  product cannot underflow) instead of one log per dimension. T1 is a
  log-sum-exp over the I components, each term log G(P_gt, Pᵢ) + log wᵢ; T2
  one over the I×I overlap matrix, each term log G(Pᵢ, Pⱼ) + log wᵢ + log wⱼ
  (its diagonal is log Hᵢ + 2 log wᵢ), together with log H(P_gt),
  stabilised by the largest diagonal term, which bounds the whole matrix
  (Cauchy–Schwarz: wᵢwⱼGᵢⱼ ≤ √(wᵢ²Hᵢ · wⱼ²Hⱼ)). A zero weight is a term of
  −inf, which adds nothing. Equal weights are taken out of the sums, as the
  constants log(2/I) and −2 log I, so the equal-weight terms are exactly
  those of the paper's formula.
  `torchpropel` forms the overlaps themselves, which underflow to 0 (loss
  inf, NaN gradients) for a target a few units from the prediction,
  overflow for D ≥ 16, and expands (a − b)² as 2ab − a² − b², which cancels
  catastrophically for means around 1e3 (negative losses) and 1e4 (NaN).
  Here (μ_a − μ_b) is formed directly, and where m² would underflow z² is
  formed as ((μ_a − μ_b)/m)²/q, so tiny standard deviations are used as
  given (`torchpropel` clamps the variance products to machine epsilon).
* The matrix is symmetric: only its diagonal and, for each offset k ≤ I/2,
  the pairs (i, i + k mod I) are evaluated (I·⌊I/2⌋ pairs instead of I²), on
  arrays of the input's own layout, rolled along the component axis; no
  index lists are built.
* The gradient is a custom JVP written from the closed form (the shares of
  each term in T1 and T2 times the derivatives of the log overlaps, each
  pair passing its gradient to both components), computed in the same pass
  as the value and reusing its terms, instead of autodiff through the
  log-sum-exps (the rule is itself differentiable: second derivatives
  match finite differences in float64). The log weights enter every term
  linearly, so d ln T1/d log wᵢ is the share of term i in T1 and
  d ln T2/d log wᵢ the sum of the shares in T2 of the pairs that contain
  component i (the diagonal term twice). A zero weight has zero shares:
  its component's means, standard deviations and log weight get a
  gradient of exactly 0.
* For D > 1, `torchpropel` evaluates H(P_gt) as if D were 1 (its σ parameter
  has shape [1, 1, 1]), so its loss is not the PROPEL distance: it goes
  negative (−0.124 for a perfect prediction at D = 3, I = 6, σ = 0.2) and
  biases the learned standard deviations. Here H(P_gt) = (2√π σ)^(−D), and
  the result equals `torchpropel`'s exactly for D = 1 and equals its
  `getloss` for D > 1 once that term is given the right dimension.
* Rounding can leave log T2 − log T1 a few ulps below zero at a perfect
  prediction; the result is clipped at 0 (the gradient there is 0 anyway).
* I = 1 is allowed.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from losses import _common

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def split_mixture(predictions: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """Splits a `(B, I, 2D)` mixture (I ≥ 1, D ≥ 1) into means and standard deviations, each `(B, I, D)`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> means, stds = losses.split_mixture(jnp.array([[[0.0, 1.0, 0.1, 0.2]]]))  # I = 1, D = 2
    >>> print(means, stds)
    [[[0. 1.]]] [[[0.1 0.2]]]
  """
  predictions = _common.check_mixture(predictions, "predictions")
  dims = predictions.shape[-1] // 2
  return predictions[..., :dims], predictions[..., dims:]


def constrain_mixture(raw: jax.Array, *, min_std: float = 1e-3) -> jax.Array:
  """Turns a raw `(B, I, 2D)` network output into a valid PROPEL prediction.

  The means pass through; the standard deviations become
  softplus(raw) + `min_std`, positive with a floor that keeps the density
  from collapsing onto a point.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> print(losses.constrain_mixture(jnp.array([[[0.5, -20.0]]])).round(4))  # I = 1, D = 1
    [[[0.5   0.001]]]
  """
  raw = _common.check_mixture(raw, "raw")
  _common.check_number(min_std, "min_std", minimum=0.0)
  means, raw_stds = split_mixture(raw)
  return jnp.concatenate([means, jax.nn.softplus(raw_stds) + min_std], axis=-1)


def _relative_log_overlap(mean_a, std_a, mean_b, std_b, reference_scale):
  """log G(a, b) − log G₀, G₀ the overlap of two coincident Gaussians of combined scale `reference_scale`.

  Measuring every overlap against one reference keeps the terms near 0 when
  the Gaussians are near the reference, so float32 rounding does not grow
  with D (absolute log overlaps reach ~D in magnitude).
  """
  scale = jnp.hypot(std_a, std_b)
  z = (mean_a - mean_b) / scale
  return -jnp.sum(jnp.log(scale / reference_scale) + 0.5 * z * z, axis=-1)


def log_gaussian_overlap(
    mean_a: jax.Array, std_a: jax.Array, mean_b: jax.Array, std_b: jax.Array) -> jax.Array:
  """log G(a, b) = log ∫ N(x; μ_a, σ_a²) N(x; μ_b, σ_b²) dx for diagonal Gaussians.

  All four arguments are float arrays that broadcast against each other to
  a shape `(..., D)` of rank ≥ 1; the last axis is the dimension D and is
  summed over. Standard deviations must be positive.

  Returns:
    `(...)` log overlaps (natural log).

  Examples:
    >>> import math
    >>> import jax.numpy as jnp
    >>> import losses
    >>> value = losses.log_gaussian_overlap(jnp.zeros(1), jnp.ones(1), jnp.zeros(1), jnp.ones(1))
    >>> print(round(float(value), 4), round(-math.log(2 * math.sqrt(math.pi)), 4))  # H = 1/(2√π σ)
    -1.2655 -1.2655
  """
  mean_a, std_a, mean_b, std_b = _common.broadcast_floats(
      {"mean_a": mean_a, "std_a": std_a, "mean_b": mean_b, "std_b": std_b}, "(..., D)")
  dims = jnp.broadcast_shapes(*(jnp.shape(a) for a in (mean_a, std_a, mean_b, std_b)))[-1]
  return _relative_log_overlap(mean_a, std_a, mean_b, std_b, 1.0) - dims * _LOG_SQRT_2PI


def _check_mixture_and_targets(predictions: ArrayLike, targets: ArrayLike):
  means, stds = split_mixture(predictions)
  targets = _common.as_float(targets, "targets")
  _common.chex().assert_shape(
      targets, (means.shape[0], means.shape[2]),
      custom_message=f"`targets` {targets.shape} must have shape (B, D) = {(means.shape[0], means.shape[2])} "
                     f"for `predictions` {jnp.shape(predictions)}")
  dtype = jnp.promote_types(means.dtype, targets.dtype)
  return means.astype(dtype), stds.astype(dtype), targets.astype(dtype)


def _check_log_weights(log_weights: ArrayLike, num_components: int, batch: int) -> jax.Array:
  """A float `(B, I)` array of log mixture weights."""
  log_weights = _common.as_float(log_weights, "log_weights")
  _common.chex().assert_shape(log_weights, (batch, num_components),
                    custom_message=f"`log_weights` {log_weights.shape} must have shape (B, I) = "
                                   f"{(batch, num_components)}")
  return log_weights


def _check_normalised_log_weights(log_weights: ArrayLike, num_components: int, batch: int) -> jax.Array:
  """`_check_log_weights`, and logsumexp over I equal to 0 where the host holds them.

  The tolerance is √ε of their dtype but at least float32's (3.5e-4), so that
  weights normalised in float32 and cast to float64 pass.
  """
  values = _common.host_values(log_weights)
  log_weights = _check_log_weights(log_weights, num_components, batch)
  if values is not None and values.size:
    with np.errstate(invalid="ignore"):  # NaN weights give a NaN total, reported below.
      log_totals = np.logaddexp.reduce(values.astype(np.float64), axis=-1)
    tolerance = math.sqrt(max(jnp.finfo(values.dtype).eps, jnp.finfo(jnp.float32).eps))
    # `not <=` also rejects NaN totals.
    wrong = np.flatnonzero(~(np.abs(log_totals) <= tolerance))
    if wrong.size:
      raise ValueError(
          "`log_weights` must be normalised log mixture weights, logsumexp over the I components equal to 0 "
          f"(e.g. jax.nn.log_softmax of logits), got {log_totals[wrong[0]]:.4g} for example {wrong[0]}.")
  return log_weights


def _log_mixture_weights(log_weights: ArrayLike | None, num_components: int, batch: int) -> jax.Array:
  """Normalised log weights `(B, I)`: uniform (PROPEL) when `log_weights` is None."""
  if log_weights is None:
    return jnp.full((batch, num_components), -math.log(num_components))
  return jax.nn.log_softmax(_check_log_weights(log_weights, num_components, batch), axis=-1)


def mixture_log_density(
    predictions: ArrayLike, targets: ArrayLike, *, log_weights: ArrayLike | None = None) -> jax.Array:
  """Natural-log density of the predicted mixture at `targets`, e.g. for a held-out negative log-likelihood.

  Args:
    predictions: `(B, I, 2D)` means then standard deviations.
    targets: `(B, D)` points at which to evaluate the density.
    log_weights: optional `(B, I)` unnormalised log mixture weights (a
      mixture density network's); uniform 1/I, as in PROPEL, when None.

  Returns:
    `(B,)` log densities.

  Examples:
    >>> import math
    >>> import jax.numpy as jnp
    >>> import losses
    >>> standard_normal = jnp.array([[[0.0, 1.0]]])  # I = 1, D = 1: mean 0, standard deviation 1
    >>> print(losses.mixture_log_density(standard_normal, jnp.zeros((1, 1))), -0.5 * math.log(2 * math.pi))
    [-0.9189385] -0.9189385332046727
  """
  means, stds, targets = _check_mixture_and_targets(predictions, targets)
  z = (targets[:, None, :] - means) / stds
  log_components = -jnp.sum(_LOG_SQRT_2PI + jnp.log(stds) + 0.5 * z * z, axis=-1)
  log_weights = _log_mixture_weights(log_weights, means.shape[1], means.shape[0])
  return jax.nn.logsumexp(log_components + log_weights, axis=-1)


def mixture_mean(predictions: ArrayLike, *, log_weights: ArrayLike | None = None) -> jax.Array:
  """The mean `(B, D)` of the predicted `(B, I, 2D)` mixture (uniform weights when `log_weights` is None).

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> two_components = jnp.array([[[0.0, 0.1], [1.0, 0.1]]])  # D = 1, means 0 and 1
    >>> print(losses.mixture_mean(two_components))
    [[0.5]]
  """
  means, _ = split_mixture(predictions)
  weights = jnp.exp(_log_mixture_weights(log_weights, means.shape[1], means.shape[0]))
  return jnp.einsum("bi,bid->bd", weights, means)


def _log_product_of_halves(q: jax.Array) -> jax.Array:
  """log Π_d (q_d/2) over the last axis for q ∈ [1, 2]: one log per 64 factors (2^-64 does not underflow)."""
  dims = q.shape[-1]
  return sum(jnp.log(jnp.prod(0.5 * q[..., start:start + 64], axis=-1)) for start in range(0, dims, 64))


def _pair_terms(diff, std_a, std_b, log_a, log_b):
  """log G(a, b) − log H(P_gt) for diagonal Gaussians a, b, and the pieces of its gradient.

  `diff` = μ_a − μ_b and `log_a` = log(σ_a/σ) (σ the ground-truth standard
  deviation) broadcast to `(..., D)`. With m = max(σ_a, σ_b) and
  q = 1 + (min/max)² ∈ [1, 2], s² = σ_a² + σ_b² = m²·q and the overlap relative
  to H(P_gt) (the overlap at s² = 2σ²) is

      −Σ_d [log(m/σ) + ½ log(q/2) + ½ z²],   z² = (μ_a − μ_b)²/s²,

  with log(m/σ) = max(log_a, log_b) (no new log) and one log of a product of
  D factors in [½, 1] (per 64 dimensions). Where m² underflows (m below
  ~1e-19 in float32), z² is formed as ((μ_a − μ_b)/m)²/q instead, so the
  value is finite wherever z is. Returns the `(...)` log overlaps and, per
  dimension, z² and 1/s², for the gradient: −(μ_a − μ_b)/s² with respect to
  μ_a, σ_a·(z² − 1)/s² with respect to σ_a (these overflow where autodiff of
  the direct formula would).
  """
  larger, smaller = jnp.maximum(std_a, std_b), jnp.minimum(std_a, std_b)
  ratio = smaller / larger  # Exactly 1 for equal standard deviations.
  q = 1.0 + ratio * ratio
  inverse_variance = 1.0 / (larger * larger * q)
  z2 = jnp.where(inverse_variance < jnp.inf, diff * diff * inverse_variance, jnp.square(diff / larger) / q)
  log_overlap = -(jnp.sum(jnp.maximum(log_a, log_b), axis=-1) + 0.5 * _log_product_of_halves(q)
                  + 0.5 * jnp.sum(z2, axis=-1))
  return log_overlap, z2, inverse_variance


def _roll_components(x: jax.Array, shift: int) -> jax.Array:
  """`out[:, i] = x[:, (i + shift) % I]`: component i paired with component i + shift."""
  return jnp.roll(x, -shift, axis=1)


def _propel_terms(means, stds, target, log_weights, sigma, with_gradient):
  """Per-example PROPEL loss (B,) and, with `with_gradient`, its gradients with respect to
  `means`, `stds` (B, I, D), `target` (B, D) and `log_weights` (B, I).

  `log_weights` None is PROPEL's 1/I, taken out of the sums: the terms get log
  weights 0 and the sums the constant factors 2/I (T1) and 1/I² (the matrix).
  """
  num_components = means.shape[1]
  if log_weights is None:
    log_weights, log_common_weight = jnp.zeros(means.shape[:2], means.dtype), -math.log(num_components)
  else:
    log_common_weight = 0.0
  log_stds = jnp.log(stds / sigma)  # log(σ_i/σ): 0 at a perfect prediction.
  # T1: overlaps of the ground truth with each component, times the component's weight.
  target_sigma = jnp.asarray(sigma, stds.dtype)
  target_diff = target[:, None, :] - means
  log_overlaps, t1_z2, t1_inverse_variance = _pair_terms(
      target_diff, target_sigma, stds, jnp.zeros((), stds.dtype), log_stds)
  log_t1_terms = log_overlaps + log_weights
  t1_max = jax.lax.stop_gradient(jnp.max(log_t1_terms, axis=1, keepdims=True))
  t1_max = jnp.where(jnp.isfinite(t1_max), t1_max, 0.0)
  t1_exp = jnp.exp(log_t1_terms - t1_max)
  t1_sum = jnp.sum(t1_exp, axis=1)
  log_t1 = math.log(2.0) + log_common_weight + t1_max[:, 0] + jnp.log(t1_sum)
  # T2: the I×I overlap matrix times w_i w_j, symmetric: its diagonal log H(P_i) + 2 log w_i
  # and, for each offset k ≤ I/2, the pairs (i, i + k mod I), which cover the off-diagonal
  # terms once (twice for k = I/2, hence its weight 1 instead of 2).
  diagonal = 2.0 * log_weights - jnp.sum(log_stds, axis=-1)
  # By Cauchy–Schwarz every weighted overlap is at most the larger of the two weighted
  # self-overlaps, so the largest diagonal term bounds the whole matrix.
  t2_max = jax.lax.stop_gradient(jnp.max(diagonal, axis=1, keepdims=True))
  diagonal_exp = jnp.exp(diagonal - t2_max)
  t2_sum = jnp.sum(diagonal_exp, axis=1)
  pairs = []
  for shift in range(1, num_components // 2 + 1):
    weight = 1.0 if 2 * shift == num_components else 2.0
    diff = means - _roll_components(means, shift)
    log_overlap, z2, inverse_variance = _pair_terms(
        diff, stds, _roll_components(stds, shift), log_stds, _roll_components(log_stds, shift))
    pair_log_weights = log_weights + _roll_components(log_weights, shift)
    pair_exp = weight * jnp.exp(log_overlap + pair_log_weights - t2_max)
    t2_sum = t2_sum + jnp.sum(pair_exp, axis=1)
    pairs.append((shift, diff, z2, inverse_variance, pair_exp))
  log_model_terms = t2_max[:, 0] + jnp.log(t2_sum) + 2.0 * log_common_weight
  log_t2 = jnp.logaddexp(0.0, log_model_terms)
  loss = (log_t2 - log_t1) / math.log(10.0)
  # Rounding can leave a perfect prediction a few ulps below 0.
  clipped = jnp.maximum(loss, 0.0)
  if not with_gradient:
    return clipped
  # d(ln T2) = Σ_pairs s_ij d(log overlap_ij + log w_i + log w_j), s the share of each
  # pair in T2; d(ln T1) likewise with the shares of the T1 terms. Each off-diagonal
  # pair passes its gradient to both of its components (the partner's by rolling back).
  keep = jnp.where(loss > 0, 1.0 / math.log(10.0), 0.0)[:, None]
  t2_weight = (jax.nn.sigmoid(log_model_terms) / t2_sum)[:, None] * keep
  t1_share = t1_exp / t1_sum[:, None] * keep
  t1_weight = t1_share[..., None]
  grad_means = -t1_weight * target_diff * t1_inverse_variance
  grad_target = -jnp.sum(grad_means, axis=1)
  grad_stds_over_stds = -t1_weight * (t1_z2 - 1.0) * t1_inverse_variance
  diagonal_share = t2_weight * diagonal_exp
  grad_stds_over_stds -= diagonal_share[..., None] / (stds * stds)
  grad_log_weights = 2.0 * diagonal_share - t1_share
  for shift, diff, z2, inverse_variance, pair_exp in pairs:
    pair_share = t2_weight * pair_exp
    pair_weight = pair_share[..., None]
    mean_term = pair_weight * diff * inverse_variance
    std_term = pair_weight * (z2 - 1.0) * inverse_variance
    grad_means += _roll_components(mean_term, -shift) - mean_term
    grad_stds_over_stds += std_term + _roll_components(std_term, -shift)
    grad_log_weights += pair_share + _roll_components(pair_share, -shift)
  return clipped, grad_means, grad_stds_over_stds * stds, grad_target, grad_log_weights


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _propel(predictions: jax.Array, targets: jax.Array, log_weights: jax.Array | None, sigma: float) -> jax.Array:
  dims = predictions.shape[-1] // 2
  return _propel_terms(predictions[..., :dims], predictions[..., dims:], targets, log_weights, sigma,
                       with_gradient=False)


def _propel_jvp(sigma, primals, tangents):
  predictions, targets, log_weights = primals
  d_pred, d_target, d_log_weights = tangents  # `d_log_weights` is None with `log_weights`.
  dims = predictions.shape[-1] // 2
  loss, grad_means, grad_stds, grad_target, grad_log_weights = _propel_terms(
      predictions[..., :dims], predictions[..., dims:], targets, log_weights, sigma, with_gradient=True)
  tangent = jnp.zeros_like(loss)
  if not isinstance(d_pred, jax.custom_derivatives.SymbolicZero):
    tangent = tangent + jnp.sum(jnp.concatenate([grad_means, grad_stds], axis=-1) * d_pred, axis=(1, 2))
  if not isinstance(d_target, jax.custom_derivatives.SymbolicZero):
    tangent = tangent + jnp.sum(grad_target * d_target, axis=1)
  if log_weights is not None and not isinstance(d_log_weights, jax.custom_derivatives.SymbolicZero):
    tangent = tangent + jnp.sum(grad_log_weights * d_log_weights, axis=1)
  return loss, tangent


_propel.defjvp(_propel_jvp, symbolic_zeros=True)


def propel_loss(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    sigma: float = 0.1,
    log_weights: ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
  """PROPEL loss log₁₀ T2 − log₁₀ T1 (Asad et al., ICPR 2020), in the log domain, with optional mixture weights.

  T1 = 2 Σᵢ wᵢ G(P_gt, Pᵢ) and T2 = H(P_gt) + Σᵢ Σⱼ wᵢ wⱼ G(Pᵢ, Pⱼ) (see the
  module docstring), the squared L2 distance between the ground truth and
  the mixture Σᵢ wᵢ Pᵢ. Without `log_weights` every wᵢ is 1/I, and the sums
  are PROPEL's T1 = (2/I) Σᵢ G(P_gt, Pᵢ) and T2 = H(P_gt) + (1/I²) Σᵢ Σⱼ G(Pᵢ, Pⱼ).

  Args:
    predictions: `(B, I, 2D)` network output: for each of the I components,
      D means then D positive standard deviations (see `constrain_mixture`).
    targets: `(B, D)` regression targets, the means of the ground-truth
      Gaussians.
    sigma: standard deviation of the isotropic ground-truth Gaussian, a
      static number > 0.
    log_weights: optional `(B, I)` float array of normalised natural-log
      mixture weights log wᵢ, logsumexp over the I components equal to 0
      (e.g. `jax.nn.log_softmax` of a weight head's logits); −inf (a weight
      of 0) removes its component, whose parameters and log weight then get
      a zero gradient. None is PROPEL's equal weights 1/I. The gradient with
      respect to `log_weights` comes with the others from the closed form.
      The normalisation is checked (to 3.5e-4, √ε of float32, or √ε of a
      coarser dtype; a ValueError) where the host holds the values (see
      `losses`); inside `jax.jit` it cannot be, and weights that do not sum
      to 1 give a loss that is not the L2 distance.
    reduction: "mean" or "sum" over the B examples, or "none" for `(B,)`.
      The mean over an empty batch (B = 0) is 0 with a zero gradient.

  Returns:
    A scalar, or `(B,)` for `reduction="none"`; ≥ 0, in log10 units.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import losses
    >>> targets = jnp.array([[0.3, -1.0]])  # B = 1, D = 2
    >>> perfect = jnp.concatenate([targets, jnp.full((1, 2), 0.1)], axis=-1)[:, None]  # I = 1, σᵢ = σ
    >>> print(losses.propel_loss(perfect, targets, sigma=0.1))
    0.0
    >>> shifted = perfect.at[..., 0].add(0.1)
    >>> print(round(float(losses.propel_loss(shifted, targets, sigma=0.1)), 4))  # log₁₀ exp(0.1² / (4σ²))
    0.1086
    >>> jax.grad(losses.propel_loss)(shifted, targets).shape
    (1, 1, 4)

    A second component far from the target: with equal weights T1 = H(P_gt)
    and T2 = H(P_gt) + (H + H)/4, so L = log₁₀ 1.5; given all the weight, the
    component at the target is a perfect prediction.

    >>> far = jnp.array([[[5.0, 5.0, 0.1, 0.1]]])
    >>> two = jnp.concatenate([perfect, far], axis=1)  # I = 2
    >>> print(round(float(losses.propel_loss(two, targets, sigma=0.1)), 4))
    0.1761
    >>> all_on_first = jnp.log(jnp.array([[1.0, 0.0]]))  # log weights 0 and −inf
    >>> print(round(float(losses.propel_loss(two, targets, sigma=0.1, log_weights=all_on_first)), 4))
    0.0
    >>> weighted = lambda logits: losses.propel_loss(two, targets, sigma=0.1, log_weights=jax.nn.log_softmax(logits))
    >>> value, gradient = jax.value_and_grad(weighted)(jnp.zeros((1, 2)))  # equal weights again
    >>> print(round(float(value), 4), gradient.round(4))  # moving weight onto the first component helps
    0.1761 [[-0.2171  0.2171]]
  """
  _common.check_reduction(reduction)
  _common.check_number(sigma, "sigma", minimum=0.0, strict=True, why=" (the ground-truth standard deviation)",
                       static=True)
  means, _, targets = _check_mixture_and_targets(predictions, targets)
  dtype = means.dtype
  if log_weights is not None:
    log_weights = _check_normalised_log_weights(log_weights, means.shape[1], means.shape[0])
    dtype = jnp.promote_types(dtype, log_weights.dtype)
    log_weights = log_weights.astype(dtype)
  # `predictions` itself (not a concatenation of its halves) is the differentiated input,
  # so its gradient is built once, without padding and adding the halves.
  predictions = _common.as_float(predictions, "predictions").astype(dtype)
  return _compiled_propel_loss(predictions, targets.astype(dtype), log_weights, float(sigma), reduction)


# Called outside `jit`, the loss compiles one program per signature instead of one per operation.
@functools.partial(jax.jit, static_argnums=(3, 4))
def _compiled_propel_loss(predictions, targets, log_weights, sigma, reduction):
  return _common.reduce_masked(_propel(predictions, targets, log_weights, sigma), None, reduction)
