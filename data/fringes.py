"""Procedural fringe patterns with exact ground-truth orientation maps.

A fringe pattern is I(r) = a(r) + b(r)·cos φ(r) + noise, with a smooth
background a, a smooth amplitude b > 0 and a smooth phase φ. Its local fringe
orientation is the direction of the phase gradient ∇φ (the fringe normal),
an axial quantity of period π. Because φ is a closed-form function, ∇φ and
hence the orientation are exact at every pixel, not estimated.

The phase is a random carrier (plane wave) plus a quadratic chirp, which
varies the fringe density across the image, plus a few long-wavelength
sinusoidal bends:

    φ(r) = k·r + c/2·|r − r₀|² + Σₘ Aₘ sin(ωₘ·r + ψₘ) + φ₀.

Pixels where the local period 2π/|∇φ| lies outside [min_period, max_period]
have no usable orientation (near-flat phase, or fringes finer than the
sampling allows) and are excluded by the returned mask.

Image coordinates: x along columns, y along rows (downwards), origin at the
image centre, unit one pixel; orientations are measured from +x towards +y.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class PhaseMap(NamedTuple):
  """Parameters of φ(r); every field may carry leading batch axes."""

  carrier: jax.Array  # (2,) wave vector k, radians per pixel.
  chirp: jax.Array  # () curvature c, radians per pixel².
  chirp_centre: jax.Array  # (2,) r₀ in pixels.
  bend_amplitudes: jax.Array  # (M,) Aₘ in radians.
  bend_wavevectors: jax.Array  # (M, 2) ωₘ, radians per pixel.
  bend_phases: jax.Array  # (M,) ψₘ.
  offset: jax.Array  # () φ₀.


def pixel_grid(height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """(x, y) coordinates of the pixel centres, each `(height, width)`."""
  x = jnp.arange(width, dtype=jnp.float32) - (width - 1) / 2
  y = jnp.arange(height, dtype=jnp.float32) - (height - 1) / 2
  return jnp.meshgrid(x, y)


def phase_and_gradient(phase_map: PhaseMap, x: jax.Array, y: jax.Array):
  """φ and its exact gradient (∂φ/∂x, ∂φ/∂y) at the points (x, y)."""
  kx, ky = phase_map.carrier
  cx, cy = phase_map.chirp_centre
  c = phase_map.chirp
  phase = kx * x + ky * y + 0.5 * c * ((x - cx) ** 2 + (y - cy) ** 2) + phase_map.offset
  grad_x = kx + c * (x - cx)
  grad_y = ky + c * (y - cy)
  wx = phase_map.bend_wavevectors[:, 0, None, None]
  wy = phase_map.bend_wavevectors[:, 1, None, None]
  amplitude = phase_map.bend_amplitudes[:, None, None]
  argument = wx * x + wy * y + phase_map.bend_phases[:, None, None]
  phase = phase + jnp.sum(amplitude * jnp.sin(argument), axis=0)
  grad_x = grad_x + jnp.sum(amplitude * wx * jnp.cos(argument), axis=0)
  grad_y = grad_y + jnp.sum(amplitude * wy * jnp.cos(argument), axis=0)
  return phase, grad_x, grad_y


def _random_direction(key: jax.Array, shape=()) -> jax.Array:
  angle = jax.random.uniform(key, shape, maxval=2 * jnp.pi)
  return jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)


def sample_phase_map(
    key: jax.Array, *, size: int, min_carrier_period: float, max_carrier_period: float,
    max_chirp: float, num_bends: int, max_bend_strength: float) -> PhaseMap:
  """A random phase map for an image of side about `size` pixels.

  The carrier period is log-uniform in [min_carrier_period,
  max_carrier_period]; the chirp changes |∇φ| by up to `max_chirp`·|k| at the
  image border; each bend changes it by up to `max_bend_strength`·|k|.
  """
  keys = jax.random.split(key, 9)
  period = jnp.exp(jax.random.uniform(
      keys[0], minval=jnp.log(min_carrier_period), maxval=jnp.log(max_carrier_period)))
  frequency = 2 * jnp.pi / period
  half_size = size / 2
  bend_frequency = 2 * jnp.pi / (size * jax.random.uniform(keys[4], (num_bends,), minval=0.5, maxval=2.0))
  bend_strength = max_bend_strength * jax.random.uniform(keys[5], (num_bends,))
  return PhaseMap(
      carrier=frequency * _random_direction(keys[1]),
      chirp=max_chirp * frequency / half_size * jax.random.uniform(keys[2], minval=-1.0, maxval=1.0),
      chirp_centre=jax.random.uniform(keys[3], (2,), minval=-half_size, maxval=half_size),
      bend_amplitudes=bend_strength * frequency / bend_frequency,
      bend_wavevectors=bend_frequency[:, None] * _random_direction(keys[6], (num_bends,)),
      bend_phases=jax.random.uniform(keys[7], (num_bends,), maxval=2 * jnp.pi),
      offset=jax.random.uniform(keys[8], maxval=2 * jnp.pi),
  )


def _smooth_field(key: jax.Array, x: jax.Array, y: jax.Array, size: int) -> jax.Array:
  """A random sinusoid of wavelength 1 to 4 image sizes, values in [-1, 1]."""
  direction_key, wavelength_key, phase_key = jax.random.split(key, 3)
  wavelength = size * jax.random.uniform(wavelength_key, minval=1.0, maxval=4.0)
  wx, wy = 2 * jnp.pi / wavelength * _random_direction(direction_key)
  return jnp.sin(wx * x + wy * y + jax.random.uniform(phase_key, maxval=2 * jnp.pi))


def render(phase_map: PhaseMap, *, height: int, width: int, min_period: float, max_period: float):
  """Noise-free cos φ, the exact orientation in [0, π), and the validity mask."""
  x, y = pixel_grid(height, width)
  phase, grad_x, grad_y = phase_and_gradient(phase_map, x, y)
  orientation = jnp.mod(jnp.arctan2(grad_y, grad_x), jnp.pi)
  frequency = jnp.hypot(grad_x, grad_y)
  mask = (frequency >= 2 * jnp.pi / max_period) & (frequency <= 2 * jnp.pi / min_period)
  return jnp.cos(phase), orientation, mask


def sample_fringes(
    key: jax.Array,
    *,
    height: int = 64,
    width: int = 64,
    min_carrier_period: float = 5.0,
    max_carrier_period: float = 20.0,
    max_chirp: float = 0.8,
    num_bends: int = 3,
    max_bend_strength: float = 0.5,
    max_background: float = 0.5,
    min_amplitude: float = 0.3,
    max_amplitude_modulation: float = 0.7,
    max_noise_std: float = 1.0,
    min_period: float = 2.5,
    max_period: float = 40.0,
) -> dict[str, jax.Array]:
  """One random fringe image with its exact orientation map.

  Returns:
    A dict with `image` `(H, W, 1)` float32, `orientation` `(H, W)` in
    [0, π) (the direction of ∇φ), `mask` `(H, W)` bool (pixels with a valid
    orientation) and `noise_std` `()` (the additive Gaussian noise level,
    uniform in [0, max_noise_std]; the fringe amplitude is at most 1).
  """
  keys = jax.random.split(key, 7)
  phase_map = sample_phase_map(
      keys[0], size=max(height, width), min_carrier_period=min_carrier_period,
      max_carrier_period=max_carrier_period, max_chirp=max_chirp, num_bends=num_bends,
      max_bend_strength=max_bend_strength)
  fringes, orientation, mask = render(
      phase_map, height=height, width=width, min_period=min_period, max_period=max_period)
  x, y = pixel_grid(height, width)
  size = max(height, width)
  background = max_background * (
      jax.random.uniform(keys[1], minval=-1.0, maxval=1.0)
      + jax.random.uniform(keys[2]) * _smooth_field(keys[3], x, y, size)) / 2
  modulation = max_amplitude_modulation * jax.random.uniform(keys[4])
  amplitude = jax.random.uniform(keys[5], minval=min_amplitude, maxval=1.0) * (
      1 + modulation * _smooth_field(keys[6], x, y, size)) / (1 + modulation)
  noise_key, level_key = jax.random.split(jax.random.fold_in(key, 1))
  noise_std = max_noise_std * jax.random.uniform(level_key)
  image = background + amplitude * fringes + noise_std * jax.random.normal(noise_key, (height, width))
  return {"image": image[..., None], "orientation": orientation, "mask": mask, "noise_std": noise_std}
