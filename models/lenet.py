"""The multi-task LeNet of Pareto MTL (Lin et al., NeurIPS 2019) for Multi-MNIST and Multi-Fashion."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# The modules `LeNet.encode` applies: the parameters every task shares.
ENCODER_MODULES = ("conv1", "conv2", "fc1")


class LeNet(nn.Module):
  """A shared LeNet encoder and one linear classifier per task: `(B, 36, 36, C)` → `num_tasks` × `(B, num_classes)`.

  The layers of `RegressionModel` in Pareto MTL's `multiMNIST/model_lenet.py` (github.com/Xi-L/ParetoMTL):
  conv1 (10 filters of 9×9, no padding) → ReLU → 2×2 max-pool → conv2 (20 of 5×5) → ReLU → 2×2 max-pool
  → fc1 (50) → ReLU, then heads_0, heads_1, … (linear, `num_classes` each). On 36×36 images the second
  pooling leaves 5×5×20 = 500 features for fc1. Flax's default initialisers (LeCun normal kernels, zero
  biases) replace PyTorch's uniform ones.

  `__call__(x)` is `decode(encode(x))`: `encode` computes the 50 features every head reads, from the
  modules `ENCODER_MODULES`, and `decode` the heads' logits from them, so that a multi-task method can
  take the task gradients at the representation (as `models.UNet` allows). Layers compute in `dtype`
  (parameters stay float32); the logits are in `dtype`.
  """

  num_tasks: int = 2
  num_classes: int = 10
  dtype: Any = jnp.float32

  def setup(self):
    layer_options = dict(dtype=self.dtype, param_dtype=jnp.float32)
    self.conv1 = nn.Conv(10, (9, 9), padding="VALID", **layer_options)
    self.conv2 = nn.Conv(20, (5, 5), padding="VALID", **layer_options)
    self.fc1 = nn.Dense(50, **layer_options)
    self.heads = [nn.Dense(self.num_classes, **layer_options) for _ in range(self.num_tasks)]

  def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
    return self.decode(self.encode(x))

  def encode(self, x: jax.Array) -> jax.Array:
    """The `(B, 50)` features every head reads."""
    if x.ndim != 4:
      raise ValueError(f"LeNet needs images (B, H, W, C), got shape {x.shape}.")
    for conv in (self.conv1, self.conv2):
      x = nn.max_pool(nn.relu(conv(x)), (2, 2), strides=(2, 2))
    return nn.relu(self.fc1(x.reshape(x.shape[0], -1)))

  def decode(self, features: jax.Array) -> tuple[jax.Array, ...]:
    """Each task's `(B, num_classes)` logits."""
    return tuple(head(features) for head in self.heads)
