"""Losses and metrics for dense and structured prediction, as pure JAX functions.

The conventions every public function follows:

* **Predictions first, targets second**: `angular_loss(predictions, targets)`,
  `propel_loss(predictions, targets)`, `semi_conv_loss(embeddings, labels)`,
  `f2_iou_score(pred_labels, true_labels)`, as in optax's losses.
* **Options are keyword-only** and one concept has one name in every family:
  `max_instances` bounds the instance ids of the embedding losses, of the
  extraction and of the F2 metric; `mask` selects pixels; `reduction` is
  "mean", "sum" or "none", and each docstring says what "mean" averages over
  and which shape "none" returns.
* **Inputs** are anything `jax.numpy` accepts (`jax.typing.ArrayLike`: NumPy
  or JAX arrays, scalars); outputs are `jax.Array`s. Floating-point inputs
  are computed in at least float32 (bfloat16 and float16 are upcast, float64
  stays float64 under `jax_enable_x64`); integer labels may be of any width.
* **Shapes, dtypes and static options are checked at trace time**, with
  errors that name the argument and the expected shape. **Values** (label
  ranges, object counts) are checked only where the host already holds them:
  NumPy arrays and CPU arrays that are not traced. No check ever reads a
  traced value, so every function works under `jax.jit`, `jax.vmap`,
  `jax.grad`, `lax.scan`, `shard_map` and `jax.checkpoint`, including with
  constants captured from the enclosing scope.
* `import losses` loads only jax and NumPy; chex is imported at the first
  shape check.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> import losses
  >>> targets = losses.encode_orientation(jnp.zeros((2, 8, 8)), axial=True)
  >>> step = jax.jit(jax.value_and_grad(lambda p: losses.angular_loss(p, targets)))
  >>> value, gradient = step(losses.encode_orientation(jnp.full((2, 8, 8), 0.1), axial=True))
  >>> print(round(float(value), 4))  # θ = 0.2 between the doubled angles: 0.2 ** 1.2
  0.145
"""

from losses import aggregation
from losses import scalarization
from losses.aggregation import AGGREGATOR_NAMES
from losses.aggregation import gradient_aggregator
from losses.angular import angular_distance
from losses.angular import angular_loss
from losses.angular import decode_orientation
from losses.angular import encode_orientation
from losses.angular import orientation_metrics
from losses.embeddings import discriminative_loss
from losses.embeddings import semi_conv_kernel_loss
from losses.embeddings import semi_conv_loss
from losses.extraction import connected_components
from losses.extraction import extract_instances
from losses.extraction import extract_kernel_instances
from losses.extraction import extract_spatial_instances
from losses.extraction import pixel_coordinates
from losses.extraction import semi_convolution
from losses.matching import MatchingCounts
from losses.matching import PooledScores
from losses.matching import average_precision
from losses.matching import f2_iou_score
from losses.matching import matching_counts
from losses.matching import pooled_scores
from losses.multitask import balanced_weights_loss
from losses.multitask import dwa_weights
from losses.multitask import trainable_alpha_loss
from losses.multitask import uncertainty_weighted_loss
from losses.propel import constrain_mixture
from losses.propel import log_gaussian_overlap
from losses.propel import mixture_log_density
from losses.propel import mixture_mean
from losses.propel import propel_loss
from losses.propel import split_mixture
from losses.scalarization import LOSS_WEIGHTING_NAMES
from losses.scalarization import LossWeighting
from losses.scalarization import loss_weighting
from losses.spatial import spatial_embedding_loss

__version__ = "0.2.0"

__all__ = (
    "AGGREGATOR_NAMES",
    "LOSS_WEIGHTING_NAMES",
    "LossWeighting",
    "MatchingCounts",
    "PooledScores",
    "aggregation",
    "angular_distance",
    "angular_loss",
    "average_precision",
    "balanced_weights_loss",
    "connected_components",
    "constrain_mixture",
    "decode_orientation",
    "discriminative_loss",
    "dwa_weights",
    "encode_orientation",
    "extract_instances",
    "extract_kernel_instances",
    "extract_spatial_instances",
    "f2_iou_score",
    "gradient_aggregator",
    "log_gaussian_overlap",
    "loss_weighting",
    "matching_counts",
    "mixture_log_density",
    "mixture_mean",
    "orientation_metrics",
    "pixel_coordinates",
    "pooled_scores",
    "propel_loss",
    "scalarization",
    "semi_conv_kernel_loss",
    "semi_conv_loss",
    "semi_convolution",
    "spatial_embedding_loss",
    "split_mixture",
    "trainable_alpha_loss",
    "uncertainty_weighted_loss",
)
