"""Semi-convolutional instance embeddings and the Airbus Ship Detection F2 metric.

**Loss.** Semi-convolutional operators (Novotny, Albanie, Larlus, Vedaldi,
"Semi-convolutional Operators for Instance Segmentation", ECCV 2018,
arXiv 1807.10712) mix a convolutional embedding Φ_u with the pixel position
u, e.g. Ψ_u = Φ_u + u, so that the pixels of two identical-looking instances
can still agree on different points. Their loss (eq. 5) pulls the embeddings
of each instance S to the instance mean,

    L = Σ_S (1/|S|) Σ_{u∈S} ‖Ψ_u − mean_{v∈S} Ψ_v‖,

summed over the instances of an image (background excluded), then averaged
(or summed) over images. Numerical and memory choices, each fixing the
circulating TensorFlow version:

* per-instance sums are segment sums over the pixels (`jax.ops.segment_sum`
  with `max_instances + 1` segments), so memory is O(B·H·W·C + B·K·C) and
  does not grow with the number of instances — no one-hot tensor of shape
  (B, K, H, W, C);
* every id 1…`max_instances` is an instance (a one-hot of depth max(label)
  drops the highest one); the background id is excluded and its pixels get
  exactly zero gradient (treating it as an instance lets its pull dominate);
* the norm has a zero gradient at 0 (all pixels of an instance coincide),
  where autodiff of sqrt gives NaN; missing ids and empty images add 0.

**Metric.** `f2_iou_score` is the Kaggle Airbus Ship Detection score: per
image and IoU threshold t ∈ {0.5, 0.55, …, 0.95}, TP = true objects matched
by a prediction with IoU > t, FN = unmatched true objects, FP = unmatched
predictions, F2 = 5·TP/(5·TP + 4·FN + FP); averaged over thresholds, then
over images. An image with neither true nor predicted objects scores 1, one
with only one side empty 0. IoUs come from the contingency table (joint
histogram) of compacted label pairs, O(H·W + K_true·K_pred) per image
(plus one sort of the ids to compact them), instead of comparing every
true mask with every predicted mask, O(K_true·K_pred·H·W). For t ≥ 0.5 an
object can match at most one other (two IoUs > 0.5 would need overlapping
masks), so matching is counting.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from losses import _common

AIRBUS_THRESHOLDS = tuple(0.5 + 0.05 * i for i in range(10))


def _safe_norm(x: chex.Array) -> chex.Array:
  """‖x‖ over the last axis with gradient 0 (not NaN) at x = 0."""
  squared = jnp.sum(x * x, axis=-1)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def semi_conv_loss(
    labels: chex.Array,
    embeddings: chex.Array,
    *,
    max_instances: int,
    background: int = 0,
    reduction: str = "mean",
) -> chex.Array:
  """Novotny et al.'s instance loss: per image, Σ_instances mean ‖Ψ_u − instance mean‖.

  Args:
    labels: `(B, H, W)` integer instance ids in [0, `max_instances`];
      `background` marks pixels of no instance. Outside `jax.jit` an id out
      of range is a `ValueError`; inside jit such pixels are ignored like
      background (they cannot be checked without a host round trip).
    embeddings: `(B, H, W, C)` semi-convolutional embeddings Ψ (e.g. from
      `models.SemiConvolution`), C ≥ 1.
    max_instances: static largest id (≥ 0); sets the number of segments.
    background: the static id excluded from the loss; one outside
      [0, `max_instances`] means every id is an instance.
    reduction: "mean" or "sum" over images, or "none" for `(B,)`. An image
      without instances (or without pixels, H·W = 0) adds 0; an empty batch
      (B = 0) gives 0 with a zero gradient, or `(0,)`.

  Returns:
    A scalar, or `(B,)` for `reduction="none"`.
  """
  _common.check_reduction(reduction)
  max_instances = _common.check_int(max_instances, "max_instances", minimum=0)
  background = _common.check_int(background, "background")
  labels = _common.check_labels(labels, "labels", max_instances, limit="max_instances")
  embeddings = _common.check_embeddings(embeddings, "embeddings", labels, "labels")
  num_segments = max_instances + 1

  def per_image(ids, psi):
    ids, psi = ids.reshape(-1), psi.reshape(-1, psi.shape[-1])
    valid = (ids != background) & (ids >= 0) & (ids <= max_instances)
    ids = jnp.where(valid, ids, background)
    counts = jax.ops.segment_sum(valid.astype(psi.dtype), ids, num_segments)
    means = jax.ops.segment_sum(psi, ids, num_segments) / jnp.maximum(counts, 1.0)[:, None]
    distances = jnp.where(valid, _safe_norm(psi - means[ids]), 0.0)
    mean_distance = jax.ops.segment_sum(distances, ids, num_segments) / jnp.maximum(counts, 1.0)
    return jnp.sum(mean_distance)

  return _common.reduce_masked(jax.vmap(per_image)(labels, embeddings), None, reduction)


def _compact_ids(labels: chex.Array, max_objects: int) -> chex.Array:
  """Maps the ids of one image to 0 (background) and 1…n in sorted order, n ≤ `max_objects`."""
  # The first `max_objects + 1` distinct ids, sorted (padded with the largest
  # integer): what `jnp.unique(size=...)` returns, found with one sort of the
  # bare ids (a key-only sort; `unique` sorts with more operands and then
  # scatters, ~3× slower on CPU) and a binary search for where each new id starts.
  if labels.size == 0:  # An image without pixels has no objects.
    return labels
  ids = jnp.sort(labels.reshape(-1))
  starts_new_id = jnp.concatenate([jnp.ones((1,), bool), ids[1:] != ids[:-1]])
  rank = jnp.cumsum(starts_new_id) - 1
  first = jnp.searchsorted(rank, jnp.arange(max_objects + 1, dtype=rank.dtype))
  present = jnp.where(first < ids.size, ids[jnp.minimum(first, ids.size - 1)], jnp.iinfo(labels.dtype).max)
  compact = jnp.searchsorted(present, labels)
  # Background (0) is the smallest id if present; shift so that it maps to 0 either way.
  return jnp.where(labels == 0, 0, jnp.minimum(compact + (present[0] != 0), max_objects))


def _iou_matrix(true_ids: chex.Array, pred_ids: chex.Array, max_objects: int):
  """IoUs `(K, K)` between compacted true and predicted objects, and which objects exist."""
  size = max_objects + 1
  table = jax.ops.segment_sum(jnp.ones(true_ids.size, jnp.float32), (true_ids * size + pred_ids).reshape(-1),
                              size * size).reshape(size, size)
  true_area, pred_area = table.sum(axis=1)[1:], table.sum(axis=0)[1:]
  intersection = table[1:, 1:]
  union = true_area[:, None] + pred_area[None, :] - intersection
  return intersection / jnp.maximum(union, 1.0), true_area > 0, pred_area > 0


def f2_iou_score(
    true_labels: chex.Array, pred_labels: chex.Array, *, max_objects: int = 64,
    thresholds=AIRBUS_THRESHOLDS, reduction: str = "mean") -> chex.Array:
  """Airbus Ship Detection F2 score averaged over IoU thresholds (see module docstring).

  Args:
    true_labels: `(B, H, W)` integer instance ids ≥ 0, any values; 0 is
      background. Outside jit a negative id is a `ValueError`; inside jit
      (where values cannot be checked) negative ids are read as background.
    pred_labels: `(B, H, W)` predicted ids, same conventions.
    max_objects: static bound (≥ 0) on the objects per image on each side
      (the table is (max_objects + 1)²); checked outside jit, and inside jit
      the objects beyond it are merged.
    thresholds: the IoU thresholds, non-empty, each in [0.5, 1).
    reduction: "mean" over images, "sum", or "none" for `(B,)`. An image
      without pixels (H·W = 0) has no objects on either side and scores 1;
      the mean over an empty batch (B = 0) is 0.
  """
  _common.check_reduction(reduction)
  max_objects = _common.check_int(max_objects, "max_objects", minimum=0)
  _common.check_iou_thresholds(thresholds)
  true_labels = _common.check_labels(true_labels, "true_labels", None, fill=0)
  pred_labels = _common.check_labels(pred_labels, "pred_labels", None, fill=0)
  chex.assert_equal_shape([true_labels, pred_labels], custom_message=_common.shape_message(
      "pred_labels", pred_labels.shape, "(B, H, W)", ("true_labels", true_labels)) + " (the same shape)")
  for name, labels in (("true_labels", true_labels), ("pred_labels", pred_labels)):
    if not _common.is_traced(labels):
      most = max((len(np.unique(np.asarray(image)[np.asarray(image) != 0])) for image in labels), default=0)
      if most > max_objects:
        raise ValueError(f"`{name}` has an image with {most} objects, more than `max_objects`={max_objects}.")
  thresholds = jnp.asarray(thresholds, jnp.float32)

  def per_image(true_ids, pred_ids):
    iou, true_exists, pred_exists = _iou_matrix(
        _compact_ids(true_ids, max_objects), _compact_ids(pred_ids, max_objects), max_objects)
    matched = iou[None] > thresholds[:, None, None]  # (T, K, K)
    true_positives = jnp.sum(jnp.any(matched, axis=2) & true_exists, axis=1)
    false_negatives = jnp.sum(true_exists) - true_positives
    false_positives = jnp.sum(~jnp.any(matched, axis=1) & pred_exists, axis=1)
    denominator = 5 * true_positives + 4 * false_negatives + false_positives
    f2 = jnp.where(denominator > 0, 5 * true_positives / jnp.maximum(denominator, 1), 1.0)
    return jnp.mean(f2)

  return _common.reduce_masked(jax.vmap(per_image)(true_labels, pred_labels), None, reduction)
