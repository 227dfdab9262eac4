"""Classical orientation estimation with the gradient structure tensor.

J = G_ρ * (∇I ∇Iᵀ), with ∇I from derivative-of-Gaussian filters of scale σ
and G_ρ a Gaussian window of scale ρ (Bigün & Granlund, 1987; Kass & Witkin,
1987). The dominant gradient direction, the fringe normal, is
θ = ½·atan2(2 J_xy, J_xx − J_yy) ∈ [0, π); averaging the tensor rather than
the gradients lets opposite gradients on the two flanks of a fringe add up.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def _gaussian_kernels(sigma: float) -> tuple[np.ndarray, np.ndarray]:
  """Sampled Gaussian and its first derivative, radius ⌈3σ⌉, both unit-normalised."""
  radius = max(1, math.ceil(3 * sigma))
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  gaussian = np.exp(-0.5 * (t / sigma) ** 2)
  gaussian /= gaussian.sum()
  derivative = -t / sigma**2 * gaussian
  derivative /= -np.sum(t * derivative)  # Exact on linear ramps.
  return gaussian.astype(np.float32), derivative.astype(np.float32)


def _filter(images: jax.Array, kernel: np.ndarray, axis: int) -> jax.Array:
  """Correlates `(B, H, W)` images with a 1-D kernel along `axis` (1 rows, 2 columns), reflect padding."""
  radius = len(kernel) // 2
  pad = [(0, 0)] * 3
  pad[axis] = (radius, radius)
  padded = jnp.pad(images, pad, mode="reflect")[..., None]
  shape = (len(kernel), 1, 1, 1) if axis == 1 else (1, len(kernel), 1, 1)
  out = jax.lax.conv_general_dilated(
      padded, jnp.asarray(kernel).reshape(shape), (1, 1), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return out[..., 0]


def structure_tensor_orientation(
    images: jax.Array, *, gradient_sigma: float = 1.0, integration_sigma: float = 4.0) -> jax.Array:
  """Orientation of the local intensity gradient, `(B, H, W)` → `(B, H, W)` in [0, π).

  Angles are measured from +x (columns) towards +y (rows), the convention of
  `data.fringes`. The scales are static Python floats.
  """
  smooth, derivative = _gaussian_kernels(gradient_sigma)
  grad_x = _filter(_filter(images, smooth, axis=1), derivative, axis=2)
  grad_y = _filter(_filter(images, smooth, axis=2), derivative, axis=1)
  window, _ = _gaussian_kernels(integration_sigma)

  def integrate(field):
    return _filter(_filter(field, window, axis=1), window, axis=2)

  j_xx = integrate(grad_x * grad_x)
  j_yy = integrate(grad_y * grad_y)
  j_xy = integrate(grad_x * grad_y)
  return jnp.mod(0.5 * jnp.arctan2(2 * j_xy, j_xx - j_yy), jnp.pi)
