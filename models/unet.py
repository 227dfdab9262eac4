"""A small fully convolutional U-Net (Ronneberger et al., MICCAI 2015)."""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvBlock(nn.Module):
  """Two 3×3 convolutions, each followed by GroupNorm and GELU."""

  features: int
  groups: int = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for _ in range(2):
      x = nn.Conv(self.features, (3, 3))(x)
      x = nn.GroupNorm(num_groups=min(self.groups, self.features))(x)
      x = nn.gelu(x)
    return x


class UNet(nn.Module):
  """Encoder–decoder with skip connections; maps `(B, H, W, C)` to `(B, H, W, out_channels)`.

  `features[i]` is the width at resolution level i; H and W must be divisible
  by 2^(len(features) − 1). With `num_classes` > 0 it also returns
  `(B, num_classes)` class logits from the average-pooled bottleneck, a
  second head of a different output shape sharing the encoder.
  """

  features: Sequence[int] = (16, 32, 64)
  out_channels: int = 2
  num_classes: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    factor = 2 ** (len(self.features) - 1)
    if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(
          f"UNet with {len(self.features)} levels needs input (B, H, W, C) with H and W "
          f"divisible by {factor}, got {x.shape}.")
    skips = []
    for features in self.features[:-1]:
      x = ConvBlock(features)(x)
      skips.append(x)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = ConvBlock(self.features[-1])(x)
    class_logits = nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2))) if self.num_classes else None
    for features, skip in zip(reversed(self.features[:-1]), reversed(skips)):
      x = nn.ConvTranspose(features, (2, 2), strides=(2, 2))(x)
      x = ConvBlock(features)(jnp.concatenate([x, skip], axis=-1))
    dense_map = nn.Conv(self.out_channels, (1, 1))(x)
    return dense_map if class_logits is None else (dense_map, class_logits)
