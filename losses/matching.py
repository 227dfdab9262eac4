"""Matching predicted and true instances by IoU, and the scores built on it: the Airbus Ship Detection F2.

`f2_iou_score` is the Kaggle Airbus Ship Detection score: per image and IoU
threshold t ∈ {0.5, 0.55, …, 0.95}, TP = true objects matched by a
prediction with IoU > t, FN = unmatched true objects, FP = unmatched
predictions, F2 = 5·TP/(5·TP + 4·FN + FP); averaged over thresholds, then
over images. An image with neither true nor predicted objects scores 1, one
with only one side empty 0. `max_instances` bounds the objects per image on
each side, the same option as the embedding losses'.

IoUs come from the contingency table (joint histogram) of compacted label
pairs, O(H·W + K_true·K_pred) per image (plus one sort of the ids to compact
them), instead of comparing every true mask with every predicted mask,
O(K_true·K_pred·H·W). For t ≥ 0.5 an object can match at most one other
(two IoUs > 0.5 would need overlapping masks), so matching is counting.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from losses import _common

AIRBUS_THRESHOLDS = tuple(0.5 + 0.05 * i for i in range(10))


def _compact_ids(labels: jax.Array, max_instances: int) -> jax.Array:
  """Maps the ids of one image to 0 (background) and 1…n in sorted order, n ≤ `max_instances`."""
  # The first `max_instances + 1` distinct ids, sorted (padded with the largest
  # integer): what `jnp.unique(size=...)` returns, found with one sort of the
  # bare ids (a key-only sort; `unique` sorts with more operands and then
  # scatters, ~3× slower on CPU) and a binary search for where each new id starts.
  if labels.size == 0:  # An image without pixels has no objects.
    return labels
  ids = jnp.sort(labels.reshape(-1))
  starts_new_id = jnp.concatenate([jnp.ones((1,), bool), ids[1:] != ids[:-1]])
  rank = jnp.cumsum(starts_new_id) - 1
  first = jnp.searchsorted(rank, jnp.arange(max_instances + 1, dtype=rank.dtype))
  present = jnp.where(first < ids.size, ids[jnp.minimum(first, ids.size - 1)], jnp.iinfo(labels.dtype).max)
  compact = jnp.searchsorted(present, labels)
  # Background (0) is the smallest id if present; shift so that it maps to 0 either way.
  return jnp.where(labels == 0, 0, jnp.minimum(compact + (present[0] != 0), max_instances))


def _iou_matrix(pred_ids: jax.Array, true_ids: jax.Array, max_instances: int):
  """IoUs `(K_true, K_pred)` between compacted true and predicted objects, and which objects exist."""
  size = max_instances + 1
  table = jax.ops.segment_sum(jnp.ones(true_ids.size, jnp.float32), (true_ids * size + pred_ids).reshape(-1),
                              size * size).reshape(size, size)
  true_area, pred_area = table.sum(axis=1)[1:], table.sum(axis=0)[1:]
  intersection = table[1:, 1:]
  union = true_area[:, None] + pred_area[None, :] - intersection
  return intersection / jnp.maximum(union, 1.0), true_area > 0, pred_area > 0


def _check_object_counts(labels: ArrayLike, name: str, max_instances: int) -> None:
  """Where the host holds the ids, an image with more than `max_instances` objects is a `ValueError`."""
  values = _common.host_values(labels)
  if values is None:
    return
  most = max((len(np.unique(image[image > 0])) for image in values.reshape(-1, *values.shape[-2:])), default=0)
  if most > max_instances:
    raise ValueError(f"`{name}` has an image with {most} objects, more than `max_instances`={max_instances}.")


def f2_iou_score(
    pred_labels: ArrayLike, true_labels: ArrayLike, *, max_instances: int = 64,
    thresholds: ArrayLike = AIRBUS_THRESHOLDS, reduction: str = "mean") -> jax.Array:
  """Airbus Ship Detection F2 score averaged over IoU thresholds (see the module docstring).

  The score is not symmetric: a missed ship costs 4 in the denominator, a
  false alarm 1, so the predictions must come first.

  Args:
    pred_labels: `(B, H, W)` integer predicted instance ids ≥ 0, any values;
      0 is background. Where the host holds the ids a negative one is a
      `ValueError`; elsewhere negative ids are read as background.
    true_labels: `(B, H, W)` true ids, same conventions.
    max_instances: static bound (≥ 0) on the objects per image on each side
      (the table is (max_instances + 1)²). Where the host holds the ids an
      image with more is a `ValueError`; elsewhere the objects beyond it are
      merged.
    thresholds: the IoU thresholds, non-empty, each in [0.5, 1).
    reduction: "mean" over the B images, "sum", or "none" for `(B,)`. An
      image without pixels (H·W = 0) has no objects on either side and
      scores 1; the mean over an empty batch (B = 0) is 0.

  Returns:
    A scalar, or `(B,)` for `reduction="none"`, in [0, 1].

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> truth = jnp.array([[[1, 1, 0, 2, 2]]])
    >>> found_one = jnp.array([[[5, 5, 0, 0, 0]]])  # ship 1 exactly, ship 2 missed
    >>> round(float(losses.f2_iou_score(found_one, truth)), 4)  # 5·1 / (5·1 + 4·1 + 0)
    0.5556
    >>> round(float(losses.f2_iou_score(truth, found_one)), 4)  # swapped: a false alarm costs less
    0.8333
  """
  _common.check_reduction(reduction)
  max_instances = _common.check_int(max_instances, "max_instances", minimum=0)
  _common.check_iou_thresholds(thresholds)
  pred_labels_in, true_labels_in = pred_labels, true_labels
  pred_labels = _common.check_labels(pred_labels, "pred_labels", None)
  true_labels = _common.check_labels(true_labels, "true_labels", None)
  _common.chex().assert_equal_shape([pred_labels, true_labels], custom_message=_common.shape_message(
      "pred_labels", pred_labels.shape, "(B, H, W)", ("true_labels", true_labels)) + " (the same shape)")
  _check_object_counts(pred_labels_in, "pred_labels", max_instances)
  _check_object_counts(true_labels_in, "true_labels", max_instances)
  thresholds = jnp.asarray(thresholds, jnp.float32)

  def per_image(pred_ids, true_ids):
    # Negative ids (unchecked where the host does not hold them) are background.
    pred_ids, true_ids = jnp.maximum(pred_ids, 0), jnp.maximum(true_ids, 0)
    iou, true_exists, pred_exists = _iou_matrix(
        _compact_ids(pred_ids, max_instances), _compact_ids(true_ids, max_instances), max_instances)
    matched = iou[None] > thresholds[:, None, None]  # (T, K_true, K_pred)
    true_positives = jnp.sum(jnp.any(matched, axis=2) & true_exists, axis=1)
    false_negatives = jnp.sum(true_exists) - true_positives
    false_positives = jnp.sum(~jnp.any(matched, axis=1) & pred_exists, axis=1)
    denominator = 5 * true_positives + 4 * false_negatives + false_positives
    f2 = jnp.where(denominator > 0, 5 * true_positives / jnp.maximum(denominator, 1), 1.0)
    return jnp.mean(f2)

  return _common.reduce_masked(jax.vmap(per_image)(pred_labels, true_labels), None, reduction)

