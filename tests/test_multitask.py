"""Multi-task weightings against their formulas, hand-computed cases and a convergence check."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import libmtl_weighting
from conftest import reference_package
import losses
from losses.scalarization import BalancedWeightsParams
from losses.scalarization import Empty
from scripts import compare_multitask
from tasks import multitask


def test_trainable_alpha_value_and_gradients_match_the_formulas():
  alpha, loss_1, loss_2 = 0.3, 2.0, 0.5
  value, (d_alpha, d_loss_1, d_loss_2) = jax.value_and_grad(losses.trainable_alpha_loss, argnums=(0, 1, 2))(
      alpha, loss_1, loss_2)
  np.testing.assert_allclose(value, (alpha * loss_1 - (1 - alpha) * loss_2) ** 2 + alpha * loss_1
                             + (1 - alpha) * loss_2, rtol=1e-6)
  np.testing.assert_allclose(d_alpha, 2 * (alpha * loss_1 - (1 - alpha) * loss_2) * (loss_1 + loss_2), rtol=1e-6)
  np.testing.assert_allclose(d_loss_1, alpha, rtol=1e-6)
  np.testing.assert_allclose(d_loss_2, 1 - alpha, rtol=1e-6)


def test_per_example_losses_are_averaged_first():
  per_example_1, per_example_2 = jnp.array([1.0, 3.0]), jnp.array([0.5, 0.5, 2.0])
  np.testing.assert_allclose(losses.trainable_alpha_loss(0.4, per_example_1, per_example_2),
                             losses.trainable_alpha_loss(0.4, 2.0, 1.0), rtol=1e-6)
  gradient = jax.grad(losses.trainable_alpha_loss, argnums=1)(0.4, per_example_1, per_example_2)
  np.testing.assert_allclose(gradient, [0.2, 0.2], rtol=1e-6)


def test_n_task_form_equals_the_two_task_rule():
  def via_weights(alpha, loss_1, loss_2):
    return losses.balanced_weights_loss(jnp.stack([alpha, 1 - alpha]), jnp.stack([loss_1, loss_2]))
  for args in [(0.3, 2.0, 0.5), (0.9, 0.01, 7.0), (0.0, 1.0, 1.0)]:
    args = tuple(jnp.float32(a) for a in args)
    np.testing.assert_allclose(via_weights(*args), losses.trainable_alpha_loss(*args), rtol=1e-6)
    for expected, actual in zip(jax.grad(losses.trainable_alpha_loss, (0, 1, 2))(*args),
                                jax.grad(via_weights, (0, 1, 2))(*args)):
      np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_n_task_balance_point_is_inverse_losses():
  task_losses = jnp.array([1.0, 2.0, 4.0])
  balanced = (1 / task_losses) / jnp.sum(1 / task_losses)
  gradient = jax.grad(losses.balanced_weights_loss)(balanced, task_losses)
  np.testing.assert_allclose(gradient, 0.0, atol=1e-6)


@pytest.mark.parametrize("loss_1, loss_2", [(3.0, 1.0), (0.2, 5.0), (1e4, 0.1)])
def test_trainable_weighting_with_adam_converges_to_the_balance_point(loss_1, loss_2):
  """α = softmax(z)₀ moved by Adam reaches L2/(L1+L2), even when it is 1e-5."""
  weighting = losses.loss_weighting("trainable", num_tasks=2)
  params, state = weighting.init()
  optimizer = optax.adam(0.05)
  opt_state = optimizer.init(params)
  task_losses = jnp.array([loss_1, loss_2])

  def step(_, carry):
    params, opt_state = carry
    grads = jax.grad(lambda p: weighting.combine(p, state, task_losses)[0])(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = jax.jit(lambda carry: jax.lax.fori_loop(0, 1500, step, carry))((params, opt_state))
  alpha = jax.nn.softmax(params.logits)[0]
  np.testing.assert_allclose(alpha, loss_2 / (loss_1 + loss_2), rtol=0.05)


def test_trainable_alpha_tracks_changing_losses_on_a_toy_model():
  """Two quadratic tasks share a parameter; α follows L2/(L1+L2) as both fall."""
  weighting = losses.loss_weighting("trainable", num_tasks=2)
  weighting_params, weighting_state = weighting.init()
  params = {"model": jnp.array(3.0), "weighting": weighting_params}
  optimizer = optax.adam(0.02)
  opt_state = optimizer.init(params)

  def task_losses(theta):
    return jnp.stack([(theta - 1.0) ** 2 + 0.5, 0.1 * (theta + 1.0) ** 2 + 0.1])

  def step(_, carry):
    params, opt_state = carry
    loss_fn = lambda p: weighting.combine(p["weighting"], weighting_state, task_losses(p["model"]))[0]
    updates, opt_state = optimizer.update(jax.grad(loss_fn)(params), opt_state)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = jax.jit(lambda carry: jax.lax.fori_loop(0, 3000, step, carry))((params, opt_state))
  loss_1, loss_2 = task_losses(params["model"])
  alpha = jax.nn.softmax(params["weighting"].logits)[0]
  np.testing.assert_allclose(alpha, loss_2 / (loss_1 + loss_2), rtol=0.05)
  # The model minimises log L1 + log L2, not L1 + L2.
  thetas = jnp.linspace(-2, 3, 5001)
  log_objective = jnp.sum(jnp.log(jax.vmap(task_losses)(thetas)), axis=1)
  np.testing.assert_allclose(params["model"], thetas[jnp.argmin(log_objective)], atol=0.02)


def test_trainable_weighting_gradient_is_the_rule_rescaled():
  """The logits see the rule's gradient divided by c > 0: for N = 2, tanh(½ log(αL1/((1−α)L2)))."""
  weighting = losses.loss_weighting("trainable", num_tasks=2)
  logits, task_losses = jnp.array([0.3, -0.4]), jnp.array([2.0, 0.5])
  gradient = jax.grad(lambda z: weighting.combine(BalancedWeightsParams(z), Empty(), task_losses)[0])(logits)
  alpha = jax.nn.softmax(logits)[0]
  expected = np.tanh(0.5 * np.log(alpha * 2.0 / ((1 - alpha) * 0.5)))
  np.testing.assert_allclose(gradient, [expected, -expected], rtol=1e-5)
  rule = jax.grad(lambda z: losses.balanced_weights_loss(jax.nn.softmax(z), task_losses))(logits)
  np.testing.assert_allclose(gradient / rule, (gradient / rule)[0], rtol=1e-5)  # Same direction.
  assert (gradient / rule > 0).all()


def test_uncertainty_weighting_matches_a_hand_computed_case():
  log_variances, task_losses = jnp.array([0.0, math.log(2.0)]), jnp.array([1.0, 4.0])
  value, gradient = jax.value_and_grad(losses.uncertainty_weighted_loss)(log_variances, task_losses)
  np.testing.assert_allclose(value, 1 / 2 + 4 / 4 + math.log(2.0) / 2, rtol=1e-6)
  np.testing.assert_allclose(gradient, [-1 / 2 + 1 / 2, -4 / 4 + 1 / 2], atol=1e-6)


def test_dwa_weights_and_periods_match_the_paper():
  weights = losses.dwa_weights(jnp.array([1.0, 2.0]), jnp.array([2.0, 2.0]), temperature=2.0)
  expected = 2 * np.exp([0.25, 0.5]) / np.exp([0.25, 0.5]).sum()
  np.testing.assert_allclose(weights, expected, rtol=1e-6)

  weighting = losses.loss_weighting("dwa", num_tasks=2, period=2, temperature=2.0)
  params, state = weighting.init()
  history = [(4.0, 1.0), (2.0, 1.0), (2.0, 1.0), (1.0, 1.0), (1.0, 1.0)]
  seen = []
  for task_losses in history:
    total, weights, state = weighting.combine(params, state, jnp.array(task_losses))
    seen.append(weights)
    np.testing.assert_allclose(total, np.dot(weights, task_losses), rtol=1e-6)
  # Equal weights for the first two periods (steps 1-4); then r = (1.5/3, 1/1).
  np.testing.assert_allclose(np.stack(seen[:4]), 1.0)
  ratios = np.array([1.5 / 3.0, 1.0])
  np.testing.assert_allclose(seen[4], 2 * np.exp(ratios / 2) / np.exp(ratios / 2).sum(), rtol=1e-6)


def test_fixed_weighting_and_bad_inputs():
  weighting = losses.loss_weighting("fixed", num_tasks=2, weights=(0.1, 0.9))
  params, state = weighting.init()
  total, weights, _ = weighting.combine(params, state, jnp.array([2.0, 1.0]))
  np.testing.assert_allclose(total, 0.2 + 0.9, rtol=1e-6)
  np.testing.assert_allclose(weights, [0.1, 0.9], rtol=1e-6)
  with pytest.raises(ValueError, match=r"`weights` must have shape \(N,\) = \(3,\)"):
    losses.loss_weighting("fixed", num_tasks=3, weights=(0.5, 0.5))
  with pytest.raises(ValueError, match="Unknown loss weighting"):
    losses.loss_weighting("gradnorm", num_tasks=2)
  with pytest.raises(AssertionError, match="task_losses"):
    weighting.combine(params, state, jnp.ones(3))
  with pytest.raises(AssertionError, match="loss_1"):
    losses.trainable_alpha_loss(0.5, jnp.ones((2, 3)), 1.0)
  with pytest.raises(TypeError, match="loss_2"):
    losses.trainable_alpha_loss(0.5, 1.0, jnp.array(1))


# Random loss weighting, the geometric loss strategy and FAMO, against their formulas and LibMTL.


def _libmtl_stand_in(module, num_tasks, **attributes):
  """A LibMTL weighting with the attributes its trainer sets (task count, device, epoch, loss buffer)."""
  weighting = getattr(module, module.__name__.rsplit(".", 1)[1])()
  weighting.task_num, weighting.device, weighting.rep_grad = num_tasks, "cpu", False
  for name, value in attributes.items():
    setattr(weighting, name, value)
  return weighting


def test_rlw_weights_are_a_softmax_of_standard_normals_drawn_from_the_state_key():
  weighting = losses.loss_weighting("rlw", num_tasks=3, seed=5)
  params, state = weighting.init()
  np.testing.assert_array_equal(state.key, jax.random.PRNGKey(5))
  task_losses = jnp.array([1.0, 2.0, 4.0])
  total, weights, new_state = jax.jit(weighting.combine)(params, state, task_losses)
  _, draw = jax.random.split(jax.random.PRNGKey(5))
  np.testing.assert_allclose(weights, jax.nn.softmax(jax.random.normal(draw, (3,))), rtol=1e-6)
  np.testing.assert_allclose(total, weights @ task_losses, rtol=1e-6)
  assert not (new_state.key == state.key).all()
  again = weighting.combine(params, state, task_losses)[1]
  np.testing.assert_array_equal(again, weights)  # The same state, the same draw.

  @jax.jit
  def many(state):
    return jax.lax.scan(lambda s, _: weighting.combine(params, s, task_losses)[:0:-1], state, None, length=3000)[1]

  drawn = np.asarray(many(state))
  assert len({tuple(w) for w in drawn.round(6)}) == 3000
  centred = np.log(drawn) - np.log(drawn).mean(axis=1, keepdims=True)  # z − z̄ for z ~ N(0, I₃).
  np.testing.assert_allclose(centred.var(axis=0), 2 / 3, rtol=0.08)
  np.testing.assert_allclose(centred.mean(axis=0), 0.0, atol=0.05)


def test_gls_is_the_geometric_mean_and_reports_the_weights_of_its_gradient():
  weighting = losses.loss_weighting("gls", num_tasks=3)
  params, state = weighting.init()
  task_losses = jnp.array([2.0, 4.0, 8.0])
  total, weights, _ = weighting.combine(params, state, task_losses)
  np.testing.assert_allclose(total, 4.0, rtol=1e-6)  # (2·4·8)^(1/3)
  gradient = jax.grad(lambda l: weighting.combine(params, state, l)[0])(task_losses)
  np.testing.assert_allclose(gradient, weights, rtol=1e-6)
  np.testing.assert_allclose(weights, 4.0 / (3 * task_losses), rtol=1e-6)


def test_famo_follows_its_rule_on_a_hand_computed_case():
  weighting = losses.loss_weighting("famo", num_tasks=2, lr=0.1, weight_decay=0.0)
  params, state = weighting.init()
  _, weights, state = weighting.combine(params, state, jnp.array([3.0, 1.0]))
  np.testing.assert_allclose(weights, [0.25, 0.75], rtol=1e-6)  # z = (1/2, 1/2), wᵢ ∝ zᵢ/Lᵢ.
  np.testing.assert_allclose(state.logits, 0.0)  # The first call only records the losses.
  task_losses = jnp.array([1.5, 0.9])
  before = state
  total, weights, state = weighting.combine(params, before, task_losses)
  # δ = (log 2, log(1/0.9)): task 1 improved faster. Adam's first step is −lr·sign of the gradient
  # z ⊙ (δ − z·δ) = (+, −), so the logits become (−0.1, 0.1).
  np.testing.assert_allclose(state.logits, [-0.1, 0.1], rtol=1e-5)
  z = jax.nn.softmax(jnp.array([-0.1, 0.1]))
  expected = (z / task_losses) / jnp.sum(z / task_losses)
  np.testing.assert_allclose(weights, expected, rtol=1e-5)
  np.testing.assert_allclose(total, expected @ task_losses, rtol=1e-5)
  gradient = jax.grad(lambda l: weighting.combine(params, before, l)[0])(task_losses)
  np.testing.assert_allclose(gradient, weights, rtol=1e-5)  # sg(w)·L: the model sees the weights.


@pytest.mark.reference
def test_famo_logits_follow_libmtl_update_rule_with_torch_adam():
  """LibMTL's FAMO (added after 1.1.5) moves w by torch.optim.Adam(lr, weight_decay=γ) on the gradient of
  softmax(w) against δ = log(previous losses + 1e-8) − log(losses + 1e-8); written here with torch's own Adam."""
  torch = reference_package("torch")
  rng = np.random.default_rng(2)
  history = np.exp(rng.normal(size=(8, 3)).cumsum(axis=0) * 0.3)
  lr, gamma = 0.025, 1e-3
  weighting = losses.loss_weighting("famo", num_tasks=3, lr=lr, weight_decay=gamma)
  params, state = weighting.init()
  logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
  adam = torch.optim.Adam([logits], lr=lr, weight_decay=gamma)
  previous = None
  for task_losses in history:
    if previous is not None:
      delta = torch.log(torch.from_numpy(previous) + 1e-8) - torch.log(torch.from_numpy(task_losses) + 1e-8)
      (gradient,) = torch.autograd.grad(torch.softmax(logits, -1), logits, grad_outputs=delta)
      adam.zero_grad()
      logits.grad = gradient
      adam.step()
    previous = task_losses
    _, weights, state = weighting.combine(params, state, jnp.asarray(task_losses, jnp.float32))
    np.testing.assert_allclose(state.logits, logits.detach().numpy(), rtol=2e-4, atol=1e-6)
    z = torch.softmax(logits, -1).detach().numpy()
    ratios = z / (task_losses + 1e-8)
    np.testing.assert_allclose(weights, ratios / ratios.sum(), rtol=2e-4)


@pytest.mark.reference
def test_dwa_matches_libmtl():
  reference_package("torch")
  module = libmtl_weighting("DWA")
  rng = np.random.default_rng(1)
  epochs = rng.uniform(0.5, 2.0, size=(5, 3))  # Average losses of 5 "epochs" (periods of one step here).
  weighting = losses.loss_weighting("dwa", num_tasks=3, period=1, temperature=2.0)
  params, state = weighting.init()
  torch = reference_package("torch")
  for epoch, task_losses in enumerate(epochs):
    stand_in = _libmtl_stand_in(module, 3, epoch=epoch, train_loss_buffer=epochs.T.copy())
    reference = stand_in.backward(torch.tensor(task_losses, requires_grad=True), T=2.0)
    _, weights, state = weighting.combine(params, state, jnp.asarray(task_losses, jnp.float32))
    np.testing.assert_allclose(weights, reference, rtol=1e-5)


@pytest.mark.reference
def test_rlw_matches_libmtl_on_the_same_draws():
  torch = reference_package("torch")
  module = libmtl_weighting("RLW")
  weighting = losses.loss_weighting("rlw", num_tasks=3, seed=3)
  params, state = weighting.init()
  task_losses = np.array([0.5, 1.5, 3.0])
  for _ in range(3):
    key, draw = jax.random.split(state.key)
    normals = np.array(jax.random.normal(draw, (3,)))

    class SameDraws:  # LibMTL's RLW samples from `self.distribution`: give it ours.
      def sample(self, normals=normals):
        return torch.from_numpy(normals)

    stand_in = _libmtl_stand_in(module, 3, distribution=SameDraws())
    losses_tensor = torch.tensor(task_losses, requires_grad=True)
    reference = stand_in.backward(losses_tensor, dist="Normal")
    _, weights, state = weighting.combine(params, state, jnp.asarray(task_losses, jnp.float32))
    np.testing.assert_array_equal(state.key, key)
    np.testing.assert_allclose(weights, reference, rtol=1e-6)
    np.testing.assert_allclose(losses_tensor.grad.numpy(), weights, rtol=1e-6)  # d total / d Lᵢ = wᵢ.


@pytest.mark.reference
def test_gls_matches_libmtl_total_and_gradient():
  torch = reference_package("torch")
  module = libmtl_weighting("GLS")
  task_losses = np.array([0.5, 1.5, 3.0])
  losses_tensor = torch.tensor(task_losses, requires_grad=True)
  reported = _libmtl_stand_in(module, 3).backward(losses_tensor)
  weighting = losses.loss_weighting("gls", num_tasks=3)
  params, state = weighting.init()
  value_and_grad = jax.value_and_grad(lambda l: weighting.combine(params, state, l)[0])
  total, gradient = value_and_grad(jnp.asarray(task_losses, jnp.float32))
  np.testing.assert_allclose(total, np.prod(task_losses) ** (1 / 3), rtol=1e-6)
  np.testing.assert_allclose(gradient, losses_tensor.grad.numpy(), rtol=1e-5)
  # LibMTL reports Lᵢ/(N·ΠL) as GLS's weights, which is not the gradient; ours report the gradient.
  np.testing.assert_allclose(reported, task_losses / (3 * np.prod(task_losses)), rtol=1e-6)
  np.testing.assert_allclose(weighting.combine(params, state, jnp.asarray(task_losses))[1], gradient, rtol=1e-6)


@pytest.mark.parametrize("name", ("rlw", "gls", "famo"))
def test_new_weightings_check_their_inputs(name):
  weighting = losses.loss_weighting(name, num_tasks=2)
  params, state = weighting.init()
  with pytest.raises(AssertionError, match=r"`task_losses` must have shape \(N,\) = \(2,\)"):
    weighting.combine(params, state, jnp.ones(3))
  with pytest.raises(ValueError, match="`lr` must be >= 0"):
    losses.loss_weighting("famo", num_tasks=2, lr=-1.0)
  with pytest.raises(ValueError, match="`weight_decay` must be >= 0"):
    losses.loss_weighting("famo", num_tasks=2, weight_decay=-1.0)


def test_against_front_places_methods_beyond_on_and_behind_the_fixed_weight_front():
  def runs(a, b, spread=0.002):
    return [{"accuracy_top_left": a + d, "accuracy_bottom_right": b - d} for d in (-spread, 0.0, spread)]

  # The front: the segment from (0.6, 0.8) to (0.8, 0.6) through α = 0, 0.5, 1.
  per_seed = {"fixed α = 0.0": runs(0.6, 0.8), "fixed α = 0.5": runs(0.7, 0.7), "fixed α = 1.0": runs(0.8, 0.6),
              "beyond": runs(0.73, 0.73), "on": runs(0.70, 0.701), "behind": runs(0.66, 0.66)}
  report = compare_multitask.against_front(per_seed, ["accuracy_top_left", "accuracy_bottom_right"])
  assert "| beyond | -0.0300 |" in report and "| behind | +0.0400 |" in report
  assert "Beyond the front (1): beyond." in report and "Behind the front (1): behind." in report
  assert "On the front (1): on." in report


@pytest.mark.parametrize("weighting, expected", [
    ("mean", (True, "mean")), ("scalarization.mean", (False, "mean")), ("aggregation.random", (True, "random")),
    ("upgrad", (True, "upgrad")), ("dwa", (False, "dwa")), ("scalarization.rlw", (False, "rlw"))])
def test_a_prefix_chooses_the_level_of_a_name_both_levels_have(weighting, expected):
  assert multitask.method_of(ml_collections.ConfigDict(dict(weighting=weighting))) == expected
