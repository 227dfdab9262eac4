"""Loss-level scalarizations: each method's defining property, the name table, and TorchJD 0.18 / LibMTL cross-checks.

The cross-checks (marked `reference`) feed TorchJD's scalarizers and ours the same float64 losses and compare the
totals, the gradients with respect to the losses (our reported weights) and to the trainable parameters, and for
the stateful methods (DWA, FAMO) the whole sequence of weights. LibMTL 1.1.5 has EW (our `sum`), UW and IMTL
among the methods not already checked in tests/test_multitask.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import libmtl_weighting
from conftest import reference_package
import losses
from losses import scalarization

LOSSES = np.array([0.7, 2.0, 1.3])


def _total_and_weights(weighting, task_losses, params=None, state=None):
  init_params, init_state = weighting.init()
  params = init_params if params is None else params
  state = init_state if state is None else state
  total, weights, _ = weighting.combine(params, state, jnp.asarray(task_losses))
  return np.asarray(total), np.asarray(weights)


# ---------------------------------------------------------------------------------------------------------------
# Defining properties.


def test_linear_scalarizations():
  total, weights = _total_and_weights(scalarization.sum(), LOSSES)
  np.testing.assert_allclose([total, *weights], [LOSSES.sum(), 1, 1, 1], rtol=1e-6)
  total, weights = _total_and_weights(scalarization.mean(), LOSSES)
  np.testing.assert_allclose([total, *weights], [LOSSES.mean(), 1 / 3, 1 / 3, 1 / 3], rtol=1e-6)
  preference = np.array([0.2, -1.0, 3.0])
  total, weights = _total_and_weights(scalarization.constant(weights=preference), LOSSES)
  np.testing.assert_allclose(total, preference @ LOSSES, rtol=1e-6)
  np.testing.assert_allclose(weights, preference, rtol=1e-6)


def test_stch_is_a_smooth_upper_bound_of_the_weighted_max_that_tightens_as_mu_falls():
  preference, reference = np.array([0.5, 0.2, 0.3]), np.array([0.1, 0.0, 0.4])
  weighted = preference * (LOSSES - reference)
  gaps = []
  for mu in (1.0, 0.1, 0.01, 1e-4):
    total, weights = _total_and_weights(scalarization.stch(mu=mu, weights=preference, reference=reference), LOSSES)
    assert weighted.max() - 1e-6 <= total <= weighted.max() + mu * math.log(3) + 1e-6
    softmax = np.exp(weighted / mu - (weighted / mu).max())
    np.testing.assert_allclose(weights, preference * softmax / softmax.sum(), rtol=1e-5, atol=1e-7)
    gaps.append(total - weighted.max())
  assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-5
  # Shifted before the division by μ: finite for huge losses and a tiny μ. Default λ = 1/N, z* = 0.
  total, weights = _total_and_weights(scalarization.stch(mu=1e-6), np.array([1e30, 2e30], np.float32))
  np.testing.assert_allclose(total, 1e30, rtol=1e-6)
  np.testing.assert_allclose(weights, [0, 0.5])


def test_pbi_decomposes_the_losses_along_and_across_the_preference():
  preference, reference = np.array([1.0, 2.0, 2.0]), np.array([0.1, 0.2, 0.0])
  shifted, direction = LOSSES - reference, preference / 3.0
  along = shifted @ direction
  across = shifted - along * direction
  np.testing.assert_allclose(across @ direction, 0.0, atol=1e-12)
  for theta in (0.0, 5.0):
    total, weights = _total_and_weights(
        scalarization.pbi(theta=theta, weights=preference, reference=reference), LOSSES)
    np.testing.assert_allclose(total, along + theta * np.linalg.norm(across), rtol=1e-5)
    np.testing.assert_allclose(weights, direction + theta * across / np.linalg.norm(across), rtol=1e-5, atol=1e-6)
  # On the preference line d₂ = 1e-6 and the gradient is ŵ, finite (not NaN).
  total, weights = _total_and_weights(scalarization.pbi(theta=5.0, weights=preference), 2 * preference)
  np.testing.assert_allclose(total, 6.0 + 5e-6, rtol=1e-6)
  np.testing.assert_allclose(weights, direction, rtol=1e-6)


def test_cosmos_subtracts_lambda_times_the_cosine_to_the_preference():
  preference = np.array([0.5, 0.3, 0.2])
  cosine = preference @ LOSSES / (np.linalg.norm(preference) * np.linalg.norm(LOSSES))
  for lambda_ in (0.0, 2.0):
    weighting = scalarization.cosmos(lambda_=lambda_, weights=preference)
    total, weights = _total_and_weights(weighting, LOSSES)
    np.testing.assert_allclose(total, preference @ LOSSES - lambda_ * cosine, rtol=1e-6)
    unit = LOSSES / np.linalg.norm(LOSSES)
    cosine_gradient = (preference / np.linalg.norm(preference) - cosine * unit) / np.linalg.norm(LOSSES)
    np.testing.assert_allclose(weights, preference - lambda_ * cosine_gradient, rtol=1e-5)
  # The cosine term pulls the losses towards the ray of r: along it, its gradient vanishes.
  _, weights = _total_and_weights(scalarization.cosmos(lambda_=2.0, weights=preference), 4 * preference)
  np.testing.assert_allclose(weights, preference, rtol=1e-5)


def test_imtl_l_equalises_the_scaled_losses_and_is_twice_uw_at_the_opposite_scales():
  weighting = scalarization.imtl_l(num_tasks=3)
  params, state = weighting.init()
  task_losses = jnp.asarray([0.05, 2.0, 40.0])
  step = jax.jit(jax.grad(lambda p: weighting.combine(p, state, task_losses)[0]))
  for _ in range(20):  # Newton's method on ∂/∂sᵢ = e^{sᵢ}Lᵢ − 1, whose derivative is e^{sᵢ}Lᵢ = ∂/∂sᵢ + 1.
    params = jax.tree.map(lambda s, g: s - g / (g + 1), params, step(params))
  np.testing.assert_allclose(jnp.exp(params.log_scales) * task_losses, 1.0, rtol=1e-4)
  _, weights = _total_and_weights(weighting, task_losses, params)
  np.testing.assert_allclose(weights, 1 / task_losses, rtol=1e-4)  # Each task weighted by 1/Lᵢ.

  scales = scalarization.IMTLLParams(jnp.asarray([0.3, -0.2, 1.1]))
  uw = scalarization.uw(num_tasks=3)
  imtl_total, _ = _total_and_weights(weighting, LOSSES, scales)
  uw_total, _ = _total_and_weights(uw, LOSSES, scalarization.UWParams(-scales.log_scales))
  np.testing.assert_allclose(imtl_total, 2 * uw_total, rtol=1e-6)


def test_trainable_alpha_is_balanced_weights_with_one_logit():
  alpha_weighting, weights_weighting = scalarization.trainable_alpha(), scalarization.balanced_weights(num_tasks=2)
  task_losses = jnp.asarray([2.0, 0.5])
  logit = jnp.asarray(0.7)
  alpha_loss = lambda z: alpha_weighting.combine(scalarization.TrainableAlphaParams(z), scalarization.Empty(),
                                                 task_losses)[0]
  weights_loss = lambda z: weights_weighting.combine(scalarization.BalancedWeightsParams(z), scalarization.Empty(),
                                                     task_losses)[0]
  logits = jnp.stack([logit, 0.0])
  np.testing.assert_allclose(alpha_loss(logit), weights_loss(logits), rtol=1e-6)
  alpha = jax.nn.sigmoid(logit)
  np.testing.assert_allclose(alpha_loss(logit), losses.trainable_alpha_loss(alpha, 2.0, 0.5), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(alpha_loss)(logit), jax.grad(weights_loss)(logits)[0], rtol=1e-6)
  np.testing.assert_allclose(jax.grad(alpha_loss)(logit), np.tanh(0.5 * np.log(alpha * 2.0 / ((1 - alpha) * 0.5))),
                             rtol=1e-5)


def test_famo_lower_bounds_shift_the_losses():
  weighting = scalarization.famo(num_tasks=2, min_losses=jnp.asarray([1.0, 0.0]))
  _, weights = _total_and_weights(weighting, np.array([3.0, 1.0]))
  np.testing.assert_allclose(weights, [1 / 3, 2 / 3], rtol=1e-6)  # ∝ ½/(3 − 1), ½/1.


def test_geometric_mean_rejects_negative_losses_it_can_see():
  with pytest.raises(ValueError, match="non-negative `task_losses`"):
    _total_and_weights(scalarization.geometric_mean(), np.array([1.0, -1.0]))


def test_preferences_may_be_drawn_inside_a_jitted_step():
  """COSMOS's and PBI's preferences re-drawn from a Dirichlet distribution at every step, in one program."""
  @jax.jit
  def step(key, task_losses):
    preference = jax.random.dirichlet(key, jnp.ones(2))
    totals = []
    for weighting in (scalarization.cosmos(lambda_=1.0, weights=preference), scalarization.pbi(
        theta=5.0, weights=preference)):
      totals.append(weighting.combine(*weighting.init(), task_losses)[0])
    return preference, jnp.stack(totals)

  task_losses = jnp.asarray([1.0, 2.0])
  for seed in (0, 1):
    preference, totals = step(jax.random.PRNGKey(seed), task_losses)
    for weighting, total in zip((scalarization.cosmos(lambda_=1.0, weights=preference),
                                 scalarization.pbi(theta=5.0, weights=preference)), totals):
      np.testing.assert_allclose(total, _total_and_weights(weighting, task_losses)[0], rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# The name table.


def test_the_table_maps_names_and_aliases_to_the_factories():
  for alias, name in scalarization.ALIASES.items():
    assert scalarization.LOSS_WEIGHTINGS[alias] is scalarization.LOSS_WEIGHTINGS[name]
  assert set(losses.LOSS_WEIGHTING_NAMES) == set(scalarization.LOSS_WEIGHTINGS)
  assert losses.loss_weighting is scalarization.loss_weighting
  assert scalarization.option_names("famo") == {"num_tasks", "min_losses", "lr", "weight_decay"}
  with pytest.raises(ValueError, match=r"'stch' has no option \['theta'\]"):
    losses.loss_weighting("stch", mu=1.0, theta=2.0)
  with pytest.raises(ValueError, match="'uw' needs `num_tasks`"):
    losses.loss_weighting("uw")
  with pytest.raises(ValueError, match=r"`reference` must have shape \(N,\) = \(2,\)"):
    losses.loss_weighting("pbi", num_tasks=2, theta=1.0, weights=(1.0, 1.0), reference=(0.0, 0.0, 0.0))
  with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'mu'"):
    losses.loss_weighting("stch", num_tasks=2)
  with pytest.raises(ValueError, match="`mu` must be > 0"):
    losses.loss_weighting("stch", mu=0.0)
  with pytest.raises(ValueError, match="`theta` must be >= 0"):
    losses.loss_weighting("pbi", theta=-1.0, weights=(1.0, 1.0))
  with pytest.raises(ValueError, match="`lambda_` must be >= 0"):
    losses.loss_weighting("cosmos", lambda_=-1.0, weights=(1.0, 1.0))
  for name in ("sum", "geometric_mean", "trainable_alpha"):  # No per-task state: `num_tasks` checks the losses.
    weighting = losses.loss_weighting(name, num_tasks=3)
    with pytest.raises(AssertionError, match=r"`task_losses` must have shape \(N,\) = \(3,\), got \(2,\)"):
      weighting.combine(*weighting.init(), jnp.ones(2))


# ---------------------------------------------------------------------------------------------------------------
# Against TorchJD 0.18 and LibMTL 1.1.5, in float64.


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _torch_total_and_gradient(torch, scalarizer, task_losses):
  values = torch.tensor(task_losses, dtype=torch.float64, requires_grad=True)
  total = scalarizer(values)
  total.backward()
  return total.item(), values.grad.numpy()


PREFERENCE, REFERENCE = np.array([0.2, 0.5, 0.3]), np.array([0.3, 0.1, -0.2])
STATELESS = {  # (ours, TorchJD's, given TorchJD's module and torch).
    "sum": (lambda: scalarization.sum(), lambda T, t: T.Sum()),
    "mean": (lambda: scalarization.mean(), lambda T, t: T.Mean()),
    "constant": (lambda: scalarization.constant(weights=PREFERENCE), lambda T, t: T.Constant(t.tensor(PREFERENCE))),
    "geometric_mean": (lambda: scalarization.geometric_mean(), lambda T, t: T.GeometricMean()),
    "stch": (lambda: scalarization.stch(mu=0.5), lambda T, t: T.STCH(mu=0.5)),
    "stch/weights, reference": (
        lambda: scalarization.stch(mu=0.05, weights=PREFERENCE, reference=REFERENCE),
        lambda T, t: T.STCH(mu=0.05, weights=t.tensor(PREFERENCE), reference=t.tensor(REFERENCE))),
    "pbi": (lambda: scalarization.pbi(theta=5.0, weights=PREFERENCE), lambda T, t: T.PBI(5.0, t.tensor(PREFERENCE))),
    "pbi/reference": (lambda: scalarization.pbi(theta=2.0, weights=PREFERENCE, reference=REFERENCE),
                      lambda T, t: T.PBI(2.0, t.tensor(PREFERENCE), t.tensor(REFERENCE))),
    "cosmos": (lambda: scalarization.cosmos(lambda_=1.5, weights=PREFERENCE),
               lambda T, t: T.COSMOS(1.5, t.tensor(PREFERENCE))),
}


@pytest.mark.reference
@pytest.mark.parametrize("case", STATELESS)
def test_stateless_scalarizations_match_torchjd(case, x64):
  del x64
  torch = reference_package("torch")
  torchjd_scalarization = reference_package("torchjd.scalarization")
  ours, theirs = STATELESS[case]
  for task_losses in (LOSSES, np.array([3.0, 0.01, 1.0]), 2 * PREFERENCE):
    total, weights = _total_and_weights(ours(), task_losses)
    expected_total, expected_gradient = _torch_total_and_gradient(torch, theirs(torchjd_scalarization, torch),
                                                                  task_losses)
    np.testing.assert_allclose(total, expected_total, rtol=1e-12)
    np.testing.assert_allclose(weights, expected_gradient, rtol=1e-10, atol=1e-14)


@pytest.mark.reference
def test_random_matches_torchjd_on_the_same_draws(x64, monkeypatch):
  del x64
  torch = reference_package("torch")
  torchjd_scalarization = reference_package("torchjd.scalarization")
  weighting = scalarization.random(seed=4)
  params, state = weighting.init()
  for _ in range(3):
    _, draw = jax.random.split(state.key)
    normals = torch.from_numpy(np.array(jax.random.normal(draw, (3,), jnp.float64)))
    monkeypatch.setattr(torch, "randn", lambda *args, normals=normals, **kwargs: normals)
    expected_total, expected_gradient = _torch_total_and_gradient(torch, torchjd_scalarization.Random(), LOSSES)
    total, weights, state = weighting.combine(params, state, jnp.asarray(LOSSES))
    np.testing.assert_allclose(total, expected_total, rtol=1e-12)
    np.testing.assert_allclose(weights, expected_gradient, rtol=1e-12)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["uw", "imtl_l"])
def test_trainable_scalarizations_match_torchjd_in_losses_and_parameters(name, x64):
  del x64
  torch = reference_package("torch")
  torchjd_scalarization = reference_package("torchjd.scalarization")
  theirs = {"uw": torchjd_scalarization.UW, "imtl_l": torchjd_scalarization.IMTLL}[name](3).double()
  parameter = next(theirs.parameters())
  with torch.no_grad():
    parameter.copy_(torch.tensor([0.4, -0.3, 1.2], dtype=torch.float64))
  expected_total, expected_gradient = _torch_total_and_gradient(torch, theirs, LOSSES)
  ours = scalarization.loss_weighting(name, num_tasks=3)
  params = type(ours.init()[0])(jnp.asarray([0.4, -0.3, 1.2]))
  total, weights = _total_and_weights(ours, LOSSES, params)
  parameter_gradient = jax.grad(lambda p: ours.combine(p, scalarization.Empty(), jnp.asarray(LOSSES))[0])(params)
  np.testing.assert_allclose(total, expected_total, rtol=1e-12)
  np.testing.assert_allclose(weights, expected_gradient, rtol=1e-12)
  np.testing.assert_allclose(parameter_gradient[0], parameter.grad.numpy(), rtol=1e-12)


@pytest.mark.reference
def test_dwa_matches_torchjd_over_periods(x64):
  del x64
  torch = reference_package("torch")
  torchjd_scalarization = reference_package("torchjd.scalarization")
  history = np.exp(np.random.default_rng(3).normal(size=(12, 3)) * 0.5)
  theirs = torchjd_scalarization.DWA(temperature=1.5)
  ours = scalarization.dwa(num_tasks=3, temperature=1.5, period=3)
  params, state = ours.init()
  for step, task_losses in enumerate(history):
    expected_total, expected_gradient = _torch_total_and_gradient(torch, theirs, task_losses)
    total, weights, state = ours.combine(params, state, jnp.asarray(task_losses))
    np.testing.assert_allclose(total, expected_total, rtol=1e-12)
    np.testing.assert_allclose(weights, expected_gradient, rtol=1e-12)
    if step % 3 == 2:
      theirs.step()  # TorchJD's end of an epoch; ours counts `period` calls.


@pytest.mark.reference
def test_famo_matches_torchjd_when_update_gets_the_next_losses(x64):
  """TorchJD's `update` after each step with the losses our next call sees: the same logits and weights."""
  del x64
  torch = reference_package("torch")
  torchjd_scalarization = reference_package("torchjd.scalarization")
  history = np.exp(np.random.default_rng(4).normal(size=(8, 3)).cumsum(axis=0) * 0.3) + 0.5
  min_losses = np.array([0.2, 0.0, 0.4])
  theirs = torchjd_scalarization.FAMO(3, min_losses=torch.tensor(min_losses), lr=0.05, weight_decay=1e-2).double()
  ours = scalarization.famo(num_tasks=3, min_losses=jnp.asarray(min_losses), lr=0.05, weight_decay=1e-2)
  params, state = ours.init()
  for step, task_losses in enumerate(history):
    if step > 0:
      theirs.update(torch.tensor(task_losses))
    _, expected_gradient = _torch_total_and_gradient(torch, theirs, task_losses)
    _, weights, state = ours.combine(params, state, jnp.asarray(task_losses))
    np.testing.assert_allclose(state.logits, theirs._w.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(weights, expected_gradient, rtol=1e-9)


@pytest.mark.reference
def test_sum_and_uw_match_libmtl(x64):
  del x64
  torch = reference_package("torch")
  values = torch.tensor(LOSSES, requires_grad=True)
  equal = libmtl_weighting("EW").EW()
  equal.task_num, equal.device = 3, "cpu"
  equal.backward(values)
  _, weights = _total_and_weights(scalarization.sum(), LOSSES)
  np.testing.assert_allclose(weights, values.grad.numpy(), rtol=1e-12)

  uncertainty = libmtl_weighting("UW").UW()
  uncertainty.task_num, uncertainty.device = 3, "cpu"
  uncertainty.init_param()  # LibMTL starts at sᵢ = −0.5.
  uncertainty.loss_scale.data = uncertainty.loss_scale.data.double()
  values = torch.tensor(LOSSES, requires_grad=True)
  reported = uncertainty.backward(values)
  params = scalarization.UWParams(jnp.full(3, -0.5))
  ours = scalarization.uw(num_tasks=3)
  _, weights = _total_and_weights(ours, LOSSES, params)
  gradient = jax.grad(lambda p: ours.combine(p, scalarization.Empty(), jnp.asarray(LOSSES))[0])(params)
  np.testing.assert_allclose(weights, values.grad.numpy(), rtol=1e-12)
  np.testing.assert_allclose(weights, reported, rtol=1e-12)
  np.testing.assert_allclose(gradient.log_variances, uncertainty.loss_scale.grad.numpy(), rtol=1e-12)


@pytest.mark.reference
def test_imtl_l_scale_gradients_match_libmtl_imtl(x64):
  """LibMTL's IMTL backpropagates every scaled loss e^{sᵢ}Lᵢ − sᵢ to its scales before its gradient half (IMTL-G)
  combines the shared gradients: the scales' gradient is IMTL-L's."""
  del x64
  torch = reference_package("torch")
  shared = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64, requires_grad=True)
  imtl = libmtl_weighting("IMTL").IMTL()
  imtl.task_num, imtl.device, imtl.rep_grad = 3, "cpu", False
  imtl.get_share_params = lambda: [shared]
  imtl.zero_grad_share_params = lambda: shared.grad.zero_()
  imtl.init_param()
  imtl.loss_scale.data = torch.tensor([0.2, -0.4, 0.9], dtype=torch.float64)
  task_losses = torch.stack([(shared - 1.0).square().sum(), shared[0].exp(), (shared * shared[1]).abs().sum()])
  imtl.backward(task_losses)
  ours = scalarization.imtl_l(num_tasks=3)
  params = scalarization.IMTLLParams(jnp.asarray([0.2, -0.4, 0.9]))
  gradient = jax.grad(lambda p: ours.combine(p, scalarization.Empty(), jnp.asarray(task_losses.detach().numpy()))[0])(
      params)
  np.testing.assert_allclose(gradient.log_scales, imtl.loss_scale.grad.numpy(), rtol=1e-12)
