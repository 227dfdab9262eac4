"""Flax Linen models and classical (non-learned) estimators."""

from models.structure_tensor import structure_tensor_orientation
from models.unet import UNet

__all__ = ("UNet", "structure_tensor_orientation")
