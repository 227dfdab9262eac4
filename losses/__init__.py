"""Losses for dense and structured prediction, as pure jittable JAX functions."""

from losses.angular import angular_distance
from losses.angular import angular_loss
from losses.angular import decode_orientation
from losses.angular import encode_orientation
from losses.angular import orientation_metrics
from losses.instances import f2_iou_score
from losses.instances import semi_conv_loss
from losses.multitask import LossWeighting
from losses.multitask import balanced_weights_loss
from losses.multitask import dwa_weights
from losses.multitask import loss_weighting
from losses.multitask import trainable_alpha_loss
from losses.multitask import uncertainty_weighted_loss
from losses.propel import constrain_mixture
from losses.propel import log_gaussian_overlap
from losses.propel import mixture_log_density
from losses.propel import mixture_mean
from losses.propel import propel_loss
from losses.propel import split_mixture

__all__ = (
    "LossWeighting",
    "angular_distance",
    "angular_loss",
    "balanced_weights_loss",
    "constrain_mixture",
    "decode_orientation",
    "dwa_weights",
    "encode_orientation",
    "f2_iou_score",
    "log_gaussian_overlap",
    "loss_weighting",
    "mixture_log_density",
    "mixture_mean",
    "orientation_metrics",
    "propel_loss",
    "semi_conv_loss",
    "split_mixture",
    "trainable_alpha_loss",
    "uncertainty_weighted_loss",
)
