"""The semi-convolutional operator as a Flax module, with an optional learnable gate on its scale."""

import flax.linen as nn
import jax

import losses


class SemiConvolution(nn.Module):
  """`losses.semi_convolution` of a `(B, H, W, C ≥ 2)` embedding: Φ + `scale`·(x, y) on the first two channels.

  Attributes:
    scale: the coordinate scale s (the embedding's units per half image).
    learnable_gate: multiply s by a learnable scalar initialised to 1.
  """

  scale: float = 1.0
  learnable_gate: bool = False

  @nn.compact
  def __call__(self, embeddings: jax.Array) -> jax.Array:
    scale = self.scale
    if self.learnable_gate:
      scale = scale * self.param("gate", nn.initializers.ones, ())
    return losses.semi_convolution(embeddings, scale=scale)
