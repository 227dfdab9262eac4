"""Semi-convolutional embeddings and turning them into instance label maps, all in JAX.

* `SemiConvolution`: Ψ_u = Φ_u + s·(x_u, y_u) on the first two channels
  (Novotny et al., ECCV 2018), x and y the pixel coordinates normalised to
  [−1, 1], s the coordinate scale, optionally times a learnable gate.
* `extract_instances`: greedy seeded clustering of the foreground pixels in
  embedding space, a fixed number of `lax` iterations, no host round trip.
* `connected_components`: 4-connected components of a binary mask by
  iterated min-label propagation, the classical baseline (it merges objects
  that touch).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from losses import _common


def normalised_coordinates(height: int, width: int) -> jax.Array:
  """`(H, W, 2)` pixel coordinates (x to the right, y down), each in [−1, 1] along its axis.

  `height` and `width` are static ints ≥ 0 (0 gives an empty grid); a side of
  1 pixel has the coordinate −1.
  """
  height = _common.check_int(height, "height", minimum=0)
  width = _common.check_int(width, "width", minimum=0)
  y, x = jnp.meshgrid(jnp.linspace(-1.0, 1.0, height), jnp.linspace(-1.0, 1.0, width), indexing="ij")
  return jnp.stack([x, y], axis=-1)


class SemiConvolution(nn.Module):
  """Adds `scale`·(x, y) to the first two channels of a `(B, H, W, C ≥ 2)` embedding.

  Attributes:
    scale: the coordinate scale s (the embedding's units per half image).
    learnable_gate: multiply s by a learnable scalar initialised to 1.
  """

  scale: float = 1.0
  learnable_gate: bool = False

  @nn.compact
  def __call__(self, embeddings: jax.Array) -> jax.Array:
    if embeddings.ndim != 4 or embeddings.shape[-1] < 2:
      raise ValueError(f"SemiConvolution needs embeddings (B, H, W, C ≥ 2), got {embeddings.shape}.")
    scale = self.scale
    if self.learnable_gate:
      scale = scale * self.param("gate", nn.initializers.ones, ())
    coordinates = normalised_coordinates(*embeddings.shape[1:3]).astype(embeddings.dtype)
    padding = jnp.zeros(embeddings.shape[1:3] + (embeddings.shape[-1] - 2,), embeddings.dtype)
    return embeddings + scale * jnp.concatenate([coordinates, padding], axis=-1)


def extract_instances(
    foreground: jax.Array, embeddings: jax.Array, *, max_instances: int, distance: float,
    foreground_threshold: float = 0.5) -> jax.Array:
  """Clusters the foreground pixels of each image around seeds in embedding space.

  Each of `max_instances` rounds takes the unassigned foreground pixel of
  highest foreground probability as the seed, moves the centre once to the
  mean of the unassigned foreground pixels within `distance` of it, and
  assigns every unassigned foreground pixel within `distance` of that centre
  to a new instance. Rounds after the foreground is used up do nothing.

  Args:
    foreground: `(B, H, W)` float foreground probabilities.
    embeddings: `(B, H, W, C)` float embeddings Ψ, C ≥ 1.
    max_instances: static number of rounds (≥ 0), the most instances per
      image.
    distance: clustering radius ≥ 0 in embedding units.
    foreground_threshold: probability above which a pixel is foreground.

  Returns:
    `(B, H, W)` int32 labels: 0 background, 1…`max_instances` instances;
    all 0 for images without pixels (H·W = 0), empty for B = 0.
  """
  foreground = _common.check_rank(_common.as_float(foreground, "foreground"), "foreground", 3, "(B, H, W)")
  embeddings = _common.check_embeddings(embeddings, "embeddings", foreground, "foreground")
  max_instances = _common.check_int(max_instances, "max_instances", minimum=0)
  _common.check_number(distance, "distance", minimum=0.0)
  _common.check_number(foreground_threshold, "foreground_threshold")
  if foreground.shape[1] * foreground.shape[2] == 0:
    return jnp.zeros(foreground.shape, jnp.int32)

  def per_image(probability, psi):
    probability, psi = probability.reshape(-1), psi.reshape(-1, psi.shape[-1])
    is_foreground = probability > foreground_threshold

    def round_(k, labels):
      free = is_foreground & (labels == 0)
      seed = jnp.argmax(jnp.where(free, probability, -1.0))
      near_seed = free & (jnp.sum((psi - psi[seed]) ** 2, axis=-1) <= distance ** 2)
      centre = jnp.sum(jnp.where(near_seed[:, None], psi, 0.0), axis=0) / jnp.maximum(jnp.sum(near_seed), 1)
      members = free & (jnp.sum((psi - centre) ** 2, axis=-1) <= distance ** 2) & jnp.any(free)
      return jnp.where(members, k + 1, labels)

    labels = jax.lax.fori_loop(0, max_instances, round_, jnp.zeros(probability.shape, jnp.int32))
    return labels.reshape(foreground.shape[1:])

  return jax.vmap(per_image)(foreground, embeddings)


def connected_components(mask: jax.Array) -> jax.Array:
  """4-connected components of a `(B, H, W)` boolean mask, labelled by a unique id each (0 outside).

  Every foreground pixel starts with its own index + 1 and repeatedly takes
  the smallest label among itself and its foreground neighbours until nothing
  changes (`lax.while_loop`), so each component ends with the smallest index
  in it. Ids are not consecutive. An empty batch or image gives an empty
  label map of the same shape.
  """
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    raise TypeError(f"`mask` must be a boolean (B, H, W) array, got dtype {mask.dtype}; "
                    "threshold it first, e.g. `probability > 0.5`.")
  _common.check_rank(mask, "mask", 3, "(B, H, W)")
  height, width = mask.shape[1:]
  start = jnp.where(mask, jnp.arange(1, height * width + 1).reshape(height, width), 0)
  big = height * width + 1

  def propagate(labels):
    padded = jnp.pad(jnp.where(mask, labels, big), ((0, 0), (1, 1), (1, 1)), constant_values=big)
    neighbours = jnp.minimum(jnp.minimum(padded[:, :-2, 1:-1], padded[:, 2:, 1:-1]),
                             jnp.minimum(padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]))
    return jnp.where(mask, jnp.minimum(labels, neighbours), 0)

  def changed(carry):
    previous, current = carry
    return jnp.any(previous != current)

  _, labels = jax.lax.while_loop(changed, lambda carry: (carry[1], propagate(carry[1])),
                                 (start, propagate(start)))
  return labels
