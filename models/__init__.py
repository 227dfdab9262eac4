"""Flax Linen models and classical (non-learned) estimators of the experiments (run from the checkout)."""

from models.cnn import SmallCNN
from models.instances import SemiConvolution
from models.lenet import LeNet
from models.structure_tensor import structure_tensor_orientation
from models.unet import UNet

__all__ = (
    "LeNet",
    "SemiConvolution",
    "SmallCNN",
    "UNet",
    "structure_tensor_orientation",
)
