"""Bad input to every public function: a clear error, or the documented behaviour.

Each row of `CASES` calls one public function of `losses` with one bad
argument and expects the exception type and a message that names the argument
and what it should be (for shapes: the expected shape). Errors are raised at
trace time, from shapes, dtypes and static options, so inside `jax.jit` too;
values (label ids, object counts) are checked where the host holds them. The
behaviours that are not errors (empty batches, ids out of range inside jit,
traced options) are tested below the table.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import losses


def f32(*shape):
  return np.ones(shape, np.float32)


def i32(*shape):
  return np.ones(shape, np.int32)


def says(*pieces: str) -> str:
  """A regex matching the pieces, in order, anywhere in the message."""
  return ".*".join(re.escape(piece) for piece in pieces)


def combine_three_losses_for_two_tasks(name):
  weighting = losses.loss_weighting(name, num_tasks=2, **({"weights": (0.5, 0.5)} if name == "fixed" else {}))
  params, state = weighting.init()
  return weighting.combine(params, state, f32(3))


LABELS = np.array([[[0, 1], [2, 5]]], np.int32)  # (1, 2, 2), ids up to 5.
EMBEDDINGS = f32(1, 2, 2, 3)

# (id, call, exception, message regex).
CASES = [
    # Angular losses: (..., 2) vector pairs of one shape.
    ("angular_distance/rank 0", lambda: losses.angular_distance(f32(), f32()),
     AssertionError, says("`predictions`", "(..., 2)")),
    ("angular_distance/last dim 3", lambda: losses.angular_distance(f32(4, 3), f32(4, 3)),
     AssertionError, says("`predictions`", "(4, 3)", "(..., 2)")),
    ("angular_distance/mismatch", lambda: losses.angular_distance(f32(4, 2), f32(4, 3)),
     AssertionError, says("`predictions` (4, 2)", "`targets` (4, 3)", "(..., 2)")),
    ("angular_distance/int targets", lambda: losses.angular_distance(f32(4, 2), i32(4, 2)),
     TypeError, says("`targets`", "floating-point")),
    ("angular_loss/mismatch", lambda: losses.angular_loss(f32(2, 8, 8, 2), f32(2, 8, 7, 2)),
     AssertionError, says("`predictions` (2, 8, 8, 2)", "`targets` (2, 8, 7, 2)", "(..., 2)")),
    ("angular_loss/int predictions", lambda: losses.angular_loss(i32(3, 2), f32(3, 2)),
     TypeError, says("`predictions`", "floating-point")),
    ("angular_loss/bool predictions", lambda: losses.angular_loss(np.ones((3, 2), bool), f32(3, 2)),
     TypeError, says("`predictions`", "floating-point")),
    ("angular_loss/mask shape", lambda: losses.angular_loss(f32(3, 2), f32(3, 2), mask=f32(4)),
     AssertionError, says("`mask` must have shape (3,)", "got (4,)")),
    ("angular_loss/mask keeps last axis", lambda: losses.angular_loss(f32(3, 2), f32(3, 2), mask=f32(3, 2)),
     AssertionError, says("`mask` must have shape (3,)", "got (3, 2)")),
    ("angular_loss/negative delta", lambda: losses.angular_loss(f32(3, 2), f32(3, 2), delta=-0.5),
     ValueError, says("`delta` must be >= 0")),
    ("angular_loss/delta not a number", lambda: losses.angular_loss(f32(3, 2), f32(3, 2), delta="big"),
     TypeError, says("`delta`", "scalar")),
    ("angular_loss/reduction", lambda: losses.angular_loss(f32(3, 2), f32(3, 2), reduction="avg"),
     ValueError, says("`reduction`", "'mean', 'sum', 'none'")),
    ("encode_orientation/int angle", lambda: losses.encode_orientation(i32(3)),
     TypeError, says("`angle`", "floating-point")),
    ("decode_orientation/last dim 3", lambda: losses.decode_orientation(f32(4, 3)),
     AssertionError, says("`vectors` (4, 3)", "(..., 2)")),
    ("decode_orientation/rank 0", lambda: losses.decode_orientation(f32()),
     AssertionError, says("`vectors` ()", "(..., 2)")),
    ("decode_orientation/int", lambda: losses.decode_orientation(i32(4, 2)),
     TypeError, says("`vectors`", "floating-point")),
    ("orientation_metrics/mismatch", lambda: losses.orientation_metrics(f32(5, 2), f32(4, 2)),
     AssertionError, says("`predictions` (5, 2)", "`targets` (4, 2)", "(..., 2)")),
    ("orientation_metrics/mask shape", lambda: losses.orientation_metrics(f32(3, 2), f32(3, 2), mask=f32(3, 1)),
     AssertionError, says("`mask` must have shape (3,)", "got (3, 1)")),
    ("orientation_metrics/int", lambda: losses.orientation_metrics(f32(3, 2), i32(3, 2)),
     TypeError, says("`targets`", "floating-point")),

    # PROPEL: predictions (B, I, 2D) with I, D >= 1; targets (B, D); log_weights (B, I).
    ("propel_loss/predictions rank 2", lambda: losses.propel_loss(f32(4, 3), f32(4, 2)),
     AssertionError, says("`predictions` must have shape (B, I, 2D)", "got (4, 3)")),
    ("propel_loss/predictions rank 4", lambda: losses.propel_loss(f32(4, 3, 4, 4), f32(4, 2)),
     AssertionError, says("`predictions` must have shape (B, I, 2D)", "got (4, 3, 4, 4)")),
    ("propel_loss/odd last dim", lambda: losses.propel_loss(f32(4, 3, 5), f32(4, 2)),
     ValueError, says("`predictions` must have shape (B, I, 2D)", "got (4, 3, 5)")),
    ("propel_loss/empty last dim", lambda: losses.propel_loss(f32(4, 3, 0), f32(4, 0)),
     ValueError, says("`predictions` must have shape (B, I, 2D)", "D >= 1", "got (4, 3, 0)")),
    ("propel_loss/no components", lambda: losses.propel_loss(f32(4, 0, 4), f32(4, 2)),
     ValueError, says("`predictions` must have shape (B, I, 2D)", "I >= 1", "got (4, 0, 4)")),
    ("propel_loss/targets D", lambda: losses.propel_loss(f32(4, 3, 4), f32(4, 3)),
     AssertionError, says("`targets` (4, 3)", "(B, D) = (4, 2)", "`predictions` (4, 3, 4)")),
    ("propel_loss/targets B", lambda: losses.propel_loss(f32(4, 3, 4), f32(5, 2)),
     AssertionError, says("`targets` (5, 2)", "(B, D) = (4, 2)")),
    ("propel_loss/targets rank 1", lambda: losses.propel_loss(f32(4, 3, 2), f32(4)),
     AssertionError, says("`targets` (4,)", "(B, D) = (4, 1)")),
    ("propel_loss/int predictions", lambda: losses.propel_loss(i32(2, 1, 2), f32(2, 1)),
     TypeError, says("`predictions`", "floating-point")),
    ("propel_loss/int targets", lambda: losses.propel_loss(f32(2, 1, 2), i32(2, 1)),
     TypeError, says("`targets`", "floating-point")),
    ("propel_loss/sigma 0", lambda: losses.propel_loss(f32(2, 1, 2), f32(2, 1), sigma=0.0),
     ValueError, says("`sigma` must be > 0")),
    ("propel_loss/sigma nan", lambda: losses.propel_loss(f32(2, 1, 2), f32(2, 1), sigma=float("nan")),
     ValueError, says("`sigma` must be > 0")),
    ("propel_loss/reduction", lambda: losses.propel_loss(f32(2, 1, 2), f32(2, 1), reduction="max"),
     ValueError, says("`reduction`")),
    ("propel_loss/log_weights I", lambda: losses.propel_loss(f32(4, 3, 4), f32(4, 2), log_weights=f32(4, 2)),
     AssertionError, says("`log_weights` (4, 2) must have shape (B, I) = (4, 3)")),
    ("propel_loss/log_weights rank 1", lambda: losses.propel_loss(f32(4, 3, 4), f32(4, 2), log_weights=f32(3)),
     AssertionError, says("`log_weights` (3,) must have shape (B, I) = (4, 3)")),
    ("propel_loss/int log_weights", lambda: losses.propel_loss(f32(4, 3, 4), f32(4, 2), log_weights=i32(4, 3)),
     TypeError, says("`log_weights`", "floating-point")),
    ("propel_loss/unnormalised log_weights", lambda: losses.propel_loss(f32(4, 3, 4), f32(4, 2),
                                                                        log_weights=f32(4, 3)),
     ValueError, says("`log_weights` must be normalised log mixture weights", "got 2.099 for example 0")),
    ("split_mixture/odd last dim", lambda: losses.split_mixture(f32(2, 3, 3)),
     ValueError, says("`predictions` must have shape (B, I, 2D)", "got (2, 3, 3)")),
    ("split_mixture/int", lambda: losses.split_mixture(i32(2, 3, 4)),
     TypeError, says("`predictions`", "floating-point")),
    ("constrain_mixture/rank", lambda: losses.constrain_mixture(f32(3, 4)),
     AssertionError, says("`raw` must have shape (B, I, 2D)", "got (3, 4)")),
    ("constrain_mixture/int", lambda: losses.constrain_mixture(i32(2, 3, 4)),
     TypeError, says("`raw`", "floating-point")),
    ("constrain_mixture/negative min_std", lambda: losses.constrain_mixture(f32(2, 3, 4), min_std=-1.0),
     ValueError, says("`min_std` must be >= 0")),
    ("mixture_log_density/targets D", lambda: losses.mixture_log_density(f32(2, 3, 4), f32(2, 3)),
     AssertionError, says("`targets` (2, 3)", "(B, D) = (2, 2)")),
    ("mixture_log_density/log_weights", lambda: losses.mixture_log_density(f32(2, 3, 4), f32(2, 2),
                                                                           log_weights=f32(2, 2)),
     AssertionError, says("`log_weights` (2, 2)", "(B, I) = (2, 3)")),
    ("mixture_log_density/int targets", lambda: losses.mixture_log_density(f32(2, 3, 4), i32(2, 2)),
     TypeError, says("`targets`", "floating-point")),
    ("mixture_log_density/no components", lambda: losses.mixture_log_density(f32(2, 0, 4), f32(2, 2)),
     ValueError, says("`predictions`", "I >= 1", "got (2, 0, 4)")),
    ("mixture_mean/log_weights", lambda: losses.mixture_mean(f32(2, 3, 4), log_weights=f32(3)),
     AssertionError, says("`log_weights` (3,)", "(B, I) = (2, 3)")),
    ("mixture_mean/int log_weights", lambda: losses.mixture_mean(f32(2, 3, 4), log_weights=i32(2, 3)),
     TypeError, says("`log_weights`", "floating-point")),
    ("mixture_mean/rank", lambda: losses.mixture_mean(f32(3, 4)),
     AssertionError, says("`predictions` must have shape (B, I, 2D)", "got (3, 4)")),
    ("log_gaussian_overlap/mismatch", lambda: losses.log_gaussian_overlap(f32(3, 2), f32(3, 2), f32(4, 2), f32(4, 2)),
     ValueError, says("`mean_a` (3, 2)", "`mean_b` (4, 2)", "broadcast", "(..., D)")),
    ("log_gaussian_overlap/scalars", lambda: losses.log_gaussian_overlap(f32(), f32(), f32(), f32()),
     ValueError, says("`mean_a` ()", "(..., D) of rank >= 1")),
    ("log_gaussian_overlap/int", lambda: losses.log_gaussian_overlap(f32(2), f32(2), f32(2), i32(2)),
     TypeError, says("`std_b`", "floating-point")),

    # Multi-task weighting: scalars, (B,) losses and (N,) vectors.
    ("trainable_alpha_loss/alpha rank", lambda: losses.trainable_alpha_loss(f32(2), 1.0, 1.0),
     AssertionError, says("`alpha` must have shape ()", "got (2,)")),
    ("trainable_alpha_loss/int alpha", lambda: losses.trainable_alpha_loss(np.int32(1), 1.0, 1.0),
     TypeError, says("`alpha`", "floating-point")),
    ("trainable_alpha_loss/loss_1 rank", lambda: losses.trainable_alpha_loss(0.5, f32(2, 3), 1.0),
     AssertionError, says("`loss_1` must have shape () or (B,)", "got (2, 3)")),
    ("trainable_alpha_loss/int loss_2", lambda: losses.trainable_alpha_loss(0.5, 1.0, i32()),
     TypeError, says("`loss_2`", "floating-point")),
    ("balanced_weights_loss/weights rank", lambda: losses.balanced_weights_loss(f32(2, 2), f32(2)),
     AssertionError, says("`weights` must have shape (N,)", "got (2, 2)")),
    ("balanced_weights_loss/mismatch", lambda: losses.balanced_weights_loss(f32(2), f32(3)),
     AssertionError, says("`task_losses` must have shape (N,) = (2,)", "`weights` (2,)", "got (3,)")),
    ("balanced_weights_loss/int", lambda: losses.balanced_weights_loss(f32(2), i32(2)),
     TypeError, says("`task_losses`", "floating-point")),
    ("uncertainty_weighted_loss/mismatch", lambda: losses.uncertainty_weighted_loss(f32(2), f32(3)),
     AssertionError, says("`task_losses` must have shape (N,) = (2,)", "`log_variances` (2,)", "got (3,)")),
    ("uncertainty_weighted_loss/rank", lambda: losses.uncertainty_weighted_loss(f32(), f32()),
     AssertionError, says("`log_variances` must have shape (N,)", "got ()")),
    ("uncertainty_weighted_loss/int", lambda: losses.uncertainty_weighted_loss(i32(2), f32(2)),
     TypeError, says("`log_variances`", "floating-point")),
    ("dwa_weights/scalars", lambda: losses.dwa_weights(f32(), f32()),
     AssertionError, says("`previous_losses` must have shape (N,)", "got ()")),
    ("dwa_weights/mismatch", lambda: losses.dwa_weights(f32(2), f32(3)),
     AssertionError, says("`before_previous_losses` must have shape (N,) = (2,)", "`previous_losses` (2,)",
                          "got (3,)")),
    ("dwa_weights/int", lambda: losses.dwa_weights(f32(2), i32(2)),
     TypeError, says("`before_previous_losses`", "floating-point")),
    ("dwa_weights/temperature", lambda: losses.dwa_weights(f32(2), f32(2), temperature=0.0),
     ValueError, says("`temperature` must be > 0")),
    ("gradient_aggregator/name", lambda: losses.gradient_aggregator("summ"), ValueError, "summ"),
    ("gradient_aggregator/missing option", lambda: losses.gradient_aggregator("cagrad"), ValueError, "c"),
    ("loss_weighting/name", lambda: losses.loss_weighting("gradnorm", num_tasks=2),
     ValueError, says("Unknown loss weighting 'gradnorm'")),
    ("loss_weighting/num_tasks 0", lambda: losses.loss_weighting("trainable", num_tasks=0),
     ValueError, says("`num_tasks` must be >= 1")),
    ("loss_weighting/num_tasks float", lambda: losses.loss_weighting("trainable", num_tasks=2.0),
     TypeError, says("`num_tasks`", "int")),
    ("loss_weighting/weights", lambda: losses.loss_weighting("fixed", num_tasks=3, weights=(0.5, 0.5)),
     ValueError, says("`weights` must have shape (N,) = (3,)", "got (2,)")),
    ("loss_weighting/option", lambda: losses.loss_weighting("dwa", num_tasks=2, dwa_period=2),
     ValueError, says("'dwa' has no option ['dwa_period']")),
    ("loss_weighting/dwa period", lambda: losses.loss_weighting("dwa", num_tasks=2, period=0),
     ValueError, says("`period` must be >= 1")),
    ("loss_weighting/dwa temperature", lambda: losses.loss_weighting("dwa", num_tasks=2, temperature=-1.0),
     ValueError, says("`temperature` must be > 0")),
] + [
    (f"loss_weighting/{name} combine task_losses", lambda name=name: combine_three_losses_for_two_tasks(name),
     AssertionError, says("`task_losses` must have shape (N,) = (2,)", "got (3,)"))
    for name in ("fixed", "trainable", "uncertainty", "dwa")
] + [
    # Instances: integer (B, H, W) label maps, float (B, H, W, C) embeddings.
    ("semi_conv_loss/float labels", lambda: losses.semi_conv_loss(EMBEDDINGS, LABELS.astype(np.float32),
                                                                  max_instances=5),
     TypeError, says("`labels`", "integer", "(B, H, W)")),
    ("semi_conv_loss/bool labels", lambda: losses.semi_conv_loss(EMBEDDINGS, LABELS > 0, max_instances=5),
     TypeError, says("`labels`", "integer", "(B, H, W)")),
    ("semi_conv_loss/labels rank", lambda: losses.semi_conv_loss(EMBEDDINGS[0], LABELS[0], max_instances=5),
     AssertionError, says("`labels` must have shape (B, H, W)", "got (2, 2)")),
    ("semi_conv_loss/embeddings rank", lambda: losses.semi_conv_loss(EMBEDDINGS[..., 0], LABELS, max_instances=5),
     AssertionError, says("`embeddings` must have shape (B, H, W, C)", "`labels` (1, 2, 2)", "got (1, 2, 2)")),
    ("semi_conv_loss/mismatch", lambda: losses.semi_conv_loss(f32(1, 2, 3, 3), LABELS, max_instances=5),
     AssertionError, says("`embeddings` must have shape (B, H, W, C)", "`labels` (1, 2, 2)", "got (1, 2, 3, 3)")),
    ("semi_conv_loss/no channels", lambda: losses.semi_conv_loss(f32(1, 2, 2, 0), LABELS, max_instances=5),
     ValueError, says("`embeddings` must have shape (B, H, W, C) with C >= 1", "got (1, 2, 2, 0)")),
    ("semi_conv_loss/int embeddings", lambda: losses.semi_conv_loss(i32(1, 2, 2, 3), LABELS, max_instances=5),
     TypeError, says("`embeddings`", "floating-point")),
    ("semi_conv_loss/id above max_instances", lambda: losses.semi_conv_loss(EMBEDDINGS, LABELS, max_instances=4),
     ValueError, says("`labels` must hold ids in [0, 4], found [0, 5]", "`max_instances`")),
    ("semi_conv_loss/negative id", lambda: losses.semi_conv_loss(EMBEDDINGS, -LABELS, max_instances=5),
     ValueError, says("`labels` must hold ids in [0, 5], found [-5, 0]")),
    ("semi_conv_loss/negative max_instances", lambda: losses.semi_conv_loss(EMBEDDINGS, 0 * LABELS, max_instances=-1),
     ValueError, says("`max_instances` must be >= 0")),
    ("semi_conv_loss/float max_instances", lambda: losses.semi_conv_loss(EMBEDDINGS, LABELS, max_instances=5.0),
     TypeError, says("`max_instances`", "int")),
    ("semi_conv_loss/float background", lambda: losses.semi_conv_loss(EMBEDDINGS, LABELS, max_instances=5,
                                                                      background=0.5),
     TypeError, says("`background`", "int")),
    ("semi_conv_kernel_loss/labels rank", lambda: losses.semi_conv_kernel_loss(
        EMBEDDINGS, LABELS[0], sigma=1.0, key=jax.random.key(0), max_instances=5),
     AssertionError, says("`labels` must have shape (B, H, W)", "got (2, 2)")),
    ("semi_conv_kernel_loss/kernel", lambda: losses.semi_conv_kernel_loss(
        EMBEDDINGS, LABELS, sigma=1.0, key=jax.random.key(0), max_instances=5, kernel="box"),
     ValueError, says("`kernel` must be one of")),
    ("semi_conv_kernel_loss/sigma", lambda: losses.semi_conv_kernel_loss(
        EMBEDDINGS, LABELS, sigma=0.0, key=jax.random.key(0), max_instances=5),
     ValueError, says("`sigma` must be > 0")),
    ("semi_conv_kernel_loss/num_seeds", lambda: losses.semi_conv_kernel_loss(
        EMBEDDINGS, LABELS, sigma=1.0, key=jax.random.key(0), max_instances=5, num_seeds=0),
     ValueError, says("`num_seeds` must be >= 1")),
    ("semi_conv_kernel_loss/key", lambda: losses.semi_conv_kernel_loss(
        EMBEDDINGS, LABELS, sigma=1.0, key=np.zeros(3, np.uint32), max_instances=5),
     TypeError, says("`key` must be a PRNG key")),
    ("extract_kernel_instances/foreground rank", lambda: losses.extract_kernel_instances(
        f32(2, 2), EMBEDDINGS, sigma=1.0, max_instances=3),
     AssertionError, says("`foreground` must have shape (B, H, W)", "got (2, 2)")),
    ("extract_kernel_instances/kernel", lambda: losses.extract_kernel_instances(
        f32(1, 2, 2), EMBEDDINGS, sigma=1.0, max_instances=3, kernel="box"),
     ValueError, says("`kernel` must be one of")),
    ("semi_conv_loss/reduction", lambda: losses.semi_conv_loss(EMBEDDINGS, LABELS, max_instances=5, reduction="avg"),
     ValueError, says("`reduction`")),
    ("discriminative_loss/mismatch", lambda: losses.discriminative_loss(f32(1, 2, 3, 3), LABELS, max_instances=5),
     AssertionError, says("`embeddings`", "`labels` (1, 2, 2)", "got (1, 2, 3, 3)")),
    ("discriminative_loss/id above max_instances",
     lambda: losses.discriminative_loss(EMBEDDINGS, LABELS, max_instances=4),
     ValueError, says("`labels`", "[0, 4]", "raise `max_instances`")),
    ("discriminative_loss/negative delta_v",
     lambda: losses.discriminative_loss(EMBEDDINGS, LABELS, max_instances=5, delta_v=-1.0),
     ValueError, says("`delta_v` must be >= 0")),
    ("discriminative_loss/reduction",
     lambda: losses.discriminative_loss(EMBEDDINGS, LABELS, max_instances=5, reduction="avg"),
     ValueError, says("`reduction`")),
    ("spatial_embedding_loss/sigmas mismatch",
     lambda: losses.spatial_embedding_loss(EMBEDDINGS, f32(1, 2, 3), f32(1, 2, 2), LABELS, max_instances=5),
     AssertionError, says("`sigmas` must have shape (B, H, W) or (B, H, W, C)", "`embeddings` (1, 2, 2, 3)",
                          "got (1, 2, 3)")),
    ("spatial_embedding_loss/sigmas channels",
     lambda: losses.spatial_embedding_loss(EMBEDDINGS, f32(1, 2, 2, 2), f32(1, 2, 2), LABELS, max_instances=5),
     AssertionError, says("`sigmas` must have shape (B, H, W) or (B, H, W, C)", "got (1, 2, 2, 2)")),
    ("spatial_embedding_loss/sigmas rank",
     lambda: losses.spatial_embedding_loss(EMBEDDINGS, f32(1, 2), f32(1, 2, 2), LABELS, max_instances=5),
     AssertionError, says("`sigmas` must have shape (B, H, W) or (B, H, W, C)", "got (1, 2)")),
    ("spatial_embedding_loss/int sigmas",
     lambda: losses.spatial_embedding_loss(EMBEDDINGS, i32(1, 2, 2), f32(1, 2, 2), LABELS, max_instances=5),
     TypeError, says("`sigmas`", "floating-point")),
    ("spatial_embedding_loss/seeds mismatch",
     lambda: losses.spatial_embedding_loss(EMBEDDINGS, f32(1, 2, 2), f32(1, 2, 2, 1), LABELS, max_instances=5),
     AssertionError, says("`seeds` must have shape (B, H, W)", "`labels` (1, 2, 2)", "got (1, 2, 2, 1)")),
    ("spatial_embedding_loss/int seeds",
     lambda: losses.spatial_embedding_loss(EMBEDDINGS, f32(1, 2, 2), i32(1, 2, 2), LABELS, max_instances=5),
     TypeError, says("`seeds`", "floating-point")),
    ("spatial_embedding_loss/embeddings mismatch",
     lambda: losses.spatial_embedding_loss(f32(1, 2, 3, 3), f32(1, 2, 3), f32(1, 2, 2), LABELS, max_instances=5),
     AssertionError, says("`embeddings`", "`labels` (1, 2, 2)", "got (1, 2, 3, 3)")),
    ("spatial_embedding_loss/float labels",
     lambda: losses.spatial_embedding_loss(EMBEDDINGS, f32(1, 2, 2), f32(1, 2, 2), LABELS.astype(np.float32),
                                           max_instances=5),
     TypeError, says("`labels`", "integer", "(B, H, W)")),
    ("spatial_embedding_loss/id above max_instances",
     lambda: losses.spatial_embedding_loss(EMBEDDINGS, f32(1, 2, 2), f32(1, 2, 2), LABELS, max_instances=4),
     ValueError, says("`labels`", "[0, 4]", "raise `max_instances`")),
    ("spatial_embedding_loss/coordinates shape",
     lambda: losses.spatial_embedding_loss(EMBEDDINGS, f32(1, 2, 2), f32(1, 2, 2), LABELS, max_instances=5,
                                           coordinates=f32(2, 2, 2)),
     AssertionError, says("`coordinates` must have shape (H, W, C) or (B, H, W, C)", "`embeddings` (1, 2, 2, 3)",
                          "got (2, 2, 2)")),
    ("spatial_embedding_loss/negative sigma_weight",
     lambda: losses.spatial_embedding_loss(EMBEDDINGS, f32(1, 2, 2), f32(1, 2, 2), LABELS, max_instances=5,
                                           sigma_weight=-1.0),
     ValueError, says("`sigma_weight` must be >= 0")),
    ("spatial_embedding_loss/float max_instances",
     lambda: losses.spatial_embedding_loss(EMBEDDINGS, f32(1, 2, 2), f32(1, 2, 2), LABELS, max_instances=5.0),
     TypeError, says("`max_instances`", "int")),
    ("spatial_embedding_loss/reduction",
     lambda: losses.spatial_embedding_loss(EMBEDDINGS, f32(1, 2, 2), f32(1, 2, 2), LABELS, max_instances=5,
                                           reduction="avg"),
     ValueError, says("`reduction`")),
    ("f2_iou_score/float true_labels", lambda: losses.f2_iou_score(LABELS, LABELS.astype(np.float32)),
     TypeError, says("`true_labels`", "integer", "(B, H, W)")),
    ("f2_iou_score/float pred_labels", lambda: losses.f2_iou_score(LABELS.astype(np.float32), LABELS),
     TypeError, says("`pred_labels`", "integer", "(B, H, W)")),
    ("f2_iou_score/rank", lambda: losses.f2_iou_score(LABELS[0], LABELS),
     AssertionError, says("`pred_labels` must have shape (B, H, W)", "got (2, 2)")),
    ("f2_iou_score/mismatch", lambda: losses.f2_iou_score(i32(1, 2, 3), LABELS),
     AssertionError, says("`pred_labels` must have shape (B, H, W)", "`true_labels` (1, 2, 2)", "got (1, 2, 3)")),
    ("f2_iou_score/negative id", lambda: losses.f2_iou_score(-LABELS, LABELS),
     ValueError, says("`pred_labels` must hold ids >= 0, found [-5, 0]")),
    ("f2_iou_score/negative true id", lambda: losses.f2_iou_score(LABELS, -LABELS),
     ValueError, says("`true_labels` must hold ids >= 0, found [-5, 0]")),
    ("f2_iou_score/too many true objects", lambda: losses.f2_iou_score(np.minimum(LABELS, 2), LABELS,
                                                                       max_instances=2),
     ValueError, says("`true_labels` has an image with 3 objects, more than `max_instances`=2.")),
    ("f2_iou_score/too many predicted objects", lambda: losses.f2_iou_score(LABELS, LABELS, max_instances=2),
     ValueError, says("`pred_labels` has an image with 3 objects, more than `max_instances`=2.")),
    ("f2_iou_score/negative max_instances", lambda: losses.f2_iou_score(LABELS, LABELS, max_instances=-1),
     ValueError, says("`max_instances` must be >= 0")),
    ("f2_iou_score/no thresholds", lambda: losses.f2_iou_score(LABELS, LABELS, thresholds=()),
     ValueError, says("`thresholds` must have shape (T,) with T >= 1", "got (0,)")),
    ("f2_iou_score/threshold below 0.5", lambda: losses.f2_iou_score(LABELS, LABELS, thresholds=(0.3, 0.5)),
     ValueError, says("`thresholds` must lie in [0.5, 1)")),
    ("f2_iou_score/reduction", lambda: losses.f2_iou_score(LABELS, LABELS, reduction="max"),
     ValueError, says("`reduction`")),
    ("average_precision/float true_labels", lambda: losses.average_precision(LABELS, LABELS.astype(np.float32)),
     TypeError, says("`true_labels`", "integer", "(B, H, W)")),
    ("average_precision/mismatch", lambda: losses.average_precision(i32(1, 2, 3), LABELS),
     AssertionError, says("`pred_labels` must have shape (B, H, W)", "`true_labels` (1, 2, 2)", "got (1, 2, 3)")),
    ("average_precision/too many objects", lambda: losses.average_precision(LABELS, LABELS, max_instances=2),
     ValueError, says("`pred_labels` has an image with 3 objects, more than `max_instances`=2.")),
    ("average_precision/threshold below 0.5", lambda: losses.average_precision(LABELS, LABELS, thresholds=(0.3,)),
     ValueError, says("`thresholds` must lie in [0.5, 1)")),
    ("average_precision/reduction", lambda: losses.average_precision(LABELS, LABELS, reduction="max"),
     ValueError, says("`reduction`")),
    ("matching_counts/rank", lambda: losses.matching_counts(LABELS, LABELS[0]),
     AssertionError, says("`true_labels` must have shape (B, H, W)", "got (2, 2)")),
    ("matching_counts/negative id", lambda: losses.matching_counts(LABELS, -LABELS),
     ValueError, says("`true_labels` must hold ids >= 0, found [-5, 0]")),
    ("matching_counts/mean", lambda: losses.matching_counts(LABELS, LABELS, reduction="mean"),
     ValueError, says("`reduction` must be one of ('sum', 'none')")),
    ("pooled_scores/not counts", lambda: losses.pooled_scores((i32(3), i32(3))),
     TypeError, says("`counts` must be a MatchingCounts")),
    ("pooled_scores/shapes", lambda: losses.pooled_scores(losses.MatchingCounts(i32(3), i32(3), i32(2))),
     AssertionError, says("`counts`", "`false_negatives` (2,)")),

    # The semi-convolutional operator, extraction and connected components.
    ("semi_convolution/one channel", lambda: losses.semi_convolution(f32(1, 2, 2, 1)),
     ValueError, says("`embeddings` must have shape (B, H, W, C) with C >= 2", "got (1, 2, 2, 1)")),
    ("semi_convolution/rank", lambda: losses.semi_convolution(f32(2, 2, 2)),
     AssertionError, says("`embeddings` must have shape (B, H, W, C) with C >= 2", "got (2, 2, 2)")),
    ("semi_convolution/int embeddings", lambda: losses.semi_convolution(i32(1, 2, 2, 2)),
     TypeError, says("`embeddings`", "floating-point")),
    ("semi_convolution/scale not a scalar", lambda: losses.semi_convolution(f32(1, 2, 2, 2), scale=f32(2)),
     TypeError, says("`scale`", "scalar")),
    ("extract_instances/foreground rank", lambda: losses.extract_instances(f32(2, 2), EMBEDDINGS, max_instances=3,
                                                                           distance=1.0),
     AssertionError, says("`foreground` must have shape (B, H, W)", "got (2, 2)")),
    ("extract_instances/int foreground", lambda: losses.extract_instances(i32(1, 2, 2), EMBEDDINGS, max_instances=3,
                                                                          distance=1.0),
     TypeError, says("`foreground`", "floating-point")),
    ("extract_instances/embeddings rank", lambda: losses.extract_instances(f32(1, 2, 2), f32(1, 2, 2),
                                                                           max_instances=3, distance=1.0),
     AssertionError, says("`embeddings` must have shape (B, H, W, C)", "`foreground` (1, 2, 2)", "got (1, 2, 2)")),
    ("extract_instances/mismatch", lambda: losses.extract_instances(f32(1, 2, 3), EMBEDDINGS, max_instances=3,
                                                                    distance=1.0),
     AssertionError, says("`embeddings` must have shape (B, H, W, C)", "`foreground` (1, 2, 3)", "got (1, 2, 2, 3)")),
    ("extract_instances/no channels", lambda: losses.extract_instances(f32(1, 2, 2), f32(1, 2, 2, 0),
                                                                       max_instances=3, distance=1.0),
     ValueError, says("`embeddings`", "C >= 1", "got (1, 2, 2, 0)")),
    ("extract_instances/max_instances", lambda: losses.extract_instances(f32(1, 2, 2), EMBEDDINGS, max_instances=-1,
                                                                         distance=1.0),
     ValueError, says("`max_instances` must be >= 0")),
    ("extract_instances/distance", lambda: losses.extract_instances(f32(1, 2, 2), EMBEDDINGS, max_instances=3,
                                                                    distance=-1.0),
     ValueError, says("`distance` must be >= 0")),
    ("extract_spatial_instances/seeds rank",
     lambda: losses.extract_spatial_instances(EMBEDDINGS, f32(1, 2, 2), f32(2, 2), max_instances=3),
     AssertionError, says("`seeds` must have shape (B, H, W)", "got (2, 2)")),
    ("extract_spatial_instances/int seeds",
     lambda: losses.extract_spatial_instances(EMBEDDINGS, f32(1, 2, 2), i32(1, 2, 2), max_instances=3),
     TypeError, says("`seeds`", "floating-point")),
    ("extract_spatial_instances/embeddings mismatch",
     lambda: losses.extract_spatial_instances(EMBEDDINGS, f32(1, 2, 3), f32(1, 2, 3), max_instances=3),
     AssertionError, says("`embeddings` must have shape (B, H, W, C)", "`seeds` (1, 2, 3)", "got (1, 2, 2, 3)")),
    ("extract_spatial_instances/sigmas mismatch",
     lambda: losses.extract_spatial_instances(EMBEDDINGS, f32(1, 3, 2), f32(1, 2, 2), max_instances=3),
     AssertionError, says("`sigmas` must have shape (B, H, W) or (B, H, W, C)", "got (1, 3, 2)")),
    ("extract_spatial_instances/min_pixels",
     lambda: losses.extract_spatial_instances(EMBEDDINGS, f32(1, 2, 2), f32(1, 2, 2), max_instances=3, min_pixels=0),
     ValueError, says("`min_pixels` must be >= 1")),
    ("extract_spatial_instances/max_rounds",
     lambda: losses.extract_spatial_instances(EMBEDDINGS, f32(1, 2, 2), f32(1, 2, 2), max_instances=3,
                                              max_rounds=2.0),
     TypeError, says("`max_rounds`", "int")),
    ("extract_spatial_instances/max_instances",
     lambda: losses.extract_spatial_instances(EMBEDDINGS, f32(1, 2, 2), f32(1, 2, 2), max_instances=-1),
     ValueError, says("`max_instances` must be >= 0")),
    ("connected_components/rank", lambda: losses.connected_components(np.ones((4, 4), bool)),
     AssertionError, says("`mask` must have shape (B, H, W)", "got (4, 4)")),
    ("connected_components/float mask", lambda: losses.connected_components(f32(1, 4, 4)),
     TypeError, says("`mask` must be a boolean (B, H, W)", "float32")),
    ("connected_components/int mask", lambda: losses.connected_components(i32(1, 4, 4)),
     TypeError, says("`mask` must be a boolean (B, H, W)", "int32")),
    ("pixel_coordinates/negative", lambda: losses.pixel_coordinates(-1, 3),
     ValueError, says("`height` must be >= 0")),
    ("pixel_coordinates/float", lambda: losses.pixel_coordinates(4, 2.5),
     TypeError, says("`width`", "int")),
]

PUBLIC = sorted(set(losses.__all__) - {"LossWeighting", "AGGREGATOR_NAMES", "LOSS_WEIGHTING_NAMES", "scalarization",
                                        "aggregation", "MatchingCounts", "PooledScores"})


def test_every_public_function_has_bad_input_cases():
  covered = {case_id.split("/")[0] for case_id, *_ in CASES}
  assert set(PUBLIC) <= covered, sorted(set(PUBLIC) - covered)


@pytest.mark.parametrize("call, exception, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_a_clear_error(call, exception, message):
  with pytest.raises(exception, match=message):
    call()


# The same errors at trace time inside jit, before anything is compiled.
JITTED_CASES = [
    ("angular_loss", lambda: jax.jit(losses.angular_loss)(f32(4, 2), f32(4, 3)),
     AssertionError, says("`predictions` (4, 2)", "`targets` (4, 3)", "(..., 2)")),
    ("propel_loss", lambda: jax.jit(losses.propel_loss)(f32(4, 3, 4), f32(4, 3)),
     AssertionError, says("`targets` (4, 3)", "(B, D) = (4, 2)")),
    ("propel_loss/log_weights", lambda: jax.jit(losses.propel_loss)(f32(4, 3, 4), f32(4, 2), log_weights=f32(4, 2)),
     AssertionError, says("`log_weights` (4, 2) must have shape (B, I) = (4, 3)")),
    ("semi_conv_loss", lambda: jax.jit(lambda e, l: losses.semi_conv_loss(e, l, max_instances=5))(f32(1, 2, 2), LABELS),
     AssertionError, says("`embeddings` must have shape (B, H, W, C)")),
    ("f2_iou_score", lambda: jax.jit(losses.f2_iou_score)(LABELS.astype(np.float32), LABELS),
     TypeError, says("`pred_labels`", "integer")),
    ("trainable_alpha_loss", lambda: jax.jit(losses.trainable_alpha_loss)(f32(2), 1.0, 1.0),
     AssertionError, says("`alpha` must have shape ()")),
    ("extract_instances", lambda: jax.jit(lambda f, e: losses.extract_instances(f, e, max_instances=2, distance=1.0))(
        f32(1, 2, 3), EMBEDDINGS), AssertionError, says("`embeddings`", "`foreground` (1, 2, 3)")),
    ("spatial_embedding_loss", lambda: jax.jit(lambda e, s, z: losses.spatial_embedding_loss(
        e, s, z, LABELS, max_instances=5))(EMBEDDINGS, f32(1, 2, 2, 2), f32(1, 2, 2)),
     AssertionError, says("`sigmas` must have shape (B, H, W) or (B, H, W, C)", "got (1, 2, 2, 2)")),
    ("extract_spatial_instances", lambda: jax.jit(lambda e, s, z: losses.extract_spatial_instances(
        e, s, z, max_instances=2))(EMBEDDINGS, f32(1, 2, 2), f32(1, 2, 3)),
     AssertionError, says("`embeddings`", "`seeds` (1, 2, 3)")),
    ("semi_convolution", lambda: jax.jit(losses.semi_convolution)(f32(1, 2, 2, 1)),
     ValueError, says("`embeddings` must have shape (B, H, W, C) with C >= 2", "got (1, 2, 2, 1)")),
]


@pytest.mark.parametrize("call, exception, message", [case[1:] for case in JITTED_CASES],
                         ids=[case[0] for case in JITTED_CASES])
def test_bad_input_is_a_clear_error_inside_jit(call, exception, message):
  with pytest.raises(exception, match=message):
    call()


# Documented behaviours: empty batches. Each test runs one jitted function (one cheap
# compilation, the shapes being empty) and checks what it returns.

@jax.jit
def _empty_angular(empty, y):
  value, gradient = jax.value_and_grad(losses.angular_loss)(empty, empty)
  masked, masked_gradient = jax.value_and_grad(losses.angular_loss)(-y, y, mask=jnp.zeros(3, bool))
  return dict(value=value, gradient=gradient, sum=losses.angular_loss(empty, empty, reduction="sum"),
              none=losses.angular_loss(empty, empty, reduction="none"), masked=masked,
              masked_gradient=masked_gradient, metrics=losses.orientation_metrics(empty, empty),
              encoded=losses.encode_orientation(empty[..., 0]), decoded=losses.decode_orientation(empty))


def test_empty_batches_angular():
  """The "mean" over no pixels (an empty batch, or all masked) is 0 with a zero gradient; "sum" 0; "none" empty."""
  out = _empty_angular(jnp.ones((0, 4, 4, 2)), jnp.ones((3, 2)))
  assert out["value"] == 0.0 and out["gradient"].shape == (0, 4, 4, 2)
  assert out["sum"] == 0.0 and out["none"].shape == (0, 4, 4)
  assert out["masked"] == 0.0 and not out["masked_gradient"].any()
  assert all(metric == 0.0 for metric in out["metrics"].values())
  assert out["encoded"].shape == (0, 4, 4, 2) and out["decoded"].shape == (0, 4, 4)


@jax.jit
def _empty_propel(pred, target):
  value, gradient = jax.value_and_grad(losses.propel_loss)(pred, target)
  return dict(value=value, gradient=gradient, sum=losses.propel_loss(pred, target, reduction="sum"),
              none=losses.propel_loss(pred, target, reduction="none"),
              density=losses.mixture_log_density(pred, target), mean=losses.mixture_mean(pred),
              constrained=losses.constrain_mixture(pred))


def test_empty_batches_propel():
  out = _empty_propel(jnp.ones((0, 3, 4)), jnp.ones((0, 2)))
  assert out["value"] == 0.0 and out["gradient"].shape == (0, 3, 4)
  assert out["sum"] == 0.0 and out["none"].shape == (0,)
  assert out["density"].shape == (0,) and out["mean"].shape == (0, 2) and out["constrained"].shape == (0, 3, 4)


@jax.jit
def _empty_instances(labels, embeddings):
  value, gradient = jax.value_and_grad(
      lambda e: losses.semi_conv_loss(e, labels, max_instances=3))(embeddings)
  return dict(value=value, gradient=gradient,
              none=losses.semi_conv_loss(embeddings, labels, max_instances=3, reduction="none"),
              f2=losses.f2_iou_score(labels, labels), f2_none=losses.f2_iou_score(labels, labels, reduction="none"),
              extracted=losses.extract_instances(embeddings[..., 0], embeddings, max_instances=3, distance=1.0),
              components=losses.connected_components(labels == 0),
              semi_convolution=losses.semi_convolution(embeddings, scale=2.0))


@pytest.mark.parametrize("shape", [(0, 4, 4), (2, 0, 4)], ids=["no images", "images without pixels"])
def test_empty_batches_and_images_instances(shape):
  """No instances, no loss; F2: the mean over no images is 0, an image without pixels scores 1."""
  out = _empty_instances(jnp.zeros(shape, jnp.int32), jnp.ones(shape + (2,)))
  assert out["value"] == 0.0 and out["gradient"].shape == shape + (2,)
  np.testing.assert_array_equal(out["none"], np.zeros(shape[0]))
  np.testing.assert_array_equal(out["f2_none"], np.ones(shape[0]))
  assert out["f2"] == (0.0 if shape[0] == 0 else 1.0)
  assert out["extracted"].shape == shape and out["extracted"].dtype == jnp.int32
  assert out["components"].shape == shape
  assert out["semi_convolution"].shape == shape + (2,)
  assert losses.pixel_coordinates(*shape[1:]).shape == shape[1:] + (2,)


@jax.jit
def _empty_spatial(labels, embeddings):
  sigmas, seeds = embeddings[..., 0] + 1.0, embeddings[..., 1]
  value, gradients = jax.value_and_grad(lambda e, s, z: losses.spatial_embedding_loss(
      e, s, z, labels, max_instances=3), argnums=(0, 1, 2))(embeddings, sigmas, seeds)
  return dict(value=value, gradients=gradients,
              none=losses.spatial_embedding_loss(embeddings, sigmas, seeds, labels, max_instances=3, reduction="none"),
              extracted=losses.extract_spatial_instances(embeddings, sigmas, seeds, max_instances=3))


@pytest.mark.parametrize("shape", [(0, 4, 4), (2, 0, 4)], ids=["no images", "images without pixels"])
def test_empty_batches_and_images_spatial(shape):
  """No pixels: the spatial-embedding loss is 0 per image with zero gradients; the extraction finds nothing."""
  out = _empty_spatial(jnp.zeros(shape, jnp.int32), jnp.ones(shape + (2,)))
  assert out["value"] == 0.0
  assert [g.shape for g in out["gradients"]] == [shape + (2,), shape, shape]
  np.testing.assert_array_equal(out["none"], np.zeros(shape[0]))
  assert out["extracted"].shape == shape and out["extracted"].dtype == jnp.int32


def test_empty_label_maps_pass_the_value_checks_outside_jit():
  """The id checks that run where the host holds the ids skip empty label maps instead of reducing over nothing."""
  from losses import _common
  for shape in ((0, 4, 4), (2, 0, 4)):
    assert _common.check_labels(np.zeros(shape, np.int32), "labels", 3).shape == shape


def test_empty_per_example_losses_multitask():
  """An empty (0,) per-example loss averages to 0 (not NaN) with a zero gradient."""
  value, gradient = jax.jit(jax.value_and_grad(losses.trainable_alpha_loss, argnums=1))(
      0.5, jnp.ones(0), jnp.float32(3.0))
  np.testing.assert_allclose(value, (0.5 * 3.0) ** 2 + 0.5 * 3.0)
  assert gradient.shape == (0,)
  assert losses.balanced_weights_loss(jnp.ones(0), jnp.ones(0)) == 0.0


# Documented behaviours: zero vectors and values that cannot be checked inside jit.

def test_zero_vectors_read_as_angle_zero_in_every_quadrant():
  """A zero vector has no direction and reads as θ = 0, also where its products with the other are −0."""
  directions = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 0.0], [0.0, -1.0]], np.float32)
  for zero in (np.zeros_like(directions), -np.zeros_like(directions)):
    np.testing.assert_array_equal(losses.angular_distance(directions, zero), 0.0)
    np.testing.assert_array_equal(losses.angular_distance(zero, directions), 0.0)


@jax.jit
def _semi_conv_jitted(labels, embeddings):
  loss = lambda e: losses.semi_conv_loss(e, labels, max_instances=4, reduction="none")
  return loss(embeddings), jax.grad(lambda e: jnp.sum(loss(e)))(embeddings)


def test_out_of_range_ids_inside_jit_semi_conv_are_ignored_like_background():
  rng = np.random.default_rng(0)
  labels = rng.integers(-2, 7, (2, 6, 6)).astype(np.int32)  # Valid ids are 0..4.
  embeddings = rng.normal(size=(2, 6, 6, 2)).astype(np.float32)
  in_range = np.where((labels < 0) | (labels > 4), 0, labels)
  per_image, gradient = _semi_conv_jitted(labels, embeddings)
  expected, expected_gradient = _semi_conv_jitted(in_range, embeddings)
  np.testing.assert_allclose(per_image, expected, rtol=1e-6)
  np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-6, atol=1e-7)
  assert not gradient[in_range == 0].any()


def test_value_checks_run_where_the_host_holds_the_ids():
  """NumPy arrays, Python lists and CPU arrays outside jit are checked; traced ids are not (the jitted tests nearby)."""
  for held_by_host in (LABELS, LABELS.tolist(), jax.device_put(LABELS, jax.devices("cpu")[0])):
    with pytest.raises(ValueError, match=says("`labels` must hold ids in [0, 4], found [0, 5]")):
      losses.semi_conv_loss(EMBEDDINGS, held_by_host, max_instances=4)
    with pytest.raises(ValueError, match=says("`true_labels` has an image with 3 objects")):
      losses.f2_iou_score(np.minimum(LABELS, 2), held_by_host, max_instances=2)


def test_negative_ids_inside_jit_f2_are_background():
  rng = np.random.default_rng(1)
  truth = np.kron(rng.integers(0, 4, (3, 4, 4)), np.ones((2, 2), np.int64)).astype(np.int32)
  negative = -rng.integers(1, 4, truth.shape).astype(np.int32)
  prediction = np.where(rng.random(truth.shape) < 0.2, negative, truth)
  jitted = jax.jit(lambda p, t: losses.f2_iou_score(p, t, reduction="none"))
  expected = jitted(np.maximum(prediction, 0), truth)
  assert ((expected > 0) & (expected < 1)).any()  # Partly right: the ids matter.
  np.testing.assert_array_equal(jitted(prediction, truth), expected)
  np.testing.assert_array_equal(jitted(truth, prediction), jitted(truth, np.maximum(prediction, 0)))


def test_traced_options_that_shape_the_formula_are_type_errors():
  """δ selects the angular loss's formula and σ is folded into PROPEL's constants at trace time."""
  alpha, beta = np.array([0.1, 2.0]), np.array([0.5, -1.0])
  by_delta = jax.jit(lambda d: losses.angular_loss(
      losses.encode_orientation(alpha), losses.encode_orientation(beta), delta=d))
  with pytest.raises(TypeError, match="`delta` must be a static Python number"):
    by_delta(0.7)
  target = jnp.array([[0.3, -1.0]])
  by_sigma = jax.jit(lambda sigma: losses.propel_loss(jnp.ones((1, 1, 4)), target, sigma=sigma))
  with pytest.raises(TypeError, match="`sigma` must be a static Python number"):
    by_sigma(0.2)
