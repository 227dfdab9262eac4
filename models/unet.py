"""A small fully convolutional U-Net (Ronneberger et al., MICCAI 2015).

Two layers are written out instead of taken from Flax, for the speed of the
backward pass on XLA:CPU (BENCHMARKS.md, "Training step against PyTorch",
describes the change and what it measured); they compute the same functions
as `nn.GroupNorm` followed by `nn.gelu`, and as a 2×2 stride-2
`nn.ConvTranspose`, up to float32 rounding, with the same parameter names,
shapes and initialisation.
"""

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

_SQRT_2_OVER_PI = float(np.sqrt(2 / np.pi))


def _sum_per_group(per_channel: jax.Array, groups: int) -> jax.Array:
  """`(B, C)` → `(B, groups)`: the sums over each group of consecutive channels."""
  batch, channels = per_channel.shape
  return per_channel.reshape(batch, groups, channels // groups).sum(axis=-1)


def _broadcast_to_channels(per_group: jax.Array, channels: int) -> jax.Array:
  """`(B, G)` → `(B, 1, 1, channels)`, each group's value on each of its channels."""
  return jnp.repeat(per_group, channels // per_group.shape[-1], axis=-1)[:, None, None, :]


def _group_statistics(x: jax.Array, groups: int, epsilon: float) -> tuple[jax.Array, jax.Array]:
  """The float32 mean and 1/√(var + ε) of each `(image, group)`, both `(B, groups)`.

  Summed over the pixels first and over the channels of a group second:
  XLA:CPU reduces `(B, H, W, C)` → `(B, C)` faster than the grouped
  `(B, H, W, G, C/G)` → `(B, G)` reduction of `nn.GroupNorm`. The variance
  is E[x²] − E[x]², clipped at 0, as `nn.GroupNorm` computes it.
  """
  x = x.astype(jnp.float32)
  count = x.shape[1] * x.shape[2] * (x.shape[3] // groups)  # Pixels and channels in a group.
  mean = _sum_per_group(jnp.sum(x, axis=(1, 2)), groups) / count
  mean_of_squares = _sum_per_group(jnp.sum(jnp.square(x), axis=(1, 2)), groups) / count
  variance = jnp.maximum(0.0, mean_of_squares - jnp.square(mean))
  return mean, jax.lax.rsqrt(variance + epsilon)


def _gelu_derivative(z: jax.Array) -> jax.Array:
  """d/dz of the tanh form of GELU, `nn.gelu`'s default."""
  tanh = jnp.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z ** 3))
  return 0.5 * (1 + tanh) + 0.5 * z * (1 - jnp.square(tanh)) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * jnp.square(z))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def group_norm_gelu(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, epsilon: float,
                    dtype: Dtype) -> jax.Array:
  """`nn.gelu(nn.GroupNorm(groups, epsilon)(x))` on `(B, H, W, C)` with the given scale and bias.

  Statistics, normalisation and GELU are computed in float32 and the output
  cast to `dtype`. The gradient is written out: it recomputes the
  normalised values from `x` in the passes that need them, where
  differentiating the composition stores and reads back several
  intermediate maps. Reverse mode only (`jax.custom_vjp`).
  """
  return _group_norm_gelu_forward(x, scale, bias, groups, epsilon, dtype)[0]


def _group_norm_gelu_forward(x, scale, bias, groups, epsilon, dtype):
  mean, inverse_std = _group_statistics(x, groups, epsilon)
  channels = x.shape[-1]
  normalised = (x.astype(jnp.float32) - _broadcast_to_channels(mean, channels)) * (
      _broadcast_to_channels(inverse_std, channels) * scale) + bias
  return nn.gelu(normalised).astype(dtype), (x, scale, bias, mean, inverse_std)


def _group_norm_gelu_backward(groups, epsilon, dtype, residuals, output_gradient):
  del epsilon, dtype
  x, scale, bias, mean, inverse_std = residuals
  channels = x.shape[-1]
  count = x.shape[1] * x.shape[2] * (channels // groups)
  inverse_std_per_channel = _broadcast_to_channels(inverse_std, channels)
  x_hat = (x.astype(jnp.float32) - _broadcast_to_channels(mean, channels)) * inverse_std_per_channel
  # Gradient with respect to the GroupNorm output z = x̂·scale + bias.
  z_gradient = output_gradient.astype(jnp.float32) * _gelu_derivative(x_hat * scale + bias)
  z_gradient_sums = jnp.sum(z_gradient, axis=(1, 2))  # (B, C)
  z_gradient_x_hat_sums = jnp.sum(z_gradient * x_hat, axis=(1, 2))
  # x̂ gradient g = z_gradient·scale; x gradient = (g − mean(g) − x̂·mean(g·x̂)) / σ, means over the group.
  mean_g = _sum_per_group(z_gradient_sums * scale, groups) / count
  mean_g_x_hat = _sum_per_group(z_gradient_x_hat_sums * scale, groups) / count
  x_gradient = inverse_std_per_channel * (
      z_gradient * scale - _broadcast_to_channels(mean_g, channels)
      - x_hat * _broadcast_to_channels(mean_g_x_hat, channels))
  return (x_gradient.astype(x.dtype), z_gradient_x_hat_sums.sum(axis=0).astype(scale.dtype),
          z_gradient_sums.sum(axis=0).astype(bias.dtype))


group_norm_gelu.defvjp(_group_norm_gelu_forward, _group_norm_gelu_backward)


class GroupNormGELU(nn.Module):
  """`nn.GroupNorm` followed by `nn.gelu`, with the parameters of `nn.GroupNorm` (`scale`, `bias`).

  The statistics are float32 whatever `dtype` is (as `nn.GroupNorm` keeps
  them); the output is in `dtype`.
  """

  num_groups: int
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    if x.ndim != 4 or channels % self.num_groups:
      raise ValueError(f"GroupNormGELU needs (B, H, W, C) with C divisible by {self.num_groups}, got {x.shape}.")
    scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
    return group_norm_gelu(x, scale, bias, self.num_groups, self.epsilon, self.dtype)


class ConvTranspose2x2(nn.Module):
  """`nn.ConvTranspose(features, (2, 2), strides=(2, 2))`: `(B, H, W, C)` → `(B, 2H, 2W, features)`.

  The 2×2 windows of a stride-2 transposed convolution do not overlap, so
  it is one matrix product per input pixel followed by depth-to-space, and
  so are its gradients. XLA:CPU computes the kernel gradient of the
  input-dilated convolution `nn.ConvTranspose` lowers to on a slow generic
  path.
  """

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    batch, height, width, _ = x.shape
    # With 'SAME' padding, nn.ConvTranspose writes output pixel (2i + a, 2j + b) from kernel tap (1 − a, 1 − b).
    y = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel[::-1, ::-1])
    return y.reshape(batch, 2 * height, 2 * width, self.features) + bias


class ConvBlock(nn.Module):
  """Two 3×3 convolutions, each followed by GroupNorm and GELU."""

  features: int
  groups: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(2):
      x = nn.Conv(self.features, (3, 3), dtype=self.dtype, param_dtype=jnp.float32)(x)
      x = GroupNormGELU(min(self.groups, self.features), dtype=self.dtype, name=f"GroupNorm_{i}")(x)
    return x


class UNet(nn.Module):
  """Encoder–decoder with skip connections; maps `(B, H, W, C)` to `(B, H, W, out_channels)`.

  `features[i]` is the width at resolution level i; H and W must be divisible
  by 2^(len(features) − 1). With `num_classes` > 0 it also returns
  `(B, num_classes)` class logits from the average-pooled bottleneck, a
  second head of a different output shape sharing the encoder, and with
  `num_scalars` > 0 a third, `(B, num_scalars)` regression outputs from the
  same pooled features. Layers compute in `dtype` (parameters and
  normalisation statistics stay float32); the outputs are in `dtype`.

  `__call__(x)` is `decode(encode(x))`: `encode` computes the representation
  every head reads (the skip tensors and the bottleneck, from the modules
  `encoder_module_names(len(features))`), `decode` the heads from it, for
  the multi-task methods that differentiate at the representation.
  """

  features: Sequence[int] = (16, 32, 64)
  out_channels: int = 2
  num_classes: int = 0
  num_scalars: int = 0
  dtype: Dtype = jnp.float32

  def setup(self):
    # A list attribute names its modules <attribute>_<index>: the names `nn.compact` gives them, which
    # checkpoints, `config.shared_params` and the PyTorch twin (scripts/torch_unet.py) use.
    decoder_features = tuple(reversed(self.features[:-1]))
    self.ConvBlock = [ConvBlock(features, dtype=self.dtype) for features in (*self.features, *decoder_features)]
    self.ConvTranspose = [ConvTranspose2x2(features, dtype=self.dtype) for features in decoder_features]
    self.Conv = [nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, param_dtype=jnp.float32)]
    self.Dense = [nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)] if self.num_classes else []
    if self.num_scalars:
      self.Scalars = nn.Dense(self.num_scalars, dtype=self.dtype, param_dtype=jnp.float32)

  def __call__(self, x: jax.Array):
    return self.decode(self.encode(x))

  def encode(self, x: jax.Array) -> tuple[jax.Array, ...]:
    """`(skip of level 0, …, skip of level L − 2, bottleneck)`: everything the heads read of `x`."""
    levels = len(self.features)
    factor = 2 ** (levels - 1)
    if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(
          f"UNet with {levels} levels needs input (B, H, W, C) with H and W divisible by {factor}, got {x.shape}.")
    skips = []
    for block in self.ConvBlock[:levels - 1]:
      skips.append(block(x))
      x = nn.avg_pool(skips[-1], (2, 2), strides=(2, 2))
    return (*skips, self.ConvBlock[levels - 1](x))

  def decode(self, representation: tuple[jax.Array, ...]):
    """The dense map, then the class logits and the scalars where the model has them, from `encode`'s output."""
    *skips, x = representation
    pooled = jnp.mean(x, axis=(1, 2))
    pooled_heads = [dense(pooled) for dense in (*self.Dense, *([self.Scalars] if self.num_scalars else []))]
    for upsample, block, skip in zip(self.ConvTranspose, self.ConvBlock[len(self.features):], reversed(skips)):
      x = block(jnp.concatenate([upsample(x), skip], axis=-1))
    dense_map = self.Conv[0](x)
    return (dense_map, *pooled_heads) if pooled_heads else dense_map


def encoder_module_names(levels: int) -> tuple[str, ...]:
  """The top-level modules of a `UNet` with `levels` levels that `UNet.encode` applies."""
  return tuple(f"ConvBlock_{level}" for level in range(levels))
