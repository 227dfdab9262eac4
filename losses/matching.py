"""Matching predicted and true instances by IoU, and the scores built on it: DSB2018, StarDist's, Airbus's.

Every score here counts, per image and IoU threshold t, the same three
numbers. A true and a predicted object match when their IoU is > t (strictly
greater, as both Kaggle competitions define a hit); then

* TP(t): true objects matched by a prediction,
* FN(t): true objects without one, FP(t): predictions without one.

For t ≥ 0.5 an object can match at most one other (two IoUs > 0.5 with one
object would need its two partners to overlap), so the matching is unique
and counting is all there is to do: a true object is a TP when its best IoU
over the predictions is > t, a prediction is a FP when its best IoU over the
true objects is not. The thresholds must therefore lie in [0.5, 1).

The scores:

* `average_precision`, the score of the Kaggle 2018 Data Science Bowl
  (nuclei; https://www.kaggle.com/c/data-science-bowl-2018/overview/evaluation):
  per image AP = (1/|T|) Σ_t TP(t) / (TP(t) + FP(t) + FN(t)) over
  t ∈ {0.5, 0.55, …, 0.95}, then the mean over the images. Despite its name
  it is a mean of per-threshold "precisions" that also count the misses (a
  Jaccard index of the objects), not the area under a precision-recall curve.
* `matching_counts` and `pooled_scores`, the statistics StarDist reports
  (Schmidt, Weigert, Broaddus and Myers, "Cell Detection with Star-convex
  Polygons", MICCAI 2018, Table 1; `stardist.matching.matching_dataset`):
  TP, FP and FN summed over all the test images at each threshold, and from
  the sums precision ΣTP / (ΣTP + ΣFP), recall ΣTP / (ΣTP + ΣFN) and
  AP = ΣTP / (ΣTP + ΣFP + ΣFN) per threshold. Pooling weighs each image by
  its objects, where `average_precision` weighs every image the same.
  StarDist matches with IoU ≥ t (and an optimal assignment, which for
  t ≥ 0.5 is the unique matching above): the two agree unless an IoU equals
  a threshold exactly.
* `f2_iou_score`, the Kaggle Airbus Ship Detection score
  (https://www.kaggle.com/c/airbus-ship-detection/overview/evaluation): per
  image F2 = 5·TP / (5·TP + 4·FN + FP) averaged over the same thresholds,
  then over the images.

Empty sides: a ratio whose denominator is 0 is 1 when there are no objects at
all (nothing to find and nothing found: TP = FP = FN = 0), else 0. So an
image with neither true nor predicted objects scores 1 (AP and F2), one with
only one side empty 0; pooled precision with no predictions but some true
objects is 0 (StarDist reports 0 whenever TP = 0, so the two differ only when
the images hold no objects at all).

IoUs are float32 ratios compared with the thresholds cast to float32: an IoU
equal to a threshold, 13/20 = 0.65 say, rounds to the same float32 and is not
a hit, as the rule says. (For thresholds of two decimals an IoU other than t
differs from it by at least 1/(20·union), so rounding cannot flip a
comparison while two objects' union is below ~10⁵ pixels.)

`max_instances` bounds the objects per image on each side, the same option
as the embedding losses'. IoUs come from the (max_instances + 1)² contingency
table (joint histogram) of compacted label pairs, O(H·W + K_true·K_pred) per
image (plus one sort of the ids to compact them), instead of comparing every
true mask with every predicted mask, O(K_true·K_pred·H·W); each object's best
IoU is then compared with the T thresholds, O(K·T). Nothing of size
T·K² or K·H·W is built, so K = 512 (a DSB2018 image holds up to 375 nuclei)
costs one 513² table per image.

Examples:
  >>> import jax.numpy as jnp
  >>> import losses
  >>> truth = jnp.array([[[1, 1, 1, 0, 2, 2, 0, 3]]])
  >>> prediction = jnp.array([[[7, 7, 0, 0, 9, 9, 9, 0]]])  # IoUs 2/3 and 2/3; object 3 missed
  >>> counts = losses.matching_counts(prediction, truth)  # at t = 0.5, 0.55, …, 0.95
  >>> counts.true_positives.tolist()
  [2, 2, 2, 2, 0, 0, 0, 0, 0, 0]
  >>> [round(float(ap), 4) for ap in losses.pooled_scores(counts).average_precision[3:5]]  # t = 0.65, 0.7
  [0.6667, 0.0]
  >>> round(float(losses.average_precision(prediction, truth)), 4)  # (4 · 2/3 + 6 · 0) / 10
  0.2667
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from losses import _common

# Both competitions sweep t = 0.5, 0.55, …, 0.95.
AIRBUS_THRESHOLDS = tuple(0.5 + 0.05 * i for i in range(10))
DSB2018_THRESHOLDS = AIRBUS_THRESHOLDS

# A DSB2018 image holds up to 375 nuclei.
NUCLEI_MAX_INSTANCES = 512


class MatchingCounts(NamedTuple):
  """Objects counted at each IoU threshold: int32 arrays `(T,)` (summed over images) or `(B, T)` (per image).

  A NamedTuple is a JAX pytree: counts of several batches add up with
  `jax.tree.map(jnp.add, total, counts)` (`+` would concatenate the tuples).
  """
  true_positives: jax.Array
  """True objects matched by a prediction with IoU > t."""
  false_positives: jax.Array
  """Predicted objects without such a match."""
  false_negatives: jax.Array
  """True objects without such a match."""


class PooledScores(NamedTuple):
  """Scores at each IoU threshold, from `MatchingCounts` of the same shape (see `pooled_scores`)."""
  precision: jax.Array
  """TP / (TP + FP)."""
  recall: jax.Array
  """TP / (TP + FN)."""
  average_precision: jax.Array
  """TP / (TP + FP + FN), the DSB2018 "precision" at one threshold."""


def _compact_ids(labels: jax.Array, max_instances: int) -> jax.Array:
  """Maps the ids of one image to 0 (background) and 1…n in sorted order, n ≤ `max_instances`."""
  # The first `max_instances + 1` distinct ids, sorted (padded with the largest
  # integer): what `jnp.unique(size=...)` returns, found with one sort of the
  # bare ids (a key-only sort; `unique` sorts with more operands and then
  # scatters, slower on the CPU) and a binary search for where each new id starts.
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


def _image_counts(pred_ids: jax.Array, true_ids: jax.Array, thresholds: jax.Array,
                  max_instances: int) -> MatchingCounts:
  """`(T,)` counts of one `(H, W)` image; negative ids (unchecked inside a trace) are background."""
  pred_ids, true_ids = jnp.maximum(pred_ids, 0), jnp.maximum(true_ids, 0)
  iou, true_exists, pred_exists = _iou_matrix(
      _compact_ids(pred_ids, max_instances), _compact_ids(true_ids, max_instances), max_instances)
  # An absent object's IoUs are 0, below every threshold.
  best_for_true = jnp.max(iou, axis=1, initial=0.0)
  best_for_pred = jnp.max(iou, axis=0, initial=0.0)
  true_positives = jnp.sum(best_for_true > thresholds[:, None], axis=1, dtype=jnp.int32)
  false_positives = jnp.sum(pred_exists & (best_for_pred <= thresholds[:, None]), axis=1, dtype=jnp.int32)
  return MatchingCounts(true_positives, false_positives, jnp.sum(true_exists, dtype=jnp.int32) - true_positives)


def _check_object_counts(labels: ArrayLike, name: str, max_instances: int) -> None:
  """Where the host holds the ids, an image with more than `max_instances` objects is a `ValueError`."""
  values = _common.host_values(labels)
  if values is None:
    return
  images = values.reshape(values.shape[0], values.shape[1] * values.shape[2])  # (B, H·W), also where H·W = 0.
  most = max((len(np.unique(image[image > 0])) for image in images), default=0)
  if most > max_instances:
    raise ValueError(f"`{name}` has an image with {most} objects, more than `max_instances`={max_instances}.")


def _per_image_counts(pred_labels: ArrayLike, true_labels: ArrayLike, max_instances: int,
                      thresholds: ArrayLike) -> MatchingCounts:
  """The checked inputs' `(B, T)` counts."""
  max_instances = _common.check_int(max_instances, "max_instances", minimum=0)
  _common.check_iou_thresholds(thresholds)
  pred_labels_in, true_labels_in = pred_labels, true_labels
  pred_labels = _common.check_labels(pred_labels, "pred_labels", None)
  true_labels = _common.check_labels(true_labels, "true_labels", None)
  _common.chex().assert_equal_shape([pred_labels, true_labels], custom_message=_common.shape_message(
      "pred_labels", pred_labels.shape, "(B, H, W)", ("true_labels", true_labels)) + " (the same shape)")
  _check_object_counts(pred_labels_in, "pred_labels", max_instances)
  _check_object_counts(true_labels_in, "true_labels", max_instances)
  return _batch_counts(pred_labels, true_labels, jnp.asarray(thresholds, jnp.float32), max_instances)


@functools.partial(jax.jit, static_argnames="max_instances")
def _batch_counts(pred_labels: jax.Array, true_labels: jax.Array, thresholds: jax.Array,
                  max_instances: int) -> MatchingCounts:
  # Jitted so that eager calls compile one program per shape rather than dispatch (and compile) op by op.
  return jax.vmap(functools.partial(_image_counts, thresholds=thresholds, max_instances=max_instances))(
      pred_labels, true_labels)


def _ratio(numerator: jax.Array, denominator: jax.Array, counts: MatchingCounts) -> jax.Array:
  """numerator / denominator; where the denominator is 0, 1 if there are no objects at all, else 0."""
  nothing = (counts.true_positives == 0) & (counts.false_positives == 0) & (counts.false_negatives == 0)
  ratio = numerator / jnp.maximum(denominator, 1)
  return jnp.where(denominator > 0, ratio, nothing.astype(ratio.dtype))


def _scores(counts: MatchingCounts) -> PooledScores:
  tp, fp, fn = counts
  return PooledScores(precision=_ratio(tp, tp + fp, counts), recall=_ratio(tp, tp + fn, counts),
                      average_precision=_ratio(tp, tp + fp + fn, counts))


def matching_counts(
    pred_labels: ArrayLike, true_labels: ArrayLike, *, thresholds: ArrayLike = DSB2018_THRESHOLDS,
    max_instances: int = NUCLEI_MAX_INSTANCES, reduction: str = "sum") -> MatchingCounts:
  """TP, FP and FN at each IoU threshold, summed over the images or per image (see the module docstring).

  The counts of a test set evaluated in several calls (batches, or whole
  images of different sizes one at a time) add up across calls; `pooled_scores`
  turns the totals into StarDist's pooled precision, recall and AP.

  Args:
    pred_labels: `(B, H, W)` integer predicted instance ids ≥ 0, any values;
      0 is background. Where the host holds the ids a negative one is a
      `ValueError`; elsewhere negative ids are read as background.
    true_labels: `(B, H, W)` true ids, same conventions.
    thresholds: the IoU thresholds `(T,)`, non-empty, each in [0.5, 1)
      (default the DSB2018 sweep 0.5, 0.55, …, 0.95).
    max_instances: static bound (≥ 0) on the objects per image on each side
      (the table is (max_instances + 1)² per image). Where the host holds the
      ids an image with more is a `ValueError`; elsewhere the objects beyond
      it are merged.
    reduction: "sum" over the B images or "none" for per-image counts.

  Returns:
    `MatchingCounts` of int32 arrays, each `(T,)` for "sum" (zeros for B = 0)
    and `(B, T)` for "none".

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import losses
    >>> truth = jnp.array([[[1, 1, 1, 0, 2, 2, 0, 3]]])
    >>> total = losses.matching_counts(jnp.array([[[5, 5, 5, 0, 0, 0, 0, 0]]]), truth)  # nucleus 1 found
    >>> more = losses.matching_counts(jnp.zeros((1, 3, 3), int), jnp.ones((1, 3, 3), int))  # 3×3: 1 missed
    >>> total = jax.tree.map(jnp.add, total, more)
    >>> [int(count[0]) for count in total]  # TP, FP, FN at IoU > 0.5
    [1, 0, 3]
  """
  if reduction not in ("sum", "none"):
    raise ValueError(f"`reduction` must be one of ('sum', 'none'), got {reduction!r}.")
  counts = _per_image_counts(pred_labels, true_labels, max_instances, thresholds)
  return counts if reduction == "none" else jax.tree.map(lambda count: jnp.sum(count, axis=0), counts)


def pooled_scores(counts: MatchingCounts) -> PooledScores:
  """Precision, recall and AP at each threshold from (summed) `MatchingCounts` (see the module docstring).

  With the counts summed over a test set these are the statistics
  `stardist.matching.matching_dataset` reports (its `precision`, `recall` and
  `accuracy`); with per-image counts (`reduction="none"`) they are per image.
  A ratio whose denominator is 0 is 1 when TP = FP = FN = 0, else 0.

  Args:
    counts: `MatchingCounts` (or a tuple `(true_positives, false_positives,
      false_negatives)`) of arrays of one shape, e.g. `(T,)`, from
      `matching_counts`.

  Returns:
    `PooledScores` of float arrays in [0, 1], each of the shape of the counts.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> counts = losses.MatchingCounts(jnp.array([8, 0]), jnp.array([2, 0]), jnp.array([6, 0]))
    >>> scores = losses.pooled_scores(counts)
    >>> [[round(float(value), 4) for value in score] for score in scores]  # P, R, AP; no objects at all: 1
    [[0.8, 1.0], [0.5714, 1.0], [0.5, 1.0]]
  """
  if not isinstance(counts, tuple) or len(counts) != 3:
    raise TypeError("`counts` must be a MatchingCounts (true_positives, false_positives, false_negatives), "
                    f"got {type(counts).__name__}.")
  counts = MatchingCounts(*(jnp.asarray(count) for count in counts))
  _common.chex().assert_equal_shape(counts, custom_message=(
      "the three `counts` must have one shape, got " + ", ".join(
          f"`{name}` {tuple(count.shape)}" for name, count in counts._asdict().items())))
  return _scores(counts)


def average_precision(
    pred_labels: ArrayLike, true_labels: ArrayLike, *, thresholds: ArrayLike = DSB2018_THRESHOLDS,
    max_instances: int = NUCLEI_MAX_INSTANCES, reduction: str = "mean") -> jax.Array:
  """The Kaggle 2018 Data Science Bowl score: per image TP / (TP + FP + FN) averaged over IoU thresholds.

  See the module docstring. An image with neither true nor predicted objects
  scores 1, as in `f2_iou_score`; one with only one side empty 0.

  Args:
    pred_labels: `(B, H, W)` integer predicted instance ids ≥ 0, any values;
      0 is background. Where the host holds the ids a negative one is a
      `ValueError`; elsewhere negative ids are read as background.
    true_labels: `(B, H, W)` true ids, same conventions.
    thresholds: the IoU thresholds `(T,)`, non-empty, each in [0.5, 1)
      (default the DSB2018 sweep 0.5, 0.55, …, 0.95).
    max_instances: static bound (≥ 0) on the objects per image on each side
      (the table is (max_instances + 1)² per image). Where the host holds the
      ids an image with more is a `ValueError`; elsewhere the objects beyond
      it are merged.
    reduction: "mean" over the B images (the competition's score), "sum", or
      "none" for `(B,)`. An image without pixels (H·W = 0) scores 1; the mean
      over an empty batch (B = 0) is 0.

  Returns:
    A scalar, or `(B,)` for `reduction="none"`, in [0, 1].

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> truth = jnp.array([[[1, 1, 1, 0, 2, 2, 0, 3]]])
    >>> found_two = jnp.array([[[5, 5, 5, 0, 6, 6, 0, 0]]])  # nuclei 1 and 2 exactly, nucleus 3 missed
    >>> round(float(losses.average_precision(found_two, truth)), 4)  # 2 / (2 + 0 + 1) at every threshold
    0.6667
    >>> float(losses.average_precision(0 * truth, 0 * truth))  # nothing to find, nothing found
    1.0
  """
  _common.check_reduction(reduction)
  counts = _per_image_counts(pred_labels, true_labels, max_instances, thresholds)
  return _common.reduce_masked(jnp.mean(_scores(counts).average_precision, axis=-1), None, reduction)


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
  counts = _per_image_counts(pred_labels, true_labels, max_instances, thresholds)
  tp, fp, fn = counts
  f2 = _ratio(5 * tp, 5 * tp + 4 * fn + fp, counts)
  return _common.reduce_masked(jnp.mean(f2, axis=-1), None, reduction)
