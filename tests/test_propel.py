"""PROPEL against a direct float64 reference, quadrature, and `torchpropel` itself."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from conftest import reference_package
import losses


def reference_terms(means, stds, target, sigma, weights=None):
  """T1 and T2 of one example, written from the formula with explicit i < j pairs; equal weights (the paper's)
  when `weights` (I,) is None."""
  means, stds, target = (np.asarray(a, np.float64) for a in (means, stds, target))
  num_components, dims = means.shape
  weights = np.full(num_components, 1 / num_components) if weights is None else np.asarray(weights, np.float64)

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
  t1 = 2 * sum(weights[i] * overlap(target, target_var, means[i], variances[i]) for i in range(num_components))
  t2 = self_overlap(target_var) + sum(w ** 2 * self_overlap(v) for w, v in zip(weights, variances))
  t2 += 2 * sum(weights[i] * weights[j] * overlap(means[i], variances[i], means[j], variances[j])
                for i, j in itertools.combinations(range(num_components), 2))
  return t1, t2


def reference_loss(pred, target, sigma, weights=None):
  """Per-example losses from `reference_terms`; `weights` (B, I) or None for equal weights."""
  pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
  dims = target.shape[-1]
  weights = [None] * len(pred) if weights is None else np.asarray(weights, np.float64)
  values = []
  for example, point, example_weights in zip(pred, target, weights):
    t1, t2 = reference_terms(example[:, :dims], example[:, dims:], point, sigma, example_weights)
    values.append(math.log10(t2) - math.log10(t1))
  return np.array(values)


def random_problem(key, batch, components, dims, spread=0.5, dtype=jnp.float64):
  """Means and targets ~ N(0, spread²), standard deviations in [0.3, 1]; float64 needs x64 mode."""
  mean_key, std_key, target_key = jax.random.split(key, 3)
  means = spread * jax.random.normal(mean_key, (batch, components, dims), dtype)
  stds = jax.random.uniform(std_key, (batch, components, dims), dtype, 0.3, 1.0)
  target = spread * jax.random.normal(target_key, (batch, dims), dtype)
  return jnp.concatenate([means, stds], axis=-1), target


def random_log_weights(key, batch, components, dtype=jnp.float64):
  """Normalised log weights from N(0, 1.5²) logits: some components get most of the weight, some little."""
  return jax.nn.log_softmax(1.5 * jax.random.normal(key, (batch, components), dtype), axis=-1)


# Every D and every I (even and odd, so with and without the k = I/2 pairs) at least once.
@pytest.mark.parametrize("weighted", [False, True], ids=["equal weights", "weighted"])
@pytest.mark.parametrize("dims, components", [(1, 1), (1, 8), (2, 5), (3, 2), (8, 8), (17, 5)])
def test_matches_direct_float64_reference(dims, components, weighted):
  with jax.enable_x64(True):
    pred, target = random_problem(jax.random.key(dims * 10 + components), 4, components, dims)
    log_weights = random_log_weights(jax.random.key(dims), 4, components) if weighted else None
    sigma = 0.4
    expected = reference_loss(pred, target, sigma, None if log_weights is None else np.exp(log_weights))
    loss = functools.partial(losses.propel_loss, pred, target, sigma=sigma, log_weights=log_weights)
    actual = loss(reduction="none")
    assert actual.shape == (4,) and actual.dtype == jnp.float64
    np.testing.assert_allclose(actual, expected, rtol=1e-6)
    np.testing.assert_allclose(loss(), expected.mean(), rtol=1e-6)
    np.testing.assert_allclose(loss(reduction="sum"), expected.sum(), rtol=1e-6)


@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-6), (jnp.float64, 1e-13)])
@pytest.mark.parametrize("components", [1, 4, 5])
def test_equal_log_weights_are_propel(components, dtype, rtol):
  """log(1/I) for every component reproduces the unweighted loss and its gradients to rounding."""
  with jax.enable_x64(dtype == jnp.float64):
    pred, target = random_problem(jax.random.key(40 + components), 6, components, 3, dtype=dtype)
    equal = jnp.full((6, components), -math.log(components), dtype)
    loss = lambda p, t, log_weights: losses.propel_loss(p, t, sigma=0.3, log_weights=log_weights)
    value, gradients = jax.value_and_grad(loss, argnums=(0, 1))(pred, target, None)
    weighted_value, weighted_gradients = jax.value_and_grad(loss, argnums=(0, 1))(pred, target, equal)
    np.testing.assert_allclose(weighted_value, value, rtol=rtol)
    for weighted_gradient, gradient in zip(weighted_gradients, gradients):
      np.testing.assert_allclose(weighted_gradient, gradient, rtol=rtol, atol=rtol * np.abs(gradient).max())
    np.testing.assert_allclose(value, reference_loss(pred, target, 0.3).mean(), rtol=max(rtol, 1e-6))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_a_zero_weight_removes_its_component(dtype):
  """log w = −inf: the loss is that of the mixture of the others, whose gradients it keeps, and the removed
  component's parameters and log weight get exactly zero gradients."""
  with jax.enable_x64(dtype == jnp.float64):
    pred, target = random_problem(jax.random.key(7), 5, 4, 2, dtype=dtype)
    others = jnp.array([0, 1, 3])
    kept_log_weights = random_log_weights(jax.random.key(8), 5, 3, dtype)
    log_weights = jnp.full((5, 4), -jnp.inf, dtype).at[:, others].set(kept_log_weights)
    loss = jax.jit(jax.value_and_grad(lambda p, t, w: losses.propel_loss(p, t, log_weights=w), argnums=(0, 1, 2)))
    value, (grad_pred, grad_target, grad_log_weights) = loss(pred, target, log_weights)
    kept_value, (kept_grad_pred, kept_grad_target, kept_grad_log_weights) = loss(
        pred[:, others], target, kept_log_weights)
    rtol = 1e-5 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(value, kept_value, rtol=rtol)
    np.testing.assert_allclose(grad_pred[:, others], kept_grad_pred, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(grad_target, kept_grad_target, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(grad_log_weights[:, others], kept_grad_log_weights, rtol=rtol, atol=rtol)
    np.testing.assert_array_equal(grad_pred[:, 2], 0.0)
    np.testing.assert_array_equal(grad_log_weights[:, 2], 0.0)
    # Equal weights over the others are PROPEL of the others.
    equal_over_others = jnp.full((5, 4), -math.log(3), dtype).at[:, 2].set(-jnp.inf)
    np.testing.assert_allclose(losses.propel_loss(pred, target, log_weights=equal_over_others),
                               losses.propel_loss(pred[:, others], target), rtol=rtol)
    # All the weight on one component is I = 1.
    one_hot = jnp.full((5, 4), -jnp.inf, dtype).at[:, 1].set(0.0)
    value, grad_log_weights = jax.value_and_grad(
        lambda w: losses.propel_loss(pred, target, log_weights=w))(one_hot)
    np.testing.assert_allclose(value, losses.propel_loss(pred[:, 1:2], target), rtol=rtol)
    assert np.isfinite(grad_log_weights).all()


def gaussian_density(points, mean, std):
  return np.prod(np.exp(-0.5 * ((points - mean) / std) ** 2) / (math.sqrt(2 * math.pi) * std), axis=-1)


@pytest.mark.parametrize("weights", [None, (0.6, 0.3, 0.1)], ids=["equal weights", "weighted"])
@pytest.mark.parametrize("dims", [1, 2])
def test_terms_match_numerical_quadrature(dims, weights):
  """T1 = 2∫p_gt p_model and T2 = ∫p_gt² + p_model², for p_model = Σᵢ wᵢ Pᵢ, on a grid; so is the loss."""
  rng = np.random.default_rng(dims)
  means, stds = rng.normal(0, 0.5, (3, dims)), rng.uniform(0.3, 0.8, (3, dims))
  target, sigma = rng.normal(0, 0.5, dims), 0.35
  axis = np.linspace(-6, 6, 1201 if dims == 1 else 401)
  points = np.stack(np.meshgrid(*[axis] * dims, indexing="ij"), axis=-1)
  cell = (axis[1] - axis[0]) ** dims
  p_target = gaussian_density(points, target, sigma)
  mixture_weights = np.full(3, 1 / 3) if weights is None else np.array(weights)
  p_model = sum(w * gaussian_density(points, m, s) for w, m, s in zip(mixture_weights, means, stds))
  t1, t2 = reference_terms(means, stds, target, sigma, weights)
  np.testing.assert_allclose(t1, 2 * np.sum(p_target * p_model) * cell, rtol=1e-6)
  np.testing.assert_allclose(t2, np.sum(p_target ** 2 + p_model ** 2) * cell, rtol=1e-6)
  np.testing.assert_allclose(t2 - t1, np.sum((p_target - p_model) ** 2) * cell, rtol=1e-6, atol=1e-12)
  with jax.enable_x64(True):
    log_weights = None if weights is None else np.log(mixture_weights)[None]
    value = losses.propel_loss(np.concatenate([means, stds], axis=-1)[None], target[None], sigma=sigma,
                               log_weights=log_weights)
  np.testing.assert_allclose(value, math.log10(t2 / t1), rtol=1e-9)


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


# Jitted, so that the perturbed log weights of the finite differences are not checked for normalisation: the
# formula, and so its gradient, is defined for any weights.
weighted_propel = jax.jit(lambda p, t, w: losses.propel_loss(p, t, sigma=0.3, log_weights=w))


@pytest.mark.parametrize("components", [2, 5])
def test_gradients_match_finite_differences_for_every_pairing_of_components(components):
  """Even I pairs (i, i + I/2) once, odd I never; the custom JVP must match finite differences in float64
  either way, for the target and the log weights too."""
  with jax.enable_x64(True):
    fn = lambda p, t: losses.propel_loss(p, t, sigma=0.3)
    pred, target = random_problem(jax.random.key(20 + components), 2, components, 2)
    check_grads(fn, (pred, target), order=1, modes=("fwd", "rev"), eps=1e-6, atol=1e-6, rtol=1e-6)
    log_weights = random_log_weights(jax.random.key(30 + components), 2, components)
    check_grads(weighted_propel, (pred, target, log_weights), order=1, modes=("fwd", "rev"), eps=1e-6,
                atol=1e-6, rtol=1e-6)


def test_second_derivatives_and_gradients_in_more_than_64_dimensions():
  """I = 4 has pairs of both weights; above 64 dimensions the product of q factors is split."""
  with jax.enable_x64(True):
    fn = lambda p, t: losses.propel_loss(p, t, sigma=0.3)
    pred, target = random_problem(jax.random.key(24), 2, 4, 2)
    check_grads(fn, (pred, target), order=2, modes=("rev",), eps=1e-5, atol=1e-5, rtol=1e-5)
    log_weights = random_log_weights(jax.random.key(25), 2, 4)
    check_grads(weighted_propel, (pred, target, log_weights), order=2, modes=("rev",), eps=1e-5, atol=1e-5,
                rtol=1e-5)
    pred, target = random_problem(jax.random.key(34), 2, 4, 70, spread=0.05)
    check_grads(fn, (pred, target), order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(fn(pred, target), reference_loss(pred, target, 0.3).mean(), rtol=1e-9)


@pytest.mark.parametrize("weighted", [False, True], ids=["equal weights", "weighted"])
@pytest.mark.parametrize("name, offset, mean_scale, std, dims", [
    ("target 3 units away", 3.0, 0.0, 0.1, 3),
    ("target 100 units away", 100.0, 0.0, 0.1, 3),
    ("128 dimensions", 0.5, 0.0, 0.1, 128),
    ("std 1e-9", 0.01, 0.0, 1e-9, 2),
    ("means around 1e3", 0.05, 1e3, 0.1, 3),
    ("means around 1e4", 0.05, 1e4, 0.1, 3),
])
def test_float32_value_and_gradient_stay_finite_and_right(name, offset, mean_scale, std, dims, weighted):
  """Each case is compared with the same float32 inputs evaluated in float64."""
  key_means, key_target, key_weights = jax.random.split(jax.random.key(11), 3)
  means = mean_scale + 0.05 * jax.random.normal(key_means, (4, 3, dims))
  pred = jnp.concatenate([means, jnp.full((4, 3, dims), std)], axis=-1)
  target = mean_scale + offset + 0.05 * jax.random.normal(key_target, (4, dims))
  log_weights = random_log_weights(key_weights, 4, 3, jnp.float32) if weighted else None
  loss = lambda p, t, w: losses.propel_loss(p, t, sigma=0.1, log_weights=w)
  value, gradients = jax.value_and_grad(loss, argnums=(0, 1, 2) if weighted else (0, 1))(pred, target, log_weights)
  assert np.isfinite(value) and all(np.isfinite(g).all() for g in gradients), name
  with jax.enable_x64(True):
    expected = loss(pred.astype(jnp.float64), target.astype(jnp.float64),
                    None if log_weights is None else log_weights.astype(jnp.float64))
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


@pytest.mark.parametrize("weighted", [False, True], ids=["equal weights", "weighted"])
def test_jit_vmap_and_eager_agree(weighted):
  pred, target = random_problem(jax.random.key(5), 8, 4, 2, dtype=jnp.float32)
  log_weights = random_log_weights(jax.random.key(6), 8, 4, jnp.float32) if weighted else None
  eager = losses.propel_loss(pred, target, log_weights=log_weights, reduction="none")
  jitted = jax.jit(lambda p, t, w: losses.propel_loss(p, t, log_weights=w, reduction="none"))(pred, target,
                                                                                             log_weights)
  vmapped = jax.vmap(lambda p, t, w: losses.propel_loss(p[None], t[None], log_weights=None if w is None else w[None]))(
      pred, target, log_weights)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)
  np.testing.assert_allclose(vmapped, eager, rtol=1e-6)
  if weighted:  # Gradients with respect to the log weights batch too.
    gradient = jax.grad(lambda w: losses.propel_loss(pred, target, log_weights=w, reduction="sum"))(log_weights)
    vmapped = jax.vmap(jax.grad(lambda p, t, w: losses.propel_loss(p[None], t[None], log_weights=w[None]),
                                argnums=2))(pred, target, log_weights)
    np.testing.assert_allclose(vmapped, gradient, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("predictions_shape, targets_shape, log_weights_shape, message", [
    ((4, 3, 5), (4, 2), None, "2D"),
    ((4, 3), (4, 2), None, "(B, I, 2D)"),
    ((4, 3, 4), (4, 3), None, "`targets`"),
    ((4, 3, 4), (5, 2), None, "`targets`"),
    ((4, 3, 4), (4, 2), (4, 2), "`log_weights` (4, 2) must have shape (B, I) = (4, 3)"),
    ((4, 3, 4), (4, 2), (3,), "`log_weights` (3,) must have shape (B, I) = (4, 3)"),
    ((4, 3, 4), (4, 2), (4, 3, 1), "`log_weights` (4, 3, 1)"),
])
def test_bad_shapes_name_the_argument(predictions_shape, targets_shape, log_weights_shape, message):
  log_weights = None if log_weights_shape is None else jnp.full(log_weights_shape, -math.log(3))
  for loss in (losses.propel_loss, jax.jit(losses.propel_loss)):  # At trace time, inside jit too.
    with pytest.raises((AssertionError, ValueError), match=message.replace("(", r"\(").replace(")", r"\)")):
      loss(jnp.ones(predictions_shape), jnp.ones(targets_shape), log_weights=log_weights)


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
  with pytest.raises(TypeError, match="`log_weights`"):
    losses.propel_loss(pred, target, log_weights=jnp.zeros((2, 1), jnp.int32))


@pytest.mark.parametrize("log_weights", [
    np.zeros((2, 3)),  # Logits, not log weights: the weights sum to 3.
    np.log([[0.5, 0.3, 0.1], [0.5, 0.3, 0.2]]),  # The first example's sum to 0.9.
    np.full((2, 3), -np.inf),
    np.full((2, 3), np.nan),
], ids=["logits", "sum 0.9", "all zero", "nan"])
def test_log_weights_must_be_normalised_where_the_host_holds_them(log_weights):
  """NumPy and CPU arrays are checked; inside jit they cannot be, and pass as documented."""
  pred, target = jnp.ones((2, 3, 4)), jnp.ones((2, 2))
  for held_by_host in (log_weights, log_weights.astype(np.float32), jnp.asarray(log_weights, jnp.float32)):
    with pytest.raises(ValueError, match="`log_weights` must be normalised log mixture weights"):
      losses.propel_loss(pred, target, log_weights=held_by_host)
  jax.jit(lambda w: losses.propel_loss(pred, target, log_weights=w))(log_weights.astype(np.float32))


def test_normalised_log_weights_pass_the_check():
  """Rounding of float32 (also cast to float64) passes, and so do all the weight on one component and no examples."""
  pred, target = jnp.ones((2, 3, 4)), jnp.ones((2, 2))
  float32_weights = jax.nn.log_softmax(jnp.array([[0.0, 3.0, -40.0], [1e3, 0.0, 1.0]]))
  losses.propel_loss(pred, target, log_weights=float32_weights)
  losses.propel_loss(pred, target, log_weights=np.asarray(float32_weights, np.float64))
  losses.propel_loss(pred, target, log_weights=np.array([[-np.inf, 0.0, -np.inf], [0.0, -np.inf, -np.inf]]))
  losses.propel_loss(pred[:0], target[:0], log_weights=np.zeros((0, 3)))  # No examples, nothing to check.


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
