"""A small convolutional network for image-level regression and classification heads."""

from typing import Sequence

import flax.linen as nn
import jax

from models.unet import ConvBlock


class SmallCNN(nn.Module):
  """`ConvBlock`s each followed by 2×2 pooling, then two dense layers: `(B, H, W, C)` → `(B, outputs)`."""

  features: Sequence[int] = (16, 32, 64)
  hidden: int = 128
  outputs: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for features in self.features:
      x = nn.avg_pool(ConvBlock(features)(x), (2, 2), strides=(2, 2))
    x = nn.gelu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.outputs)(x)
