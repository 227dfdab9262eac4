"""PyTorch twins of `models.UNet` and `models.SmallCNN`, for timing against PyTorch eager.

The same layers, widths and parameter count as the Flax models (GroupNorm
with min(4, features) groups and ε = 1e-6, GELU in its tanh form as Flax's
default, 2×2 average pooling, 2×2 stride-2 transposed convolutions, the
upsampled map concatenated before its skip). `load_flax_params` copies a
Flax parameter tree into a twin, so that both compute the same function
up to float32 rounding.

Imports torch: import this module only where PyTorch is installed.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


class ConvBlock(nn.Module):
  """Two [3×3 convolution, GroupNorm, GELU], as `models.unet.ConvBlock`."""

  def __init__(self, in_channels: int, features: int, groups: int = 4):
    super().__init__()
    layers = []
    for channels in (in_channels, features):
      layers += [nn.Conv2d(channels, features, 3, padding=1), nn.GroupNorm(min(groups, features), features, eps=1e-6),
                 nn.GELU(approximate="tanh")]
    self.layers = nn.Sequential(*layers)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.layers(x)


class UNet(nn.Module):
  """`models.UNet`: `(B, C, H, W)` → `(B, out_channels, H, W)`, and its pooled heads when it has them.

  With `num_classes` > 0 (flax "Dense_0") and `num_scalars` > 0 (flax "Scalars") the output is
  `(map, class_logits[, scalars])`, the heads being linear layers on the average-pooled bottleneck, as
  in `models.UNet`. `forward(x, return_features=True)` also returns the shared features, the encoder's
  outputs that the decoder and the heads read: the skip tensors, finest first, then the bottleneck output.
  Each skip is handed to the decoder as its own view of the encoder's tensor, so that the features are
  distinct nodes of the graph, none computed from another (the next encoder block reads the tensor, the
  decoder its view): the gradients of the losses with respect to the features, backpropagated through the
  encoder, are then the gradients with respect to the encoder's parameters, as TorchJD's `mtl_backward`
  requires of its `features`.
  """

  def __init__(self, in_channels: int = 1, features: Sequence[int] = (16, 32, 64), out_channels: int = 2,
               num_classes: int = 0, num_scalars: int = 0):
    super().__init__()
    widths = [in_channels, *features]
    self.down = nn.ModuleList(ConvBlock(widths[i], widths[i + 1]) for i in range(len(features) - 1))
    self.bottleneck = ConvBlock(widths[-2], widths[-1])
    self.up = nn.ModuleList()
    self.up_blocks = nn.ModuleList()
    for coarse, fine in zip(reversed(features[1:]), reversed(features[:-1])):
      self.up.append(nn.ConvTranspose2d(coarse, fine, 2, stride=2))
      self.up_blocks.append(ConvBlock(2 * fine, fine))
    self.head = nn.Conv2d(features[0], out_channels, 1)
    self.class_head = nn.Linear(features[-1], num_classes) if num_classes else None
    self.scalar_head = nn.Linear(features[-1], num_scalars) if num_scalars else None

  def encoder_parameters(self) -> list[nn.Parameter]:
    """The parameters the shared features depend on: the down blocks' and the bottleneck's."""
    return [*self.down.parameters(), *self.bottleneck.parameters()]

  def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
    """The shared features: `[skip_0, …, skip_{L−2}, bottleneck]`, distinct graph nodes (see the class)."""
    skips = []
    for block in self.down:
      x = block(x)
      skips.append(x.view_as(x))
      x = nn.functional.avg_pool2d(x, 2)
    return [*skips, self.bottleneck(x)]

  def decode(self, features: Sequence[torch.Tensor]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The outputs of `forward` from the shared features `encode` returns."""
    *skips, x = features
    pooled = x.mean(dim=(2, 3))
    pooled_heads = [head(pooled) for head in (self.class_head, self.scalar_head) if head is not None]
    for up, block, skip in zip(self.up, self.up_blocks, reversed(skips)):
      x = block(torch.cat([up(x), skip], dim=1))
    dense_map = self.head(x)
    return (dense_map, *pooled_heads) if pooled_heads else dense_map

  def forward(self, x: torch.Tensor, return_features: bool = False):
    features = self.encode(x)
    outputs = self.decode(features)
    return (outputs, features) if return_features else outputs


class SmallCNN(nn.Module):
  """`models.SmallCNN`: `ConvBlock`s each followed by 2×2 pooling, then two dense layers."""

  def __init__(self, in_channels: int = 1, image_size: int = 32, features: Sequence[int] = (16, 32, 64),
               hidden: int = 128, outputs: int = 2):
    super().__init__()
    widths = [in_channels, *features]
    self.blocks = nn.ModuleList(ConvBlock(widths[i], widths[i + 1]) for i in range(len(features)))
    side = image_size // 2 ** len(features)
    self.hidden = nn.Linear(side * side * features[-1], hidden)
    self.output = nn.Linear(hidden, outputs)
    self.activation = nn.GELU(approximate="tanh")

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for block in self.blocks:
      x = nn.functional.avg_pool2d(block(x), 2)
    # Flattened in (H, W, C) order, as the NHWC Flax model does.
    x = self.activation(self.hidden(x.permute(0, 2, 3, 1).flatten(1)))
    return self.output(x)


def num_parameters(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


def _copy_block(block: ConvBlock, params: Mapping[str, Any]) -> list[tuple[torch.Tensor, np.ndarray]]:
  convs, norms = block.layers[0::3], block.layers[1::3]
  pairs = []
  for i, (conv, norm) in enumerate(zip(convs, norms)):
    pairs += [(conv.weight, np.transpose(params[f"Conv_{i}"]["kernel"], (3, 2, 0, 1))),  # HWIO → OIHW.
              (conv.bias, params[f"Conv_{i}"]["bias"]),
              (norm.weight, params[f"GroupNorm_{i}"]["scale"]), (norm.bias, params[f"GroupNorm_{i}"]["bias"])]
  return pairs


def load_flax_params(module: nn.Module, params: Mapping[str, Any]) -> None:
  """Copies the Flax parameters of the `models` twin of `module` into it, in place."""
  params = {name: _as_numpy(value) for name, value in params.items()}
  if isinstance(module, UNet):
    blocks = [*module.down, module.bottleneck, *module.up_blocks]
    pairs = [pair for i, block in enumerate(blocks) for pair in _copy_block(block, params[f"ConvBlock_{i}"])]
    for i, up in enumerate(module.up):
      # Flax's 2×2 stride-2 transposed convolution writes output pixel 2i + d from kernel tap 1 − d.
      kernel = params[f"ConvTranspose_{i}"]["kernel"][::-1, ::-1]
      pairs += [(up.weight, np.transpose(kernel, (2, 3, 0, 1))), (up.bias, params[f"ConvTranspose_{i}"]["bias"])]
    pairs += [(module.head.weight, np.transpose(params["Conv_0"]["kernel"], (3, 2, 0, 1))),
              (module.head.bias, params["Conv_0"]["bias"])]
    for layer, name in ((module.class_head, "Dense_0"), (module.scalar_head, "Scalars")):
      if layer is not None:
        pairs += [(layer.weight, params[name]["kernel"].T), (layer.bias, params[name]["bias"])]
  elif isinstance(module, SmallCNN):
    pairs = [pair for i, block in enumerate(module.blocks) for pair in _copy_block(block, params[f"ConvBlock_{i}"])]
    for layer, name in ((module.hidden, "Dense_0"), (module.output, "Dense_1")):
      pairs += [(layer.weight, params[name]["kernel"].T), (layer.bias, params[name]["bias"])]
  else:
    raise TypeError(f"No Flax twin for {type(module).__name__}.")
  if len(pairs) != len(list(module.parameters())):
    raise ValueError(f"Copied {len(pairs)} of the {len(list(module.parameters()))} parameter tensors.")
  with torch.no_grad():
    for tensor, value in pairs:
      if tuple(tensor.shape) != value.shape:
        raise ValueError(f"Parameter of shape {tuple(tensor.shape)} cannot take a Flax array of shape {value.shape}.")
      tensor.copy_(torch.tensor(np.array(value, dtype=np.float32)))


def _as_numpy(tree):
  if isinstance(tree, Mapping):
    return {name: _as_numpy(value) for name, value in tree.items()}
  return np.asarray(tree)
