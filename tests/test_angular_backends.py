"""The angular loss's two float32 atan2 paths: the CPU polynomial and the native `atan2` of GPUs and TPUs.

The path is chosen when the program is lowered (`jax.lax.platform_dependent`). Both are checked here, on
the CPU, against float64: the native one by substituting `jnp.arctan2` for the polynomial, which is what
the other backends' branch computes. Both share the custom JVP.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import losses
from losses import angular


@pytest.fixture(params=["cpu polynomial", "native atan2"])
def atan2_path(request, monkeypatch):
  if request.param == "native atan2":
    monkeypatch.setattr(angular, "_atan2_upper_polynomial", jnp.arctan2)
  # The public functions' compiled programs were traced with whichever path was in place before.
  jax.clear_caches()
  yield request.param
  jax.clear_caches()


def _jit(fn, path):
  """A fresh jitted wrapper (jit caches traces by function), checked to lower to the path under test."""
  jitted = jax.jit(lambda *args: fn(*args))
  def run(*args):
    assert ("atan2" in jitted.trace(*args).lower().as_text()) == (path == "native atan2")
    return jitted(*args)
  return run


def _loss_and_gradient(predictions, targets):
  return jax.value_and_grad(lambda p: losses.angular_loss(p, targets, reduction="sum"))(predictions)


@pytest.mark.parametrize("platform, calls_atan2", [("cpu", False), ("cuda", True), ("tpu", True)])
def test_each_backend_lowers_to_its_own_atan2(platform, calls_atan2):
  predictions, targets = jnp.ones((4, 2)), jnp.full((4, 2), 0.5)
  for fn in (losses.angular_distance, _loss_and_gradient):
    text = jax.jit(fn).trace(predictions, targets).lower(lowering_platforms=(platform,)).as_text()
    assert ("atan2" in text) == calls_atan2, (platform, fn)


def _random_pairs(seed, count):
  rng = np.random.default_rng(seed)
  lengths = 10.0 ** rng.uniform(-3, 3, (2, count, 1))
  angles = rng.uniform(-np.pi, np.pi, (2, count, 1))
  vectors = lengths * np.concatenate([np.cos(angles), np.sin(angles)], axis=-1)
  return vectors.astype(np.float32)


def test_angles_match_float64_on_both_paths(atan2_path):
  predictions, targets = _random_pairs(0, 4096)
  expected = np.abs(np.angle((predictions[:, 0] + 1j * predictions[:, 1]).astype(np.complex128)
                             / (targets[:, 0] + 1j * targets[:, 1]).astype(np.complex128)))
  theta = np.asarray(_jit(losses.angular_distance, atan2_path)(predictions, targets), np.float64)
  np.testing.assert_allclose(theta, expected, rtol=2e-6, atol=2e-7, err_msg=atan2_path)


def test_gradients_are_the_closed_form_on_both_paths(atan2_path):
  """d(θ^(1+δ))/dp = (1+δ)·θ^δ·sign(t × p)·rot(p)/|p|², from float64 arithmetic on the same inputs."""
  predictions, targets = _random_pairs(1, 512)
  delta = 0.2
  value, gradient = _jit(_loss_and_gradient, atan2_path)(predictions, targets)
  p, t = predictions.astype(np.float64), targets.astype(np.float64)
  cross = t[:, 0] * p[:, 1] - t[:, 1] * p[:, 0]
  theta = np.abs(np.arctan2(cross, np.sum(t * p, axis=-1)))
  slope = (1 + delta) * theta ** delta * np.sign(cross) / np.sum(p * p, axis=-1)
  expected = slope[:, None] * np.stack([-p[:, 1], p[:, 0]], axis=-1)
  np.testing.assert_allclose(value, np.sum(theta ** (1 + delta)), rtol=1e-5, err_msg=atan2_path)
  np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max(), err_msg=atan2_path)


def test_singular_points_have_finite_zero_gradients_on_both_paths(atan2_path):
  targets = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
  predictions = jnp.array([[3.0, 0.0], [-2.0, 0.0], [0.0, 0.0]])  # θ = 0, θ = π, a zero vector
  value, gradient = _jit(_loss_and_gradient, atan2_path)(predictions, targets)
  np.testing.assert_allclose(value, np.pi ** 1.2, rtol=1e-6, err_msg=atan2_path)
  np.testing.assert_array_equal(gradient, 0.0)
