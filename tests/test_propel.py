"""PROPEL against a direct float64 reference, quadrature, and `torchpropel` itself."""

import itertools
import math

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from conftest import reference_package
import losses


def reference_terms(means, stds, target, sigma):
  """T1 and T2 of one example, written from the paper's formula with explicit i < j pairs."""
  means, stds, target = (np.asarray(a, np.float64) for a in (means, stds, target))
  num_components, dims = means.shape

  def overlap(mean_a, var_a, mean_b, var_b):
    total = 1.0
    for d in range(dims):
      variance = var_a[d] + var_b[d]
      total *= math.exp(-(mean_a[d] - mean_b[d]) ** 2 / (2 * variance)) / math.sqrt(2 * math.pi * variance)
    return total

  def self_overlap(var):
    return float(np.prod([1 / (2 * math.sqrt(math.pi * v)) for v in var]))

  target_var = np.full(dims, sigma ** 2)
  variances = stds ** 2
  t1 = 2 / num_components * sum(
      overlap(target, target_var, means[i], variances[i]) for i in range(num_components))
  t2 = self_overlap(target_var) + sum(self_overlap(v) for v in variances) / num_components ** 2
  t2 += 2 / num_components ** 2 * sum(
      overlap(means[i], variances[i], means[j], variances[j])
      for i, j in itertools.combinations(range(num_components), 2))
  return t1, t2


def reference_loss(pred, target, sigma):
  pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
  dims = target.shape[-1]
  values = []
  for example, point in zip(pred, target):
    t1, t2 = reference_terms(example[:, :dims], example[:, dims:], point, sigma)
    values.append(math.log10(t2) - math.log10(t1))
  return np.array(values)


def random_problem(key, batch, components, dims, spread=0.5, dtype=jnp.float64):
  """Means and targets ~ N(0, spread²), standard deviations in [0.3, 1]; float64 needs x64 mode."""
  mean_key, std_key, target_key = jax.random.split(key, 3)
  means = spread * jax.random.normal(mean_key, (batch, components, dims), dtype)
  stds = jax.random.uniform(std_key, (batch, components, dims), dtype, 0.3, 1.0)
  target = spread * jax.random.normal(target_key, (batch, dims), dtype)
  return jnp.concatenate([means, stds], axis=-1), target


# Every D and every I (even and odd, so with and without the k = I/2 pairs) at least once.
@pytest.mark.parametrize("dims, components", [(1, 1), (1, 8), (2, 5), (3, 2), (8, 8), (17, 5)])
def test_matches_direct_float64_reference(dims, components):
  with jax.enable_x64(True):
    pred, target = random_problem(jax.random.key(dims * 10 + components), 4, components, dims)
    sigma = 0.4
    expected = reference_loss(pred, target, sigma)
    actual = losses.propel_loss(pred, target, sigma=sigma, reduction="none")
    assert actual.shape == (4,) and actual.dtype == jnp.float64
    np.testing.assert_allclose(actual, expected, rtol=1e-6)
    np.testing.assert_allclose(losses.propel_loss(pred, target, sigma=sigma), expected.mean(), rtol=1e-6)
    np.testing.assert_allclose(losses.propel_loss(pred, target, sigma=sigma, reduction="sum"), expected.sum(),
                               rtol=1e-6)


def gaussian_density(points, mean, std):
  return np.prod(np.exp(-0.5 * ((points - mean) / std) ** 2) / (math.sqrt(2 * math.pi) * std), axis=-1)


@pytest.mark.parametrize("dims", [1, 2])
def test_terms_match_numerical_quadrature(dims):
  rng = np.random.default_rng(dims)
  means, stds = rng.normal(0, 0.5, (3, dims)), rng.uniform(0.3, 0.8, (3, dims))
  target, sigma = rng.normal(0, 0.5, dims), 0.35
  axis = np.linspace(-6, 6, 1201 if dims == 1 else 401)
  points = np.stack(np.meshgrid(*[axis] * dims, indexing="ij"), axis=-1)
  cell = (axis[1] - axis[0]) ** dims
  p_target = gaussian_density(points, target, sigma)
  p_model = np.mean([gaussian_density(points, m, s) for m, s in zip(means, stds)], axis=0)
  t1, t2 = reference_terms(means, stds, target, sigma)
  np.testing.assert_allclose(t1, 2 * np.sum(p_target * p_model) * cell, rtol=1e-6)
  np.testing.assert_allclose(t2, np.sum(p_target ** 2 + p_model ** 2) * cell, rtol=1e-6)
  np.testing.assert_allclose(t2 - t1, np.sum((p_target - p_model) ** 2) * cell, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("dims, components", [(1, 1), (3, 6), (128, 4)])
def test_perfect_prediction_is_zero_and_losses_are_never_negative(dims, components):
  sigma = 0.2
  target = jax.random.normal(jax.random.key(0), (5, dims))
  perfect = jnp.concatenate(
      [jnp.repeat(target[:, None], components, axis=1), jnp.full((5, components, dims), sigma)], axis=-1)
  np.testing.assert_allclose(losses.propel_loss(perfect, target, sigma=sigma, reduction="none"), 0.0, atol=1e-6)
  for seed in range(5):
    pred, target = random_problem(jax.random.key(seed), 16, components, dims, spread=0.1 * seed, dtype=jnp.float32)
    assert (losses.propel_loss(pred, target, sigma=sigma, reduction="none") >= 0).all()


def test_permuting_components_and_translating_everything_change_nothing():
  pred, target = random_problem(jax.random.key(3), 6, 5, 3, dtype=jnp.float32)
  expected = losses.propel_loss(pred, target, reduction="none")
  permuted = pred[:, jnp.array([3, 0, 4, 1, 2])]
  np.testing.assert_allclose(losses.propel_loss(permuted, target, reduction="none"), expected, rtol=1e-5)
  shift = jnp.array([7.0, -2.0, 0.5])
  shifted = pred.at[..., :3].add(shift)
  np.testing.assert_allclose(losses.propel_loss(shifted, target + shift, reduction="none"), expected,
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("components", [2, 5])
def test_gradients_match_finite_differences_for_every_pairing_of_components(components):
  """Even I pairs (i, i + I/2) once, odd I never; the custom JVP must match finite differences in float64
  either way, for the target too."""
  with jax.enable_x64(True):
    fn = lambda p, t: losses.propel_loss(p, t, sigma=0.3)
    pred, target = random_problem(jax.random.key(20 + components), 2, components, 2)
    check_grads(fn, (pred, target), order=1, modes=("fwd", "rev"), eps=1e-6, atol=1e-6, rtol=1e-6)


def test_second_derivatives_and_gradients_in_more_than_64_dimensions():
  """I = 4 has pairs of both weights; above 64 dimensions the product of q factors is split."""
  with jax.enable_x64(True):
    fn = lambda p, t: losses.propel_loss(p, t, sigma=0.3)
    pred, target = random_problem(jax.random.key(24), 2, 4, 2)
    check_grads(fn, (pred, target), order=2, modes=("rev",), eps=1e-5, atol=1e-5, rtol=1e-5)
    pred, target = random_problem(jax.random.key(34), 2, 4, 70, spread=0.05)
    check_grads(fn, (pred, target), order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(fn(pred, target), reference_loss(pred, target, 0.3).mean(), rtol=1e-9)


@pytest.mark.parametrize("name, offset, mean_scale, std, dims", [
    ("target 3 units away", 3.0, 0.0, 0.1, 3),
    ("target 100 units away", 100.0, 0.0, 0.1, 3),
    ("128 dimensions", 0.5, 0.0, 0.1, 128),
    ("std 1e-9", 0.01, 0.0, 1e-9, 2),
    ("means around 1e3", 0.05, 1e3, 0.1, 3),
    ("means around 1e4", 0.05, 1e4, 0.1, 3),
])
def test_float32_value_and_gradient_stay_finite_and_right(name, offset, mean_scale, std, dims):
  """Each case is compared with the same float32 inputs evaluated in float64."""
  key_means, key_target = jax.random.split(jax.random.key(11))
  means = mean_scale + 0.05 * jax.random.normal(key_means, (4, 3, dims))
  pred = jnp.concatenate([means, jnp.full((4, 3, dims), std)], axis=-1)
  target = mean_scale + offset + 0.05 * jax.random.normal(key_target, (4, dims))
  value, gradient = jax.value_and_grad(losses.propel_loss)(pred, target, sigma=0.1)
  assert np.isfinite(value) and np.isfinite(gradient).all(), name
  with jax.enable_x64(True):
    expected = losses.propel_loss(pred.astype(jnp.float64), target.astype(jnp.float64), sigma=0.1)
  np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_standard_deviations_whose_squares_underflow_are_used_as_given():
  """Below ~1e-19 σ² underflows float32; the value (not the gradient, which overflows) must not notice."""
  key_means, key_target = jax.random.split(jax.random.key(12))
  means = 0.05 * jax.random.normal(key_means, (4, 3, 2))
  target = 0.01 + 0.05 * jax.random.normal(key_target, (4, 2))
  for std in (1e-20, 1e-30):
    pred = jnp.concatenate([means, jnp.full((4, 3, 2), std)], axis=-1)
    value = losses.propel_loss(pred, target, sigma=0.1, reduction="none")
    with jax.enable_x64(True):
      expected = losses.propel_loss(pred.astype(jnp.float64), target.astype(jnp.float64), sigma=0.1, reduction="none")
    assert np.isfinite(value).all()
    np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_mixture_helpers():
  raw = jnp.array([[[0.5, -1.0, -30.0, 2.0], [1.5, 0.0, 0.0, 0.0]]])
  pred = losses.constrain_mixture(raw, min_std=1e-3)
  means, stds = losses.split_mixture(pred)
  np.testing.assert_array_equal(means, raw[..., :2])
  assert (stds >= 1e-3).all()
  np.testing.assert_allclose(stds[0, 1], math.log(2.0) + 1e-3, rtol=1e-6)
  np.testing.assert_allclose(losses.mixture_mean(pred), [[1.0, -0.5]])
  np.testing.assert_allclose(losses.mixture_mean(pred, log_weights=jnp.array([[0.0, -jnp.inf]])), [[0.5, -1.0]])
  # The log density is that of the equal mixture, computed directly.
  point = jnp.array([[0.7, -0.2]])
  direct = np.mean([gaussian_density(np.asarray(point[0]), np.asarray(m), np.asarray(s))
                    for m, s in zip(means[0], stds[0])])
  np.testing.assert_allclose(losses.mixture_log_density(pred, point), [math.log(direct)], rtol=1e-5)
  log_overlap = losses.log_gaussian_overlap(jnp.zeros(2), jnp.ones(2), jnp.ones(2), jnp.ones(2))
  np.testing.assert_allclose(log_overlap, 2 * (-0.5 * math.log(4 * math.pi) - 0.25), rtol=1e-6)


def test_jit_vmap_and_eager_agree():
  pred, target = random_problem(jax.random.key(5), 8, 4, 2, dtype=jnp.float32)
  eager = losses.propel_loss(pred, target, reduction="none")
  jitted = jax.jit(lambda p, t: losses.propel_loss(p, t, reduction="none"))(pred, target)
  vmapped = jax.vmap(lambda p, t: losses.propel_loss(p[None], t[None]))(pred, target)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)
  np.testing.assert_allclose(vmapped, eager, rtol=1e-6)


@pytest.mark.parametrize("predictions_shape, targets_shape, message", [
    ((4, 3, 5), (4, 2), "2D"),
    ((4, 3), (4, 2), "(B, I, 2D)"),
    ((4, 3, 4), (4, 3), "`targets`"),
    ((4, 3, 4), (5, 2), "`targets`"),
])
def test_bad_shapes_name_the_argument(predictions_shape, targets_shape, message):
  with pytest.raises((AssertionError, ValueError), match=message.replace("(", r"\(").replace(")", r"\)")):
    losses.propel_loss(jnp.ones(predictions_shape), jnp.ones(targets_shape))


def test_bad_options_and_dtypes():
  pred, target = jnp.ones((2, 1, 2)), jnp.ones((2, 1))
  with pytest.raises(ValueError, match="sigma"):
    losses.propel_loss(pred, target, sigma=0.0)
  with pytest.raises(ValueError, match="reduction"):
    losses.propel_loss(pred, target, reduction="max")
  with pytest.raises(TypeError, match="`targets`"):
    losses.propel_loss(pred, jnp.ones((2, 1), jnp.int32))
  with pytest.raises(TypeError, match="`predictions`"):
    losses.propel_loss(jnp.ones((2, 1, 2), jnp.int32), target)


@pytest.mark.reference
def test_matches_torchpropel():
  torch = reference_package("torch")
  torchpropel = reference_package("torchpropel")
  torch.set_default_dtype(torch.float64)
  with jax.enable_x64(True):
    for dims in (1, 3):
      pred, target = random_problem(jax.random.key(dims), 5, 4, dims)
      sigma = 0.3
      ours = np.asarray(losses.propel_loss(pred, target, sigma=sigma, reduction="none"))
      pred_t, target_t = torch.tensor(np.asarray(pred)), torch.tensor(np.asarray(target))
      if dims == 1:
        theirs = torchpropel.PROPEL(sigma=sigma, reduction="none")(pred_t, target_t)
        np.testing.assert_allclose(ours, theirs.numpy().reshape(-1), rtol=1e-9)
      # For D > 1 its module evaluates H(P_gt) in one dimension; `getloss` with a
      # ground-truth variance of the right dimension is the PROPEL distance.
      variance = torch.full((1, 1, dims), sigma ** 2)
      theirs, _, _ = torchpropel.getloss(target_t, variance, pred_t[..., :dims], pred_t[..., dims:] ** 2)
      np.testing.assert_allclose(ours, theirs.numpy().reshape(-1), rtol=1e-9)
