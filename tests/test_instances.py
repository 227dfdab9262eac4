"""Semi-convolutional loss, instance extraction and the Airbus F2 metric against direct references."""

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from data import ships
import losses
from models import SemiConvolution


def reference_semi_conv_loss(labels, embeddings, background=0):
  """Per image, a loop over the instances present: mean distance of their pixels to their mean (float64)."""
  labels, embeddings = np.asarray(labels), np.asarray(embeddings, np.float64)
  totals = []
  for ids, psi in zip(labels, embeddings):
    total = 0.0
    for instance in np.unique(ids):
      if instance == background:
        continue
      members = psi[ids == instance]
      total += np.mean(np.linalg.norm(members - members.mean(axis=0), axis=-1))
    totals.append(total)
  return np.array(totals)


def one_hot_semi_conv_loss(labels, embeddings, max_instances):
  """The circulating one-hot formulation, with its bugs fixed (depth max_instances + 1, background dropped)."""
  one_hot = jax.nn.one_hot(labels, max_instances + 1)[..., 1:]  # (B, H, W, K)
  counts = one_hot.sum(axis=(1, 2))  # (B, K)
  means = jnp.einsum("bhwk,bhwc->bkc", one_hot, embeddings) / jnp.maximum(counts, 1)[..., None]
  distances = jnp.linalg.norm(embeddings[:, :, :, None, :] - means[:, None, None], axis=-1)  # (B, H, W, K)
  per_instance = jnp.sum(one_hot * distances, axis=(1, 2)) / jnp.maximum(counts, 1)
  return per_instance.sum(axis=1)


def random_instances(seed, batch=3, size=12, max_instances=5, channels=3):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, max_instances + 1, (batch, size, size)).astype(np.int32)
  embeddings = rng.normal(size=(batch, size, size, channels)).astype(np.float32)
  return jnp.asarray(labels), jnp.asarray(embeddings)


@pytest.mark.parametrize("seed", range(3))
def test_loss_matches_float64_loop_and_one_hot_forms(seed):
  labels, embeddings = random_instances(seed)
  labels = labels.at[0].set(0)  # An empty image.
  labels = labels.at[1].set(jnp.where(labels[1] == 5, 2, labels[1]))  # A missing id (5) in image 1.
  expected = reference_semi_conv_loss(labels, embeddings)
  actual = losses.semi_conv_loss(embeddings, labels, max_instances=5, reduction="none")
  np.testing.assert_allclose(actual, expected, rtol=1e-5)
  np.testing.assert_allclose(actual, one_hot_semi_conv_loss(labels, embeddings, 5), rtol=1e-5)
  np.testing.assert_allclose(losses.semi_conv_loss(embeddings, labels, max_instances=5), expected.mean(), rtol=1e-5)
  assert actual[0] == 0.0


def test_background_gets_zero_gradient_and_coincident_pixels_no_nan():
  labels, embeddings = random_instances(7)
  gradient = jax.grad(lambda e: losses.semi_conv_loss(e, labels, max_instances=5))(embeddings)
  assert (gradient[labels == 0] == 0).all()
  assert (jnp.abs(gradient[labels != 0]).sum(axis=-1) > 0).all()
  coincident = jnp.where((labels == 3)[..., None], 1.5, embeddings)
  value, gradient = jax.value_and_grad(lambda e: losses.semi_conv_loss(e, labels, max_instances=5))(coincident)
  assert np.isfinite(value) and np.isfinite(gradient).all()


def test_background_id_and_relabelling():
  labels, embeddings = random_instances(8)
  expected = losses.semi_conv_loss(embeddings, labels, max_instances=5, reduction="none")
  permutation = jnp.array([0, 4, 1, 5, 2, 3])
  np.testing.assert_allclose(
      losses.semi_conv_loss(embeddings, permutation[labels], max_instances=5, reduction="none"), expected, rtol=1e-5)
  # Background 2 instead of 0: id 0 becomes an instance and id 2 is excluded.
  swapped = jnp.array([2, 1, 0, 3, 4, 5])[labels]
  np.testing.assert_allclose(
      losses.semi_conv_loss(embeddings, swapped, max_instances=5, background=2, reduction="none"), expected,
      rtol=1e-5)


def test_bad_inputs_are_clear_errors():
  labels, embeddings = random_instances(9)
  # The ids are checked where the host holds them: NumPy arrays, and CPU arrays outside jit.
  for held_by_host in (np.asarray(labels), jax.device_put(labels, jax.devices("cpu")[0])):
    with pytest.raises(ValueError, match=r"`labels` must hold ids in \[0, 4\]"):
      losses.semi_conv_loss(embeddings, held_by_host, max_instances=4)
  with pytest.raises(TypeError, match="labels"):
    losses.semi_conv_loss(embeddings, labels.astype(jnp.float32), max_instances=5)
  with pytest.raises(AssertionError, match="share"):
    losses.semi_conv_loss(embeddings, labels[:, :-1], max_instances=5)
  with pytest.raises(AssertionError, match="embeddings"):
    losses.semi_conv_loss(embeddings[..., 0], labels, max_instances=5)
  # Inside jit out-of-range ids cannot be checked and are ignored like background.
  jitted = jax.jit(lambda e, l: losses.semi_conv_loss(e, l, max_instances=4, reduction="none"))
  np.testing.assert_allclose(jitted(embeddings, labels),
                             reference_semi_conv_loss(jnp.where(labels == 5, 0, labels), embeddings), rtol=1e-5)


def reference_f2(true_labels, pred_labels):
  """Per image: every pair of objects' IoU from their masks, matched per threshold, F2, averaged."""
  scores = []
  for truth, prediction in zip(np.asarray(true_labels), np.asarray(pred_labels)):
    true_ids = [i for i in np.unique(truth) if i != 0]
    pred_ids = [i for i in np.unique(prediction) if i != 0]
    if not true_ids and not pred_ids:
      scores.append(1.0)
      continue
    iou = np.zeros((len(true_ids), len(pred_ids)))
    for a, t in enumerate(true_ids):
      for b, p in enumerate(pred_ids):
        iou[a, b] = np.sum((truth == t) & (prediction == p)) / np.sum((truth == t) | (prediction == p))
    per_threshold = []
    for threshold in np.arange(0.5, 1.0, 0.05):
      hits = iou > threshold
      tp = int(hits.any(axis=1).sum()) if pred_ids else 0
      fn = len(true_ids) - tp
      fp = int((~hits.any(axis=0)).sum()) if true_ids else len(pred_ids)
      per_threshold.append(5 * tp / (5 * tp + 4 * fn + fp))
    scores.append(np.mean(per_threshold))
  return np.array(scores)


def random_scenes(seed, batch=8, size=24):
  """Random rectangles with sparse arbitrary ids; the prediction is a perturbed copy. Includes empty images."""
  rng = np.random.default_rng(seed)
  truth = np.zeros((batch, size, size), np.int32)
  for image in truth:
    for _ in range(rng.integers(0, 5)):
      r, c, h, w = rng.integers(0, size - 4, 2).tolist() + rng.integers(2, 8, 2).tolist()
      image[r:r + h, c:c + w] = rng.integers(1, 1000)
  prediction = np.where(rng.random(truth.shape) < 0.1, 0, truth)
  prediction = np.roll(prediction, rng.integers(-1, 2), axis=2) * 7 + (prediction > 0) * 3
  truth[0], prediction[0] = 0, 0  # Neither side has objects: 1.
  truth[1], prediction[2] = 0, 0  # Only one side has objects: 0.
  prediction[1, 2:6, 2:6] = 5
  truth[2, 3:8, 3:8] = 11
  return truth, prediction


@pytest.mark.parametrize("seed", range(4))
def test_f2_matches_the_per_image_reference(seed):
  truth, prediction = random_scenes(seed)
  expected = reference_f2(truth, prediction)
  actual = losses.f2_iou_score(prediction, truth, reduction="none")
  np.testing.assert_allclose(actual, expected, rtol=1e-6)
  assert actual[0] == 1.0 and actual[1] == 0.0 and actual[2] == 0.0
  np.testing.assert_allclose(losses.f2_iou_score(prediction, truth), expected.mean(), rtol=1e-6)
  np.testing.assert_allclose(jax.jit(losses.f2_iou_score)(prediction, truth), expected.mean(), rtol=1e-6)
  np.testing.assert_allclose(losses.f2_iou_score(truth, truth, reduction="none"), 1.0)


def test_f2_is_invariant_to_relabelling_and_checks_inputs():
  truth, prediction = random_scenes(5)
  expected = losses.f2_iou_score(prediction, truth, reduction="none")
  relabelled = np.where(prediction > 0, 10 ** 6 - prediction, 0)
  np.testing.assert_allclose(losses.f2_iou_score(relabelled, truth, reduction="none"), expected, rtol=1e-6)
  with pytest.raises(ValueError, match="max_instances"):
    losses.f2_iou_score(prediction, truth, max_instances=1)
  with pytest.raises(ValueError, match="pred_labels"):
    losses.f2_iou_score(-prediction, truth)
  with pytest.raises(AssertionError, match="same shape"):
    losses.f2_iou_score(prediction[:, :-1], truth)


def test_extraction_recovers_well_separated_instances_exactly():
  truth = np.zeros((2, 16, 16), np.int32)
  truth[0, 1:5, 1:9], truth[0, 6:9, 2:14], truth[0, 11:15, 5:8] = 1, 2, 3
  truth[1, 3:12, 3:12] = 4
  centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10], [-10, 5]], np.float32)
  rng = np.random.default_rng(0)
  embeddings = centres[truth] + rng.normal(0, 0.3, truth.shape + (2,)).astype(np.float32)
  foreground = np.where(truth > 0, 0.9, 0.1) + rng.uniform(-0.05, 0.05, truth.shape)
  labels = losses.extract_instances(jnp.asarray(foreground), jnp.asarray(embeddings), max_instances=5, distance=2.0)
  np.testing.assert_array_equal(losses.f2_iou_score(labels, truth, reduction="none"), 1.0)
  np.testing.assert_array_equal(labels == 0, truth == 0)


def test_connected_components_merge_touching_objects():
  mask = np.zeros((1, 8, 8), bool)
  mask[0, 1:3, 1:7] = mask[0, 3:5, 1:7] = True  # Two touching bars: one component.
  mask[0, 6:8, 0:2] = True
  mask[0, 7, 7] = True
  labels = np.asarray(losses.connected_components(jnp.asarray(mask)))
  assert len(np.unique(labels[mask])) == 3 and (labels[~mask] == 0).all()
  assert len(np.unique(labels[0, 1:5, 1:7])) == 1


def test_semi_convolution_adds_coordinates_and_scenes_are_consistent():
  psi = SemiConvolution(scale=4.0).apply({}, jnp.zeros((1, 3, 5, 3)))
  np.testing.assert_allclose(psi[0, 0, :, 0], 4.0 * np.linspace(-1, 1, 5))
  np.testing.assert_allclose(psi[0, :, 0, 1], 4.0 * np.linspace(-1, 1, 3))
  np.testing.assert_array_equal(psi[..., 2], 0.0)
  np.testing.assert_array_equal(losses.semi_convolution(jnp.zeros((1, 3, 5, 3)), scale=4.0), psi)
  np.testing.assert_array_equal(losses.pixel_coordinates(3, 5), psi[0, :, :, :2] / 4.0)
  scenes = jax.jit(jax.vmap(ships.sample_scene))(jax.random.split(jax.random.key(0), 16))
  assert scenes["image"].shape == (16, 64, 64, 1) and scenes["labels"].shape == (16, 64, 64)
  assert scenes["labels"].max() <= 6 and scenes["touching"].any() and not scenes["touching"].all()
  # Touching scenes really touch: connected components see fewer objects than there are ships.
  components = losses.connected_components(scenes["labels"] > 0)
  for touching, truth, merged in zip(scenes["touching"], scenes["labels"], components):
    if touching:
      assert len(np.unique(merged[merged > 0])) < len(np.unique(truth[truth > 0]))


def reference_discriminative_loss(labels, embeddings, delta_v=0.5, delta_d=1.5, alpha=1.0, beta=1.0, gamma=0.001):
  """Per image, loops over the instances and the ordered pairs of instances, in float64."""
  labels, embeddings = np.asarray(labels), np.asarray(embeddings, np.float64)
  totals = []
  for ids, psi in zip(labels, embeddings):
    instances = [i for i in np.unique(ids) if i != 0]
    if not instances:
      totals.append(0.0)
      continue
    means = {i: psi[ids == i].mean(axis=0) for i in instances}
    pull = np.mean([np.mean(np.maximum(np.linalg.norm(psi[ids == i] - means[i], axis=-1) - delta_v, 0) ** 2)
                    for i in instances])
    pairs = [(a, b) for a in instances for b in instances if a != b]
    push = np.mean([max(2 * delta_d - np.linalg.norm(means[a] - means[b]), 0) ** 2 for a, b in pairs]) if pairs else 0
    regulariser = np.mean([np.linalg.norm(means[i]) for i in instances])
    totals.append(alpha * pull + beta * push + gamma * regulariser)
  return np.array(totals)


@pytest.mark.parametrize("seed", range(3))
def test_discriminative_loss_matches_float64_loop(seed):
  labels, embeddings = random_instances(seed)
  labels = labels.at[0].set(0)  # An empty image scores 0.
  labels = labels.at[1].set(jnp.where(labels[1] > 0, 3, 0))  # One instance: no push term.
  embeddings = 2.0 * embeddings  # Some distances inside δ_v and some means closer than 2δ_d.
  actual = losses.discriminative_loss(embeddings, labels, max_instances=5, reduction="none")
  np.testing.assert_allclose(actual, reference_discriminative_loss(labels, embeddings), rtol=1e-5)
  assert actual[0] == 0.0
  options = dict(delta_v=0.1, delta_d=3.0, alpha=0.5, beta=2.0, gamma=0.1)
  np.testing.assert_allclose(losses.discriminative_loss(embeddings, labels, max_instances=5, **options),
                             reference_discriminative_loss(labels, embeddings, **options).mean(), rtol=1e-5)


def test_discriminative_loss_gradients_background_and_coincident_embeddings():
  labels, embeddings = random_instances(5)
  loss = lambda e: losses.discriminative_loss(e, labels, max_instances=5)
  gradient = jax.grad(loss)(embeddings)
  assert np.all(np.asarray(gradient)[np.asarray(labels) == 0] == 0.0)
  assert np.abs(np.asarray(gradient)[np.asarray(labels) > 0]).max() > 0
  coincident = jnp.zeros_like(embeddings)  # Every embedding and every mean at one point.
  value, gradient = jax.value_and_grad(loss)(coincident)
  assert np.isfinite(value) and np.isfinite(np.asarray(gradient)).all()
  empty_value, empty_gradient = jax.value_and_grad(
      lambda e: losses.discriminative_loss(e, jnp.zeros_like(labels), max_instances=5))(embeddings)
  assert empty_value == 0.0 and not np.asarray(empty_gradient).any()
  with jax.enable_x64(True):
    labels64, embeddings64 = np.asarray(labels), np.asarray(embeddings, np.float64) * 2.0
    check_grads(lambda e: losses.discriminative_loss(e, labels64, max_instances=5), (embeddings64,),
                order=1, modes=("rev",), eps=1e-6, atol=1e-5, rtol=1e-5)
