"""Handwritten digits (the UCI set scikit-learn ships, 1797 images of 8×8), transformed in JAX.

The images load offline from scikit-learn; every random transformation
(rotation, placement on a canvas) is a jittable function of a PRNG key.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.cache
def load_split(*, test_fraction: float = 0.25, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
  """`{"train": ..., "test": ...}`, each `{"images": (N, 8, 8) float32 in [0, 1], "labels": (N,) int32}`.

  The split is a fixed permutation drawn from `seed`, so every experiment
  holds out the same images.
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(labels))
  num_test = round(test_fraction * len(labels))
  parts = {"test": order[:num_test], "train": order[num_test:]}
  return {name: {"images": images[index], "labels": labels[index]} for name, index in parts.items()}


def draw_digit(
    digit: jax.Array, *, canvas: int, digit_size: jax.Array, angle: jax.Array = 0.0,
    offset: tuple[jax.Array, jax.Array] = (0.0, 0.0)) -> jax.Array:
  """Draws an 8×8 `digit` scaled to `digit_size` pixels and rotated by `angle` on an empty canvas.

  The rotation is counter-clockwise as displayed (x to the right, y up); the
  digit's centre lands `offset` = (x, y) pixels from the canvas centre.
  Bilinear resampling; pixels outside the digit are 0. Returns `(canvas, canvas)`.
  """
  centre = (canvas - 1) / 2
  rows, cols = jnp.meshgrid(jnp.arange(canvas), jnp.arange(canvas), indexing="ij")
  x, y = cols - centre - offset[0], centre - rows - offset[1]
  # Rotating the image by +angle means sampling the source at the point rotated by −angle.
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  source_x, source_y = cos * x + sin * y, -sin * x + cos * y
  scale = digit.shape[0] / digit_size
  source_rows = 3.5 - scale * source_y
  source_cols = 3.5 + scale * source_x
  return jax.scipy.ndimage.map_coordinates(digit, [source_rows, source_cols], order=1, mode="constant", cval=0.0)


def cluttered_canvas(
    key: jax.Array, digit: jax.Array, fragment_sources: jax.Array, *, canvas: int, min_size: float,
    max_size: float, fragment_size: float, noise_std: float) -> dict[str, jax.Array]:
  """A digit at a random position and size among fragments of other digits (cluttered MNIST style).

  Args:
    key: PRNG key.
    digit: `(8, 8)` the digit to place.
    fragment_sources: `(F, 8, 8)` digits to cut one square fragment each from.
    canvas: side of the square canvas.
    min_size, max_size: range of the digit's side in pixels.
    fragment_size: side of each fragment's square window in pixels.
    noise_std: standard deviation of the additive Gaussian noise.

  Returns:
    `{"image": (canvas, canvas, 1), "mask": (canvas, canvas) bool, "size": ()}`:
    the mask marks the digit's strokes (intensity > 0.5 before clutter and
    noise), and `size` is the digit's side in pixels.
  """
  size_key, offset_key, fragment_key, noise_key = jax.random.split(key, 4)
  size = jax.random.uniform(size_key, minval=min_size, maxval=max_size)
  room = (canvas - size) / 2
  offset = jax.random.uniform(offset_key, (2,), minval=-room, maxval=room)
  drawn = draw_digit(digit, canvas=canvas, digit_size=size, offset=(offset[0], offset[1]))

  def fragment(key, source):
    position_key, window_key, angle_key = jax.random.split(key, 3)
    centre = jax.random.uniform(position_key, (2,), minval=-canvas / 2, maxval=canvas / 2)
    shift = jax.random.uniform(window_key, (2,), minval=-max_size / 3, maxval=max_size / 3)
    angle = jax.random.uniform(angle_key, maxval=2 * jnp.pi)
    full = draw_digit(source, canvas=canvas, digit_size=max_size, angle=angle,
                      offset=(centre[0] - shift[0], centre[1] - shift[1]))
    half = (canvas - 1) / 2
    x, y = jnp.arange(canvas) - half, half - jnp.arange(canvas)
    half = fragment_size / 2
    inside = (jnp.abs(y[:, None] - centre[1]) < half) & (jnp.abs(x[None, :] - centre[0]) < half)
    return jnp.where(inside, full, 0.0)

  keys = jax.random.split(fragment_key, fragment_sources.shape[0])
  clutter = jnp.max(jax.vmap(fragment)(keys, fragment_sources), axis=0)
  image = jnp.maximum(drawn, clutter) + noise_std * jax.random.normal(noise_key, drawn.shape)
  return {"image": image[..., None], "mask": drawn > 0.5, "size": size}
