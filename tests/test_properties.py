"""Property-based tests (hypothesis) of every loss: sign, finite gradients and invariances.

Values are drawn freely; shapes come from a small fixed set, and each property
runs one jitted function (defined once, below) that returns everything it
checks, so the examples share a few compilations (the transformed inputs are
stacked along the batch axis, so the loss itself is compiled once per shape).
Runs are derandomised, so CI tests the same examples every time. Invariances
are checked in float64 (`jax.enable_x64`), where they hold to rounding.
"""

import functools
import math

from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import losses

PROPERTY = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True, scope="module")
def examples_independent_of_other_tests():
  """Makes `derandomize=True` draw the same examples whichever tests ran before in this process.

  Recent Hypothesis versions also draw, now and then, numbers found in the
  source of the local modules imported so far, so the examples would depend
  on the modules that other tests (scheduled dynamically by pytest-xdist)
  happened to import first. The pool is emptied while these tests run; if a
  Hypothesis version lacks it, nothing is changed.
  """
  try:
    from hypothesis.internal.conjecture import providers
    original, cache = providers._get_local_constants, providers.CONSTANTS_CACHE.cache
    empty = providers.Constants()
  except (ImportError, AttributeError):
    yield
    return
  providers._get_local_constants = lambda: empty
  cache.clear()
  yield
  providers._get_local_constants = original
  cache.clear()


def floats(low, high):
  return st.floats(low, high, allow_nan=False, allow_infinity=False)


def array(shape, elements, dtype=np.float64):
  return hnp.arrays(dtype, shape, elements=elements)


def in_float64(fn, *args):
  """`fn(*args)` with float64 enabled, as NumPy arrays (JAX arrays must not outlive the x64 context)."""
  with jax.enable_x64(True):
    return jax.tree.map(np.asarray, fn(*args))


def all_finite(tree) -> bool:
  return all(bool(np.isfinite(leaf).all()) for leaf in jax.tree.leaves(tree))


# Angular loss: θ^(1+δ) ≥ 0, finite gradients everywhere (θ = 0, θ = π, zero vectors included), and
# unchanged when both inputs are rotated by one angle and each vector is scaled by its own positive factor.

@functools.partial(jax.jit, static_argnums=5)  # δ is static: it selects the formula.
def angular_case(predictions, targets, angle, scale_pred, scale_true, delta):
  rotation = jnp.array([[jnp.cos(angle), -jnp.sin(angle)], [jnp.sin(angle), jnp.cos(angle)]])
  moved_pred = scale_pred[..., None] * (predictions @ rotation.T)
  moved_true = scale_true[..., None] * (targets @ rotation.T)
  # (as given, rotated and rescaled, swapped).
  values = losses.angular_loss(jnp.stack([predictions, moved_pred, targets]),
                               jnp.stack([targets, moved_true, predictions]), delta=delta, reduction="none")
  gradients = jax.grad(lambda p, t: losses.angular_loss(p, t, delta=delta), argnums=(0, 1))(predictions, targets)
  return *values, gradients


@st.composite
def vector_pairs(draw):
  shape = draw(st.sampled_from([(6,), (2, 3)]))
  angle = draw(array(shape, floats(-math.pi, math.pi)))
  # Exactly parallel and antiparallel pairs are the kinks of θ; draw them often.
  offset = draw(array(shape, st.sampled_from([0.0, math.pi]) | floats(-math.pi, math.pi)))
  length_true = draw(array(shape, st.just(0.0) | floats(1e-3, 1e3)))
  length_pred = draw(array(shape, st.just(0.0) | floats(1e-3, 1e3)))
  targets = length_true[..., None] * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
  predictions = length_pred[..., None] * np.stack([np.cos(angle + offset), np.sin(angle + offset)], axis=-1)
  scale_true = draw(array(shape, floats(1e-3, 1e3)))
  scale_pred = draw(array(shape, floats(1e-3, 1e3)))
  return predictions, targets, scale_pred, scale_true


@PROPERTY
@given(vector_pairs(), floats(-10.0, 10.0), st.sampled_from([0.0, 0.2, 0.5, 1.0, 2.0]))
def test_angular_loss_sign_gradients_and_rotation_invariance(pair, angle, delta):
  predictions, targets, scale_pred, scale_true = pair
  base, moved, swapped, gradients = in_float64(angular_case, predictions, targets, angle, scale_pred, scale_true,
                                               delta)
  assert base.dtype == np.float64
  assert (base >= 0).all() and (base <= math.pi ** (1 + delta) + 1e-12).all()
  assert all_finite(gradients)
  np.testing.assert_allclose(moved, base, rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(swapped, base, rtol=1e-9, atol=1e-9)


# PROPEL: ≥ 0, finite gradients, unchanged by permuting the predicted components (with their weights) and by
# translating the target and every predicted mean by the same vector; equal or learned weights, zero weights
# (log weight −inf) among them.

@functools.partial(jax.jit, static_argnums=5)  # σ is static: it is folded into constants.
def propel_case(pred, target, log_weights, order, shift, sigma):
  dims = target.shape[-1]
  # (as given, components permuted, target and means translated).
  preds = jnp.concatenate([pred, pred[:, order], pred.at[..., :dims].add(shift)])
  targets = jnp.concatenate([target, target, target + shift])
  stacked_log_weights = None if log_weights is None else jnp.concatenate(
      [log_weights, log_weights[:, order], log_weights])
  values = losses.propel_loss(preds, targets, sigma=sigma, log_weights=stacked_log_weights,
                              reduction="none").reshape(3, -1)
  gradients = jax.grad(lambda p, t, w: losses.propel_loss(p, t, sigma=sigma, log_weights=w), argnums=(0, 1, 2))(
      pred, target, log_weights)
  return *values, gradients


@st.composite
def mixtures(draw):
  batch, components, dims = draw(st.sampled_from([(2, 1, 1), (3, 4, 2)]))
  means = draw(array((batch, components, dims), floats(-5.0, 5.0)))
  stds = draw(array((batch, components, dims), floats(0.05, 3.0)))
  target = draw(array((batch, dims), floats(-5.0, 5.0)))
  log_weights = None
  if draw(st.booleans()):
    # Logits of −inf are zero weights; the first component keeps a finite one.
    logits = draw(array((batch, components), st.just(-np.inf) | floats(-10.0, 10.0)))
    logits[:, 0] = np.where(np.isfinite(logits[:, 0]), logits[:, 0], 0.0)
    log_weights = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
  order = np.array(draw(st.permutations(range(components))))
  shift = draw(array((dims,), floats(-100.0, 100.0)))
  return np.concatenate([means, stds], axis=-1), target, log_weights, order, shift


@PROPERTY
@given(mixtures(), st.sampled_from([0.05, 0.3, 1.0, 2.0]))
def test_propel_sign_gradients_and_invariances(mixture, sigma):
  pred, target, log_weights, order, shift = mixture
  base, permuted, translated, gradients = in_float64(propel_case, pred, target, log_weights, order, shift, sigma)
  assert base.dtype == np.float64
  assert (base >= 0).all()
  assert all_finite(gradients)
  np.testing.assert_allclose(permuted, base, rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(translated, base, rtol=1e-9, atol=1e-9)


# Semi-convolutional loss: ≥ 0, finite gradients (coincident embeddings included), zero gradient on
# the background, and unchanged by a permutation of the instance ids (background kept) or by
# translating every embedding by the same vector.

MAX_INSTANCES = 4


@jax.jit
def semi_conv_case(labels, embeddings, relabel, shift):
  # (as given, ids permuted, embeddings translated).
  values = losses.semi_conv_loss(
      jnp.concatenate([embeddings, embeddings, embeddings + shift]),
      jnp.concatenate([labels, relabel[labels], labels]),
      max_instances=MAX_INSTANCES, reduction="none").reshape(3, -1)
  gradient = jax.grad(lambda e: losses.semi_conv_loss(e, labels, max_instances=MAX_INSTANCES))(embeddings)
  return *values, gradient


@st.composite
def instance_maps(draw):
  batch, height, width, channels = 2, 4, 5, 3  # One shape: the loss and its gradient compile once.
  labels = draw(array((batch, height, width), st.integers(0, MAX_INSTANCES), np.int32))
  # A few distinct values make coincident embeddings (a zero distance to the mean) common.
  embeddings = draw(array((batch, height, width, channels), st.sampled_from([-1.0, 0.0, 2.5]) | floats(-3.0, 3.0)))
  relabel = np.array([0] + draw(st.permutations(range(1, MAX_INSTANCES + 1))), np.int32)
  shift = draw(array((channels,), floats(-100.0, 100.0)))
  return labels, embeddings, relabel, shift


@PROPERTY
@given(instance_maps())
def test_semi_conv_loss_sign_gradients_and_invariances(maps):
  labels, embeddings, relabel, shift = maps
  base, relabelled, translated, gradient = in_float64(semi_conv_case, labels, embeddings, relabel, shift)
  assert base.dtype == np.float64
  assert (base >= 0).all()
  assert all_finite(gradient)
  assert not gradient[labels == 0].any()
  np.testing.assert_allclose(relabelled, base, rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(translated, base, rtol=1e-9, atol=1e-9)


# Airbus F2: in [0, 1], 1 for a perfect prediction, unchanged by relabelling the ids of either side.

MAX_IDS = 5


@jax.jit
def f2_case(truth, prediction, relabel_true, relabel_pred):
  # (as given, true ids relabelled, predicted ids relabelled, perfect prediction).
  scores = losses.f2_iou_score(jnp.concatenate([prediction, prediction, relabel_pred[prediction], truth]),
                               jnp.concatenate([truth, relabel_true[truth], truth, truth]),
                               reduction="none")
  return scores.reshape(4, -1)


def relabelling():
  """A map of the ids 0…MAX_IDS that keeps 0 (background) and sends the others to distinct ids ≥ 1."""
  return st.lists(st.integers(1, 10 ** 6), min_size=MAX_IDS, max_size=MAX_IDS, unique=True).map(
      lambda ids: np.array([0] + ids, np.int32))


@st.composite
def segmentations(draw):
  # Objects are 2×2 blocks of a coarse (3, 4, 4) map; the prediction changes some blocks and pixels.
  coarse = draw(array((3, 4, 4), st.integers(0, MAX_IDS), np.int32))
  truth = np.kron(coarse, np.ones((2, 2), np.int32))
  changed = draw(array((3, 8, 8), st.sampled_from([False, False, False, True])))
  noise = draw(array((3, 8, 8), st.integers(0, MAX_IDS), np.int32))
  return truth, np.where(changed, noise, truth), draw(relabelling()), draw(relabelling())


@PROPERTY
@given(segmentations())
def test_f2_range_and_relabelling_invariance(scenes):
  truth, prediction, relabel_true, relabel_pred = scenes
  base, true_relabelled, pred_relabelled, perfect = f2_case(truth, prediction, relabel_true, relabel_pred)
  assert ((base >= 0) & (base <= 1)).all()
  np.testing.assert_array_equal(perfect, 1.0)
  np.testing.assert_allclose(true_relabelled, base, rtol=1e-6)
  np.testing.assert_allclose(pred_relabelled, base, rtol=1e-6)


# Multi-task weighting (float32, as in training): the trainable-weight rules are ≥ 0 with finite
# gradients, for losses down to 0; uncertainty weighting is bounded below by its minimum over s,
# Σ (1 + log Lᵢ)/2; DWA weights are non-negative, sum to N and depend only on the ratios of the losses.

@jax.jit
def multitask_case(alpha, loss_1, loss_2, logits, task_losses, log_variances, previous, ratios, factor):
  alpha_rule = jax.value_and_grad(losses.trainable_alpha_loss, argnums=(0, 1, 2))(alpha, loss_1, loss_2)
  balanced = jax.value_and_grad(
      lambda z, l: losses.balanced_weights_loss(jax.nn.softmax(z), l), argnums=(0, 1))(logits, task_losses)
  weighting = losses.loss_weighting("trainable", num_tasks=task_losses.shape[0])
  params, state = weighting.init()
  trainable = jax.value_and_grad(
      lambda z, l: weighting.combine(params._replace(logits=z), state, l)[0], argnums=(0, 1))(logits, task_losses)
  uncertainty = jax.value_and_grad(losses.uncertainty_weighted_loss, argnums=(0, 1))(log_variances, task_losses)
  before = previous / ratios
  dwa = losses.dwa_weights(previous, before), losses.dwa_weights(factor * previous, factor * before)
  return alpha_rule, balanced, trainable, uncertainty, dwa


def losses_from_zero():
  return st.just(0.0) | floats(1e-30, 1e3)


@PROPERTY
@given(floats(0.0, 1.0), losses_from_zero(), array((5,), losses_from_zero()), array((3,), floats(-5.0, 5.0)),
       array((3,), losses_from_zero()), array((3,), floats(-5.0, 5.0)), array((3,), floats(1e-3, 1e3)),
       array((3,), floats(0.2, 5.0)), floats(1e-2, 1e2))
def test_multitask_rules_sign_and_gradients(alpha, loss_1, loss_2, logits, task_losses, log_variances, previous,
                                            ratios, factor):
  args = [np.float32(a) for a in (alpha, loss_1, loss_2, logits, task_losses, log_variances, previous, ratios,
                                  factor)]
  alpha_rule, balanced, trainable, uncertainty, (dwa, dwa_scaled) = multitask_case(*args)
  for value, gradients in (alpha_rule, balanced, trainable, uncertainty):
    assert np.isfinite(value) and all_finite(gradients)
  assert alpha_rule[0] >= 0 and balanced[0] >= 0 and trainable[0] >= 0
  with np.errstate(divide="ignore"):
    lower_bound = np.sum(1 + np.log(args[4].astype(np.float64))) / 2
  assert uncertainty[0] >= lower_bound - 1e-4 * (1 + abs(lower_bound))
  assert (dwa >= 0).all()
  np.testing.assert_allclose(np.sum(dwa), 3.0, rtol=1e-5)
  np.testing.assert_allclose(dwa_scaled, dwa, rtol=1e-5, atol=1e-6)
