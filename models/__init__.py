"""Flax Linen models and classical (non-learned) estimators."""

from models.cnn import SmallCNN
from models.instances import SemiConvolution
from models.instances import connected_components
from models.instances import extract_instances
from models.instances import normalised_coordinates
from models.structure_tensor import structure_tensor_orientation
from models.unet import UNet

__all__ = (
    "SemiConvolution",
    "SmallCNN",
    "UNet",
    "connected_components",
    "extract_instances",
    "normalised_coordinates",
    "structure_tensor_orientation",
)
