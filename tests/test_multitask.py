"""Multi-task weightings against their formulas, hand-computed cases and a convergence check."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import losses


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

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(lambda p: weighting.combine(p, state, task_losses)[0])(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(1500):
    params, opt_state = step(params, opt_state)
  alpha = jax.nn.softmax(params["logits"])[0]
  np.testing.assert_allclose(alpha, loss_2 / (loss_1 + loss_2), rtol=0.05)


def test_trainable_alpha_tracks_changing_losses_on_a_toy_model():
  """Two quadratic tasks share a parameter; α follows L2/(L1+L2) as both fall."""
  weighting = losses.loss_weighting("trainable", num_tasks=2)
  params = {"model": jnp.array(3.0), "weighting": weighting.init()[0]}
  optimizer = optax.adam(0.02)
  opt_state = optimizer.init(params)

  def task_losses(theta):
    return jnp.stack([(theta - 1.0) ** 2 + 0.5, 0.1 * (theta + 1.0) ** 2 + 0.1])

  @jax.jit
  def step(params, opt_state):
    loss_fn = lambda p: weighting.combine(p["weighting"], {}, task_losses(p["model"]))[0]
    updates, opt_state = optimizer.update(jax.grad(loss_fn)(params), opt_state)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(3000):
    params, opt_state = step(params, opt_state)
  loss_1, loss_2 = task_losses(params["model"])
  alpha = jax.nn.softmax(params["weighting"]["logits"])[0]
  np.testing.assert_allclose(alpha, loss_2 / (loss_1 + loss_2), rtol=0.05)
  # The model minimises log L1 + log L2, not L1 + L2.
  thetas = jnp.linspace(-2, 3, 5001)
  log_objective = jnp.sum(jnp.log(jax.vmap(task_losses)(thetas)), axis=1)
  np.testing.assert_allclose(params["model"], thetas[jnp.argmin(log_objective)], atol=0.02)


def test_trainable_weighting_gradient_is_the_rule_rescaled():
  """The logits see the rule's gradient divided by c > 0: for N = 2, tanh(½ log(αL1/((1−α)L2)))."""
  weighting = losses.loss_weighting("trainable", num_tasks=2)
  logits, task_losses = jnp.array([0.3, -0.4]), jnp.array([2.0, 0.5])
  gradient = jax.grad(lambda z: weighting.combine({"logits": z}, {}, task_losses)[0])(logits)
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

  weighting = losses.loss_weighting("dwa", num_tasks=2, dwa_period=2, dwa_temperature=2.0)
  _, state = weighting.init()
  history = [(4.0, 1.0), (2.0, 1.0), (2.0, 1.0), (1.0, 1.0), (1.0, 1.0)]
  seen = []
  for task_losses in history:
    total, weights, state = weighting.combine({}, state, jnp.array(task_losses))
    seen.append(weights)
    np.testing.assert_allclose(total, np.dot(weights, task_losses), rtol=1e-6)
  # Equal weights for the first two periods (steps 1-4); then r = (1.5/3, 1/1).
  np.testing.assert_allclose(np.stack(seen[:4]), 1.0)
  ratios = np.array([1.5 / 3.0, 1.0])
  np.testing.assert_allclose(seen[4], 2 * np.exp(ratios / 2) / np.exp(ratios / 2).sum(), rtol=1e-6)


def test_fixed_weighting_and_bad_inputs():
  weighting = losses.loss_weighting("fixed", num_tasks=2, fixed_weights=(0.1, 0.9))
  total, weights, _ = weighting.combine({}, {}, jnp.array([2.0, 1.0]))
  np.testing.assert_allclose(total, 0.2 + 0.9, rtol=1e-6)
  np.testing.assert_allclose(weights, [0.1, 0.9], rtol=1e-6)
  with pytest.raises(ValueError, match="fixed_weights"):
    losses.loss_weighting("fixed", num_tasks=3, fixed_weights=(0.5, 0.5))
  with pytest.raises(ValueError, match="Unknown loss weighting"):
    losses.loss_weighting("gradnorm", num_tasks=2)
  with pytest.raises(AssertionError, match="task_losses"):
    weighting.combine({}, {}, jnp.ones(3))
  with pytest.raises(AssertionError, match="loss_1"):
    losses.trainable_alpha_loss(0.5, jnp.ones((2, 3)), 1.0)
  with pytest.raises(TypeError, match="loss_2"):
    losses.trainable_alpha_loss(0.5, 1.0, jnp.array(1))
