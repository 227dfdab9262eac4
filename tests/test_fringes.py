"""The fringe generator's ground truth is exact, and the classical baseline reads it."""

import jax
import jax.numpy as jnp
import numpy as np

from data import fringes
import losses
from models import structure_tensor_orientation


def plane_wave(angle: float, period: float) -> fringes.PhaseMap:
  frequency = 2 * np.pi / period
  return fringes.PhaseMap(
      carrier=frequency * jnp.array([np.cos(angle), np.sin(angle)]), chirp=jnp.array(0.0),
      chirp_centre=jnp.zeros(2), bend_amplitudes=jnp.zeros(1), bend_wavevectors=jnp.zeros((1, 2)),
      bend_phases=jnp.zeros(1), offset=jnp.array(0.3))


def test_plane_wave_has_one_known_orientation():
  for angle in (0.0, 0.4, 1.3, 2.0, 3.5, 5.9):
    image, orientation, mask = fringes.render(
        plane_wave(angle, period=9.0), height=32, width=48, min_period=2.5, max_period=40.0)
    np.testing.assert_allclose(orientation, np.mod(angle, np.pi), atol=1e-5)
    assert mask.all()
    # The image is cos(k·r + φ₀): one row along x has the period 9 / cos(angle).
    x, y = fringes.pixel_grid(32, 48)
    expected = np.cos(2 * np.pi / 9.0 * (np.cos(angle) * x + np.sin(angle) * y) + 0.3)
    np.testing.assert_allclose(image, expected, atol=1e-4)


def test_analytic_phase_gradient_matches_autodiff():
  phase_map = fringes.sample_phase_map(
      jax.random.key(0), size=64, min_carrier_period=5.0, max_carrier_period=20.0,
      max_chirp=0.8, num_bends=3, max_bend_strength=0.5)
  points = jax.random.uniform(jax.random.key(1), (2, 100), minval=-32, maxval=32)
  # `phase_and_gradient` takes (H, W) grids: points are a 1 x 100 grid here.
  phase_at = lambda x, y: fringes.phase_and_gradient(phase_map, x[None, None], y[None, None])[0][0, 0]
  _, grad_x, grad_y = fringes.phase_and_gradient(phase_map, points[0][None], points[1][None])
  auto_x, auto_y = jax.vmap(jax.grad(phase_at, argnums=(0, 1)))(points[0], points[1])
  np.testing.assert_allclose(grad_x[0], auto_x, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(grad_y[0], auto_y, rtol=1e-4, atol=1e-5)


def test_periods_outside_the_valid_range_are_masked():
  _, _, too_coarse = fringes.render(plane_wave(0.5, 50.0), height=8, width=8, min_period=2.5, max_period=40.0)
  _, _, too_fine = fringes.render(plane_wave(0.5, 2.0), height=8, width=8, min_period=2.5, max_period=40.0)
  assert not too_coarse.any() and not too_fine.any()


def test_samples_are_deterministic_and_well_formed():
  sample = jax.jit(jax.vmap(fringes.sample_fringes))
  keys = jax.random.split(jax.random.key(5), 8)
  first, second = sample(keys), sample(keys)
  jax.tree.map(np.testing.assert_array_equal, first, second)
  assert first["image"].shape == (8, 64, 64, 1) and first["image"].dtype == jnp.float32
  assert first["orientation"].shape == first["mask"].shape == (8, 64, 64)
  assert first["orientation"].min() >= 0 and first["orientation"].max() < np.pi
  assert 0.5 < first["mask"].mean() <= 1.0
  assert first["noise_std"].min() >= 0 and first["noise_std"].max() <= 1.0


def test_structure_tensor_recovers_a_clean_plane_wave():
  for angle in (0.2, 1.0, 2.5):
    image, orientation, _ = fringes.render(
        plane_wave(angle, period=8.0), height=48, width=48, min_period=2.5, max_period=40.0)
    estimate = structure_tensor_orientation(image[None], gradient_sigma=1.0, integration_sigma=3.0)[0]
    error = losses.orientation_metrics(
        losses.encode_orientation(estimate[8:-8, 8:-8], axial=True),
        losses.encode_orientation(orientation[8:-8, 8:-8], axial=True), axial=True)
    assert error["mean_abs_error_deg"] < 1.0, (angle, error)
