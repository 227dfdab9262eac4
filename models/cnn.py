"""A small convolutional network for image-level regression and classification heads."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.unet import ConvBlock


def average_pool_2x2(x: jax.Array) -> jax.Array:
  """`nn.avg_pool(x, (2, 2), strides=(2, 2))` of `(B, H, W, C)`: the mean of the four pixels of each window.

  Written out for XLA:CPU, which fuses the GroupNorm and GELU before the
  pooling into the reduce-window `nn.avg_pool` lowers to and first writes
  six full-size broadcasts of per-channel values for it; the sum of the
  four pixels is fused without them. Its gradient is written out as well
  (`_window_mean`). An odd last row or column is dropped, as by `nn.avg_pool`.
  """
  height, width = x.shape[1], x.shape[2]
  return _window_mean(x[:, :height - height % 2, :width - width % 2])


@jax.custom_vjp
def _window_mean(x: jax.Array) -> jax.Array:
  """The mean of each 2×2 window of `(B, H, W, C)` with even H and W.

  Its gradient broadcasts each window's gradient over the window. The
  transpose of the four slices is padding, which XLA:CPU fused into the
  backward pass of the GroupNorm before it, making that pass slow.
  """
  batch, height, width, channels = x.shape
  windows = x.reshape(batch, height // 2, 2, width // 2, 2, channels)
  return (windows[:, :, 0, :, 0] + windows[:, :, 0, :, 1] + windows[:, :, 1, :, 0] + windows[:, :, 1, :, 1]) * 0.25


def _window_mean_forward(x):
  return _window_mean(x), None


def _window_mean_backward(residuals, mean_gradient):
  del residuals
  batch, height, width, channels = mean_gradient.shape
  gradient = jnp.broadcast_to(0.25 * mean_gradient[:, :, None, :, None, :], (batch, height, 2, width, 2, channels))
  return (gradient.reshape(batch, 2 * height, 2 * width, channels),)


_window_mean.defvjp(_window_mean_forward, _window_mean_backward)


class SmallCNN(nn.Module):
  """`ConvBlock`s each followed by 2×2 pooling, then two dense layers: `(B, H, W, C)` → `(B, outputs)`.

  Layers compute in `dtype` (parameters and normalisation statistics stay
  float32); the output is in `dtype`.
  """

  features: Sequence[int] = (16, 32, 64)
  hidden: int = 128
  outputs: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for features in self.features:
      x = average_pool_2x2(ConvBlock(features, dtype=self.dtype)(x))
    x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=jnp.float32)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.outputs, dtype=self.dtype, param_dtype=jnp.float32)(x)
