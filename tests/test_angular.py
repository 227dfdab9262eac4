"""Tests of losses/angular.py against a float64 per-pixel loop written from the definition."""

import math

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from conftest import optimized_compilation
import losses


def reference_angle(p, t) -> float:
  """θ = |wrap(β − α)| from the predicted angle β and the target angle α, in Python floats (float64)."""
  difference = (math.atan2(p[1], p[0]) - math.atan2(t[1], t[0])) % (2 * math.pi)
  return min(difference, 2 * math.pi - difference)


def reference_loss(predictions, targets, delta, mask, reduction):
  predictions = np.asarray(predictions, np.float64).reshape(-1, 2)
  targets = np.asarray(targets, np.float64).reshape(-1, 2)
  weights = np.ones(len(targets)) if mask is None else np.asarray(mask, np.float64).reshape(-1)
  per_pixel = np.zeros(len(targets))
  for i in range(len(targets)):
    if weights[i] > 0:
      per_pixel[i] = weights[i] * reference_angle(predictions[i], targets[i]) ** (1 + delta)
  if reduction == "none":
    return per_pixel
  if reduction == "sum":
    return per_pixel.sum()
  return per_pixel.sum() / weights.sum() if weights.sum() > 0 else 0.0


def random_vectors(key, shape):
  """Random directions with lengths spread over four decades."""
  angle_key, length_key = jax.random.split(key)
  angle = jax.random.uniform(angle_key, shape, minval=-jnp.pi, maxval=jnp.pi)
  length = 10.0 ** jax.random.uniform(length_key, shape, minval=-2, maxval=2)
  return length[..., None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)


def unit(angle_deg):
  angle = np.radians(angle_deg)
  return jnp.array([np.cos(angle), np.sin(angle)], jnp.float32)


@pytest.mark.parametrize("delta", [0.0, 0.2, 0.7])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_float64_loop_reference(delta, reduction, masked):
  keys = jax.random.split(jax.random.key(int(delta * 10) + 3 * masked), 3)
  targets = random_vectors(keys[0], (2, 5, 7))
  predictions = random_vectors(keys[1], (2, 5, 7))
  mask = jax.random.bernoulli(keys[2], 0.7, (2, 5, 7)) if masked else None
  result = losses.angular_loss(predictions, targets, delta=delta, mask=mask, reduction=reduction)
  expected = reference_loss(predictions, targets, delta, mask, reduction)
  np.testing.assert_allclose(np.ravel(result), np.ravel(expected), rtol=2e-5, atol=1e-6)


def test_float32_atan2_is_within_a_few_ulps_of_float64_arctan2():
  """The polynomial atan2 behind the float32 path, on a dense grid of directions and lengths."""
  from losses import angular  # pylint: disable=import-outside-toplevel
  angles = np.linspace(0.0, np.pi, 200_001)
  radii = 10.0 ** np.arange(-30.0, 31.0, 6.0)
  y = np.abs(np.outer(radii, np.sin(angles))).astype(np.float32).ravel()
  x = np.outer(radii, np.cos(angles)).astype(np.float32).ravel()
  with optimized_compilation():  # The accuracy of the program users run: fused, its polynomial contracted.
    ours = np.asarray(jax.jit(angular._atan2_upper)(y, x), np.float64)
  expected = np.arctan2(y.astype(np.float64), x.astype(np.float64))
  ulps = np.abs(ours - expected) / np.spacing(np.maximum(expected, 1e-30).astype(np.float32)).astype(np.float64)
  assert ulps.max() <= 4.0, ulps.max()
  special = jax.jit(angular._atan2_upper)(np.float32([0.0, 0.0, 1.0, 0.0, 3.0]),
                                          np.float32([0.0, -2.0, 0.0, 5.0, -3.0]))
  np.testing.assert_allclose(special, [0.0, np.pi, np.pi / 2, 0.0, 0.75 * np.pi], rtol=2.5e-7, atol=0)


def test_float64_uses_the_exact_arctan2():
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.key(9))
    targets = random_vectors(keys[0], (50,)).astype(jnp.float64)
    predictions = random_vectors(keys[1], (50,)).astype(jnp.float64)
    theta = losses.angular_distance(predictions, targets)
    expected = [reference_angle(p, t) for p, t in zip(np.asarray(predictions), np.asarray(targets))]
    np.testing.assert_allclose(theta, expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("difference_deg, expected_deg", [
    (0.0, 0.0), (30.0, 30.0), (-30.0, 30.0), (90.0, 90.0), (120.0, 120.0), (-150.0, 150.0),
    (179.9, 179.9), (180.0, 180.0), (270.0, 90.0), (359.0, 1.0),
])
def test_special_angles(difference_deg, expected_deg):
  for base_deg in (0.0, 77.0, -135.0):
    theta = losses.angular_distance(unit(base_deg + difference_deg), unit(base_deg))
    np.testing.assert_allclose(np.degrees(theta), expected_deg, atol=1e-4)


def test_errors_above_90_degrees_are_measured_and_corrected():
  """The clipped-arccos version reads every error above 90° as 90° with zero gradient."""
  targets = unit(0.0)[None]
  for error_deg in (100.0, 150.0, 179.0):
    predictions = unit(error_deg)[None]
    value = losses.angular_loss(predictions, targets)
    np.testing.assert_allclose(value, np.radians(error_deg) ** 1.2, rtol=1e-5)
    gradient = jax.grad(losses.angular_loss)(predictions, targets)
    step = predictions - 0.01 * gradient
    assert losses.angular_loss(step, targets) < value


def test_gradient_wrt_predicted_angle_is_analytic():
  delta, alpha = 0.2, 0.3
  targets = jnp.array([math.cos(alpha), math.sin(alpha)])

  def loss_of_beta(beta, length):
    return losses.angular_loss(length * jnp.stack([jnp.cos(beta), jnp.sin(beta)]), targets, delta=delta)

  for beta in np.linspace(-np.pi + 0.05, np.pi - 0.05, 37):
    wrapped = (beta - alpha + np.pi) % (2 * np.pi) - np.pi
    theta = abs(wrapped)
    expected = (1 + delta) * theta**delta * np.sign(wrapped)
    for length in (0.1, 1.0, 7.0):
      np.testing.assert_allclose(jax.grad(loss_of_beta)(beta, length), expected, rtol=1e-4, atol=1e-6)


def test_gradients_match_finite_differences_in_float64():
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.key(7))
    targets = random_vectors(keys[0], (3, 4)).astype(jnp.float64)
    predictions = random_vectors(keys[1], (3, 4)).astype(jnp.float64)
    theta = losses.angular_distance(predictions, targets)
    assert theta.dtype == jnp.float64
    assert theta.min() > 0.01 and theta.max() < np.pi - 0.01  # Away from the kinks.
    for reduction in ("mean", "none"):
      fn = lambda p, t, r=reduction: jnp.sum(losses.angular_loss(p, t, reduction=r) ** 2)
      check_grads(fn, (predictions, targets), order=2, modes=("fwd", "rev"), eps=1e-6, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name, predictions, targets", [
    ("theta = 0", [2.0, 0.0], [1.0, 0.0]),
    ("theta = pi", [-3.0, 0.0], [1.0, 0.0]),
    ("zero prediction", [0.0, 0.0], [0.6, 0.8]),
    ("zero target", [0.6, 0.8], [0.0, 0.0]),
    ("tiny prediction", [1e-30, -1e-30], [0.6, 0.8]),
])
def test_value_and_gradient_finite_at_singular_points(name, predictions, targets):
  predictions, targets = jnp.array([predictions]), jnp.array([targets])
  value, grads = jax.value_and_grad(losses.angular_loss, argnums=(0, 1))(predictions, targets)
  assert np.isfinite(value), name
  assert all(np.isfinite(g).all() for g in grads), name
  # θ itself is twice differentiable everywhere we define it; θ^(1+δ) has
  # unbounded curvature at θ = 0 for δ < 1, so only δ = 1 is checked there.
  hessian = jax.hessian(losses.angular_distance, argnums=0)(predictions, targets)
  assert np.isfinite(hessian).all(), name
  hessian = jax.hessian(lambda p, t: losses.angular_loss(p, t, delta=1.0), argnums=0)(predictions, targets)
  assert np.isfinite(hessian).all(), name


def test_gradient_vanishes_at_the_optimum():
  targets = unit(40.0)[None]
  # Scaling by 2 is exact, so the vectors are exactly parallel (θ = 0, not ~1e-8,
  # where the true gradient (1+δ)·θ^δ is still ~0.03).
  gradient = jax.grad(losses.angular_loss)(2.0 * targets, targets)
  np.testing.assert_array_equal(gradient, 0.0)


def test_invariant_to_vector_lengths():
  keys = jax.random.split(jax.random.key(1))
  targets = random_vectors(keys[0], (64,))
  predictions = random_vectors(keys[1], (64,))
  base = losses.angular_loss(predictions, targets, reduction="none")
  for scale in (1e-3, 0.5, 40.0, 1e3):
    np.testing.assert_allclose(losses.angular_loss(predictions, scale * targets, reduction="none"), base, rtol=1e-5)
    np.testing.assert_allclose(losses.angular_loss(scale * predictions, targets, reduction="none"), base, rtol=1e-5)
  # The gradient is tangent to the prediction: inflating |predictions| cannot lower the loss.
  gradient = jax.grad(losses.angular_loss)(predictions, targets)
  np.testing.assert_allclose(jnp.sum(gradient * predictions, axis=-1), 0.0, atol=1e-6)


def test_float32_resolves_a_hundredth_of_a_degree():
  for base_deg in (0.0, 33.0, 210.0):
    for error_deg in (0.01, 0.02, 0.05):
      theta = losses.angular_distance(unit(base_deg + error_deg), unit(base_deg))
      assert theta.dtype == jnp.float32
      np.testing.assert_allclose(np.degrees(theta), error_deg, rtol=0.02)


def test_bfloat16_inputs_are_computed_in_float32():
  keys = jax.random.split(jax.random.key(2))
  targets = random_vectors(keys[0], (8, 8)).astype(jnp.bfloat16)
  predictions = random_vectors(keys[1], (8, 8)).astype(jnp.bfloat16)
  value = losses.angular_loss(predictions, targets)
  assert value.dtype == jnp.float32
  expected = losses.angular_loss(predictions.astype(jnp.float32), targets.astype(jnp.float32))
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  gradient = jax.grad(losses.angular_loss)(predictions, targets)
  assert gradient.dtype == jnp.bfloat16 and np.isfinite(gradient.astype(jnp.float32)).all()


def test_jit_vmap_and_eager_agree():
  keys = jax.random.split(jax.random.key(3), 3)
  targets = random_vectors(keys[0], (4, 6, 6))
  predictions = random_vectors(keys[1], (4, 6, 6))
  mask = jax.random.bernoulli(keys[2], 0.8, (4, 6, 6))
  fn = lambda p, t, m: losses.angular_loss(p, t, mask=m, reduction="sum")
  eager = jnp.stack([fn(predictions[i], targets[i], mask[i]) for i in range(4)])
  np.testing.assert_allclose(jax.jit(jax.vmap(fn))(predictions, targets, mask), eager, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(fn)(predictions, targets, mask), eager, rtol=1e-6)
  grad_fn = jax.grad(lambda p: fn(p, targets, mask))
  np.testing.assert_allclose(jax.jit(grad_fn)(predictions), grad_fn(predictions), rtol=1e-5, atol=1e-7)


def test_mask_excludes_pixels_from_value_and_gradient():
  keys = jax.random.split(jax.random.key(4), 2)
  targets = random_vectors(keys[0], (10,))
  predictions = random_vectors(keys[1], (10,))
  mask = jnp.arange(10) < 4
  value, gradient = jax.value_and_grad(lambda p: losses.angular_loss(p, targets, mask=mask))(predictions)
  np.testing.assert_allclose(value, losses.angular_loss(predictions[:4], targets[:4]), rtol=1e-6)
  np.testing.assert_array_equal(gradient[4:], 0.0)
  per_pixel = losses.angular_loss(predictions, targets, mask=mask, reduction="none")
  assert per_pixel.shape == (10,)
  np.testing.assert_array_equal(per_pixel[4:], 0.0)
  nothing = jnp.zeros(10, bool)
  empty, empty_gradient = jax.value_and_grad(lambda p: losses.angular_loss(p, targets, mask=nothing))(predictions)
  assert empty == 0.0 and not np.any(empty_gradient)


@pytest.mark.parametrize("predictions_shape, targets_shape, words", [
    ((4, 2), (4, 3), ["`predictions` (4, 2)", "`targets` (4, 3)"]),
    ((4, 3), (4, 3), ["`predictions` (4, 3)", "(..., 2)"]),
    ((2, 8, 8, 2), (2, 8, 7, 2), ["`predictions` (2, 8, 8, 2)", "`targets` (2, 8, 7, 2)"]),
    ((), (), ["`predictions`", "(..., 2)"]),
])
def test_bad_shapes_name_the_arguments(predictions_shape, targets_shape, words):
  with pytest.raises(AssertionError) as error:
    losses.angular_loss(jnp.ones(predictions_shape), jnp.ones(targets_shape))
  for word in words:
    assert word in str(error.value)


def test_bad_options_and_dtypes_raise_clear_errors():
  y = jnp.ones((3, 2))
  with pytest.raises(AssertionError, match="mask"):
    losses.angular_loss(y, y, mask=jnp.ones(4))
  with pytest.raises(TypeError, match="`predictions`"):
    losses.angular_loss(jnp.ones((3, 2), jnp.int32), y)
  with pytest.raises(TypeError, match="`targets`"):
    losses.angular_loss(y, jnp.ones((3, 2), jnp.int32))
  with pytest.raises(ValueError, match="reduction"):
    losses.angular_loss(y, y, reduction="avg")
  with pytest.raises(ValueError, match="delta"):
    losses.angular_loss(y, y, delta=-0.5)


def test_orientation_encoding_round_trip_and_axial_metrics():
  theta = jnp.linspace(0.0, jnp.pi, 50, endpoint=False)
  np.testing.assert_allclose(losses.decode_orientation(losses.encode_orientation(theta, axial=True), axial=True),
                             theta, atol=1e-5)
  # 10° and 175° are 15° apart as orientations (period 180°).
  truth = losses.encode_orientation(jnp.radians(jnp.array([10.0, 10.0])), axial=True)
  prediction = losses.encode_orientation(jnp.radians(jnp.array([175.0, 12.0])), axial=True)
  metrics = losses.orientation_metrics(prediction, truth, axial=True)
  np.testing.assert_allclose(metrics["mean_abs_error_deg"], (15.0 + 2.0) / 2, rtol=1e-4)
  np.testing.assert_allclose(metrics["within_5deg"], 0.5)
  np.testing.assert_allclose(metrics["within_10deg"], 0.5)


def reference_goe(predicted_deg, true_deg, mask=None, axial=False) -> float:
  """GOE from its definition, in float64: the sample standard deviation (ddof=1) of sin(θ̂ − θ) over the pixels.

  For orientations (`axial`) the difference θ̂ − θ is first wrapped to (−90°, 90°]; fewer than two
  included pixels give 0.
  """
  difference = np.radians(np.asarray(predicted_deg, np.float64) - np.asarray(true_deg, np.float64)).reshape(-1)
  if axial:
    difference = np.pi / 2 - np.mod(np.pi / 2 - difference, np.pi)
  sines = np.sin(difference)
  if mask is not None:
    sines = sines[np.asarray(mask, bool).reshape(-1)]
  return float(np.std(sines, ddof=1)) if sines.size >= 2 else 0.0


def orientation_goe(predicted_deg, true_deg, mask=None, axial=False):
  encode = lambda angle_deg: losses.encode_orientation(jnp.radians(jnp.asarray(angle_deg, jnp.float32)), axial=axial)
  metrics = losses.orientation_metrics(encode(predicted_deg), encode(true_deg), mask=mask, axial=axial)
  assert set(metrics) == {"mean_abs_error_deg", "within_5deg", "within_10deg", "goe"}
  return metrics["goe"]


def test_goe_of_directions_matches_float64_reference():
  rng = np.random.default_rng(0)
  true_deg = rng.uniform(-180.0, 180.0, (2, 5, 7))
  predicted_deg = true_deg + rng.normal(0.0, 40.0, true_deg.shape)
  np.testing.assert_allclose(orientation_goe(predicted_deg, true_deg), reference_goe(predicted_deg, true_deg),
                             rtol=1e-5)


def test_goe_of_orientations_wraps_the_difference_before_the_sine():
  # True 5°, predicted 175°: the orientations are 10° apart, θ̂ − θ wraps from 170° to −10°, as the others'.
  true_deg = np.array([5.0, 40.0, 90.0, 120.0, 60.0])
  predicted_deg = np.array([175.0, 30.0, 80.0, 110.0, 48.0])
  expected = reference_goe(predicted_deg, true_deg, axial=True)
  np.testing.assert_allclose(expected, np.std(np.sin(np.radians([-10.0, -10.0, -10.0, -10.0, -12.0])), ddof=1),
                             rtol=1e-12)
  # The sine of the raw difference, sin 170° = sin 10°, has the wrong sign: a spread ten times larger.
  assert np.std(np.sin(np.radians(predicted_deg - true_deg)), ddof=1) > 10 * expected
  np.testing.assert_allclose(orientation_goe(predicted_deg, true_deg, axial=True), expected, rtol=1e-5, atol=1e-7)
  # θ̂ and θ̂ + 180° are the same orientation.
  np.testing.assert_allclose(orientation_goe(predicted_deg + 180.0, true_deg, axial=True), expected, rtol=1e-5,
                             atol=1e-7)
  # Straddling the wrap the other way: true 170°, predicted 2° is +12°.
  np.testing.assert_allclose(orientation_goe([2.0, 50.0], [170.0, 50.0], axial=True),
                             np.sin(np.radians(12.0)) / np.sqrt(2.0), rtol=1e-5)


def test_goe_over_masked_pixels_matches_float64_reference():
  rng = np.random.default_rng(1)
  true_deg = rng.uniform(0.0, 180.0, (2, 3, 4))
  predicted_deg = np.mod(true_deg + rng.normal(0.0, 30.0, true_deg.shape), 180.0)
  mask = rng.random(true_deg.shape) < 0.6
  for axial in (True, False):
    expected = reference_goe(predicted_deg, true_deg, mask=mask, axial=axial)
    assert abs(expected - reference_goe(predicted_deg, true_deg, axial=axial)) > 1e-3  # The mask matters.
    np.testing.assert_allclose(orientation_goe(predicted_deg, true_deg, mask=mask, axial=axial), expected,
                               rtol=1e-5)


def test_goe_is_zero_for_fewer_than_two_included_pixels():
  true_deg, predicted_deg = np.array([5.0, 40.0, 100.0]), np.array([175.0, 60.0, 120.0])
  for axial in (True, False):
    assert orientation_goe(predicted_deg[:1], true_deg[:1], axial=axial) == 0.0
    assert orientation_goe(predicted_deg, true_deg, mask=np.array([False, True, False]), axial=axial) == 0.0
    assert orientation_goe(predicted_deg, true_deg, mask=np.zeros(3, bool), axial=axial) == 0.0
    # Two pixels are enough: |sin d₁ − sin d₂| / √2.
    two = np.array([True, False, True])
    expected = reference_goe(predicted_deg, true_deg, mask=two, axial=axial)
    assert expected > 0.1
    np.testing.assert_allclose(orientation_goe(predicted_deg, true_deg, mask=two, axial=axial), expected, rtol=1e-5)
