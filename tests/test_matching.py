"""DSB2018 average precision, StarDist's pooled statistics and the Airbus F2 against a direct NumPy reference.

The reference follows the rules object by object: each object's mask, the
IoU of every overlapping pair, and at each threshold t a matching of the
pairs with IoU > t, asserted to be one-to-one. The label maps are random
ellipses (touching and overlapping, so that some are partly hidden) with
sparse ids, and predictions that shift, erase, merge, split, drop and invent
objects; they include empty images, images with only one side empty, a
non-square shape and a crowded image of more than 300 objects.
"""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import reference_package
import losses

MAX_INSTANCES = 512
THRESHOLDS = np.asarray(losses.matching.DSB2018_THRESHOLDS, np.float32)


def decimal_thresholds(thresholds):
  """The thresholds as the exact decimals they stand for (float32(0.65) is 0.64999998)."""
  return [Fraction(f"{threshold:.6f}") for threshold in np.asarray(thresholds, np.float64)]


def reference_counts(truth, prediction, thresholds):
  """`(T, 3)` TP, FP, FN of one image from the objects' masks."""
  true_ids = [i for i in np.unique(truth) if i != 0]
  pred_index = {p: b for b, p in enumerate(i for i in np.unique(prediction) if i != 0)}
  pairs = []  # (true object, predicted object, intersection, union)
  for a, t in enumerate(true_ids):
    mask = truth == t
    for p in np.unique(prediction[mask]):  # Only overlapping objects have an IoU > 0.
      if p != 0:
        other = prediction == p
        pairs.append((a, pred_index[p], np.sum(mask & other), np.sum(mask | other)))
  counts = []
  for threshold in decimal_thresholds(thresholds):
    matched_true, matched_pred = set(), set()
    for a, b, intersection, union in pairs:
      if intersection * threshold.denominator > threshold.numerator * union:  # IoU > t, exactly.
        assert a not in matched_true and b not in matched_pred, "not one-to-one"
        matched_true.add(a)
        matched_pred.add(b)
    true_positives = len(matched_true)
    counts.append((true_positives, len(pred_index) - true_positives, len(true_ids) - true_positives))
  return np.array(counts)


def ratio(numerator, denominator, tp, fp, fn):
  """The module's convention: a zero denominator gives 1 when there are no objects at all, else 0."""
  if denominator > 0:
    return numerator / denominator
  return float(tp == fp == fn == 0)


def reference_scores(truth, prediction, thresholds=THRESHOLDS):
  """Per image counts `(B, T, 3)`, AP `(B,)` and F2 `(B,)`; pooled precision, recall and AP `(T,)`."""
  counts = np.stack([reference_counts(t, p, thresholds) for t, p in zip(truth, prediction)])
  ap = [np.mean([ratio(tp, tp + fp + fn, tp, fp, fn) for tp, fp, fn in image]) for image in counts]
  f2 = [np.mean([ratio(5 * tp, 5 * tp + 4 * fn + fp, tp, fp, fn) for tp, fp, fn in image]) for image in counts]
  tp, fp, fn = counts.sum(axis=0).T
  pooled = np.array([[ratio(*fraction, *at_t) for at_t, fraction in zip(zip(tp, fp, fn), fractions)]
                     for fractions in (zip(tp, tp + fp), zip(tp, tp + fn), zip(tp, tp + fp + fn))])
  return dict(counts=counts, ap=np.array(ap), f2=np.array(f2), pooled=pooled)


def paint_ellipses(rng, shape, count):
  labels = np.zeros(shape, np.int32)
  rows, cols = np.indices(shape)
  for object_id in rng.choice(np.arange(1, 10 ** 6), count, replace=False):
    r, c = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
    half_height, half_width = rng.uniform(1.5, 6.0, 2)
    labels[((rows - r) / half_height) ** 2 + ((cols - c) / half_width) ** 2 <= 1] = object_id
  return labels


def perturb(rng, truth, largest_shift=1):
  """A prediction: the objects relabelled, some merged or dropped, shifted, eroded, split, plus false ones."""
  ids = np.unique(truth[truth > 0])
  new_ids = rng.choice(np.arange(1, 10 ** 6), ids.size, replace=False)
  if ids.size > 2:
    new_ids[1] = new_ids[0]  # Two objects merged.
    new_ids[2] = 0  # One missed.
  prediction = np.zeros_like(truth)
  prediction[truth > 0] = new_ids[np.searchsorted(ids, truth[truth > 0])]
  prediction = np.roll(prediction, tuple(rng.integers(-largest_shift, largest_shift + 1, 2)), axis=(0, 1))
  prediction[rng.random(truth.shape) < 0.08] = 0
  if ids.size > 3:  # One object split in two along its middle column.
    rows, cols = np.nonzero(prediction == new_ids[3])
    prediction[rows[cols > np.median(cols)], cols[cols > np.median(cols)]] = 10 ** 6 + 1
  false = paint_ellipses(rng, truth.shape, 2)
  return np.where((prediction == 0) & (false > 0), false, prediction)


def small_batch(seed):
  """`(truth, prediction)` of shape (6, 24, 32): three scenes, then empty both, only predictions, only truth."""
  rng = np.random.default_rng(seed)
  truth = np.stack([paint_ellipses(rng, (24, 32), count) for count in (4, 9, 14, 0, 0, 6)])
  prediction = np.stack([perturb(rng, image) for image in truth])
  prediction[3], prediction[5] = 0, 0
  return truth, prediction


def crowded_image(seed=0):
  """`(truth, prediction)` of shape (1, 72, 72) with 324 touching, overlapping nuclei, 3 to 5 pixels wide."""
  rng = np.random.default_rng(seed)
  truth = np.zeros((72, 72), np.int32)
  for object_id, (r, c) in zip(rng.choice(np.arange(1, 10 ** 6), 324, replace=False), np.ndindex(18, 18)):
    top, left = 4 * r + rng.integers(0, 2), 4 * c + rng.integers(0, 2)
    truth[top:top + rng.integers(3, 6), left:left + rng.integers(3, 6)] = object_id
  return truth[None], perturb(rng, truth, largest_shift=0)[None]


@jax.jit
def evaluate(prediction, truth, thresholds):
  options = dict(thresholds=thresholds, max_instances=MAX_INSTANCES)
  counts = losses.matching_counts(prediction, truth, reduction="none", **options)
  return dict(counts=counts, summed=losses.matching_counts(prediction, truth, **options),
              ap=losses.average_precision(prediction, truth, reduction="none", **options),
              f2=losses.f2_iou_score(prediction, truth, reduction="none", **options),
              pooled=losses.pooled_scores(losses.matching_counts(prediction, truth, **options)))


def assert_matches_reference(actual, expected):
  np.testing.assert_array_equal(np.stack(actual["counts"], axis=-1), expected["counts"])
  np.testing.assert_array_equal(np.stack(actual["summed"], axis=-1), expected["counts"].sum(axis=0))
  np.testing.assert_allclose(actual["ap"], expected["ap"], rtol=1e-6)
  np.testing.assert_allclose(actual["f2"], expected["f2"], rtol=1e-6)
  np.testing.assert_allclose(np.stack(actual["pooled"]), expected["pooled"], rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_scores_match_the_reference(seed):
  truth, prediction = small_batch(seed)
  expected = reference_scores(truth, prediction)
  actual = evaluate(prediction, truth, THRESHOLDS)
  assert_matches_reference(actual, expected)
  np.testing.assert_array_equal(actual["ap"][3:], [1.0, 0.0, 0.0])  # Nothing at all; only one side empty.
  assert 0 < actual["ap"][:3].mean() < 1  # The scenes are partly right...
  assert (np.diff(expected["counts"][:3, :, 0], axis=1) < 0).any()  # ...and the thresholds matter.


def test_crowded_image_and_counts_summed_across_calls_of_different_sizes():
  truth, prediction = crowded_image()
  assert len(np.unique(truth)) - 1 >= 300
  expected = reference_scores(truth, prediction)
  actual = evaluate(prediction, truth, THRESHOLDS)
  assert_matches_reference(actual, expected)
  assert expected["counts"][0, 0, 0] >= 200  # Most nuclei found at IoU > 0.5.
  small_truth, small_prediction = small_batch(0)
  total = jax.tree.map(jnp.add, actual["summed"], evaluate(small_prediction, small_truth, THRESHOLDS)["summed"])
  pooled = reference_scores([*truth, *small_truth], [*prediction, *small_prediction])["pooled"]
  np.testing.assert_allclose(np.stack(losses.pooled_scores(total)), pooled, rtol=1e-6)


def test_under_vmap_and_with_traced_thresholds():
  truth, prediction = small_batch(1)
  expected = reference_scores(truth, prediction, THRESHOLDS[::3])
  batched = jax.jit(jax.vmap(lambda p, t, s: losses.average_precision(p, t, thresholds=s, reduction="none"),
                             in_axes=(0, 0, None)))
  actual = batched(prediction.reshape(2, 3, 24, 32), truth.reshape(2, 3, 24, 32), THRESHOLDS[::3])
  np.testing.assert_allclose(actual.reshape(-1), expected["ap"], rtol=1e-6)


def test_empty_inputs_and_pooled_conventions():
  no_pixels, no_images = np.zeros((2, 0, 3), np.int32), np.zeros((0, 2, 2), np.int32)
  # Captured NumPy inputs: the host-side value checks run too, and everything compiles as one program.
  out = jax.jit(lambda: dict(
      no_pixels=losses.average_precision(no_pixels, no_pixels, reduction="none"),
      no_images=losses.average_precision(no_images, no_images),
      summed=losses.matching_counts(no_images, no_images, thresholds=(0.5, 0.9)),
      per_image=losses.matching_counts(no_images, no_images, reduction="none")))()
  np.testing.assert_array_equal(out["no_pixels"], [1.0, 1.0])
  assert out["no_images"] == 0.0 and out["per_image"].true_positives.shape == (0, 10)
  assert all(count.shape == (2,) and count.dtype == jnp.int32 and not count.any() for count in out["summed"])
  # No objects at all: 1; no predictions (or no truth) while the other side has some: 0, like StarDist's.
  counts = losses.MatchingCounts(*np.array([[0, 0, 0], [0, 0, 3], [0, 2, 0], [3, 1, 0]]).T)
  scores = losses.pooled_scores(counts)
  assert isinstance(scores, losses.PooledScores)
  np.testing.assert_allclose(np.stack(scores), [[1, 0, 0, 0.75], [1, 0, 0, 1], [1, 0, 0, 0.75]])


@pytest.mark.reference
def test_against_stardist():
  """StarDist's `matching` per image and `matching_dataset` pooled over the images.

  StarDist matches with IoU ≥ t, the DSB2018 rule with IoU > t: the thresholds are offset by 0.001 from the
  DSB2018 sweep so that no IoU here equals one (checked). StarDist scores TP / (TP + FP + FN) as 0 for an image
  without objects on either side, where `average_precision` scores 1, so AP is compared on the other images.
  """
  matching = reference_package("stardist.matching")
  thresholds = THRESHOLDS + np.float32(0.001)
  truth, prediction = small_batch(2)
  crowded_truth, crowded_prediction = crowded_image(1)
  images = [(truth, prediction), (crowded_truth, crowded_prediction)]
  for image_truth, image_prediction in zip([*truth, *crowded_truth], [*prediction, *crowded_prediction]):
    for t in np.unique(image_truth[image_truth > 0]):
      for p in np.unique(image_prediction[(image_truth == t) & (image_prediction > 0)]):
        intersection = np.sum((image_truth == t) & (image_prediction == p))
        union = np.sum((image_truth == t) | (image_prediction == p))
        assert all(intersection * t.denominator != t.numerator * union for t in decimal_thresholds(thresholds))
  totals = None
  for batch_truth, batch_prediction in images:
    actual = evaluate(batch_prediction, batch_truth, thresholds)
    for index, (image_truth, image_prediction) in enumerate(zip(batch_truth, batch_prediction)):
      stats = matching.matching(image_truth, image_prediction, thresh=thresholds.tolist())
      expected = np.array([(s.tp, s.fp, s.fn) for s in stats])
      np.testing.assert_array_equal(np.stack(actual["counts"], axis=-1)[index], expected)
      if image_truth.any() or image_prediction.any():
        np.testing.assert_allclose(actual["ap"][index], np.mean([s.accuracy for s in stats]), rtol=1e-6)
    totals = actual["summed"] if totals is None else jax.tree.map(jnp.add, totals, actual["summed"])
  pooled = matching.matching_dataset([*truth, *crowded_truth], [*prediction, *crowded_prediction],
                                     thresh=thresholds.tolist(), show_progress=False)
  np.testing.assert_array_equal(np.stack(totals, axis=-1), [(s.tp, s.fp, s.fn) for s in pooled])
  np.testing.assert_allclose(np.stack(losses.pooled_scores(totals)),
                             [[s.precision for s in pooled], [s.recall for s in pooled],
                              [s.accuracy for s in pooled]], rtol=1e-6)
