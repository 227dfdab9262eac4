"""Losses for dense and structured prediction, as pure jittable JAX functions."""

from losses.angular import angular_distance
from losses.angular import angular_loss
from losses.angular import decode_orientation
from losses.angular import encode_orientation
from losses.angular import orientation_metrics

__all__ = (
    "angular_distance",
    "angular_loss",
    "decode_orientation",
    "encode_orientation",
    "orientation_metrics",
)
