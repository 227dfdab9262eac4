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


def well_separated_instances():
  """`(labels (2, 16, 16), embeddings near each instance's centre, the rng)`: centres 10 apart, noise 0.3."""
  truth = np.zeros((2, 16, 16), np.int32)
  truth[0, 1:5, 1:9], truth[0, 6:9, 2:14], truth[0, 11:15, 5:8] = 1, 2, 3
  truth[1, 3:12, 3:12] = 4
  centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10], [-10, 5]], np.float32)
  rng = np.random.default_rng(0)
  embeddings = centres[truth] + rng.normal(0, 0.3, truth.shape + (2,)).astype(np.float32)
  return truth, embeddings, rng


def test_extraction_recovers_well_separated_instances_exactly():
  truth, embeddings, rng = well_separated_instances()
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


def reference_lovasz_hinge(logits, mask):
  """Berman et al.'s Lovász extension of the Jaccard loss Δ(M) = |M| / |P ∪ M| at the hinge errors, from the
  definition: errors in decreasing order, each weighted by Δ's increment as its pixel joins the set M."""
  errors = 1.0 - logits * np.where(mask, 1.0, -1.0)
  positives = set(np.flatnonzero(mask).tolist())
  jaccard = lambda chosen: len(chosen) / len(positives | chosen) if chosen else 0.0
  total, chosen = 0.0, set()
  for i in np.argsort(-errors, kind="stable"):
    before = jaccard(chosen)
    chosen.add(int(i))
    total += max(errors[i], 0.0) * (jaccard(chosen) - before)
  return total


def reference_spatial_loss(labels, embeddings, sigmas, seeds, coordinates=None, instance_weight=1.0,
                           sigma_weight=10.0, seed_weight=1.0, foreground_weight=10.0):
  """Per image, a loop over the instances present (float64): each one's Gaussian over every pixel, its
  Lovász hinge, the spread of its σ and the seed targets, averaged per instance and per pixel."""
  labels = np.asarray(labels)
  embeddings, seeds = np.asarray(embeddings, np.float64), np.asarray(seeds, np.float64)
  sigmas = np.asarray(sigmas, np.float64)
  sigmas = sigmas[..., None] if sigmas.ndim == 3 else sigmas
  totals = []
  for b, ids in enumerate(labels):
    ids = ids.reshape(-1)
    psi = embeddings[b].reshape(ids.size, -1)
    sigma = sigmas[b].reshape(ids.size, -1)
    xy = psi if coordinates is None else np.broadcast_to(coordinates, embeddings.shape)[b].reshape(ids.size, -1)
    probability = 1.0 / (1.0 + np.exp(-seeds[b].reshape(-1)))
    hinges, spreads = [], []
    seed_total = np.sum(probability[ids == 0] ** 2)
    for k in np.unique(ids[ids != 0]):
      members = ids == k
      centre, bandwidth = xy[members].mean(axis=0), sigma[members].mean(axis=0)
      phi = np.exp(-np.sum((psi - centre) ** 2 / (2.0 * bandwidth ** 2), axis=-1))
      hinges.append(reference_lovasz_hinge(2.0 * phi - 1.0, members))
      spreads.append(np.mean((sigma[members] - bandwidth) ** 2))
      seed_total += foreground_weight * np.sum((probability[members] - phi[members]) ** 2)
    mean = lambda values: np.mean(values) if values else 0.0
    totals.append(instance_weight * mean(hinges) + sigma_weight * mean(spreads) + seed_weight * seed_total / ids.size)
  return np.array(totals)


def random_spatial_inputs(seed, batch=3, size=8, max_instances=4, channels=2, sigma_channels=None):
  """Blocky instances (one absent id, an empty image), centres near each instance's and noisy σ and seeds."""
  rng = np.random.default_rng(seed)
  labels = np.kron(rng.integers(0, max_instances + 1, (batch, size // 2, size // 2)), np.ones((2, 2), int))
  labels = labels.astype(np.int32)
  labels[0] = 0  # An empty image.
  labels[1][labels[1] == max_instances] = 1  # Id `max_instances` absent from image 1.
  centres = rng.normal(0.0, 1.5, (max_instances + 1, channels))
  embeddings = centres[labels] + rng.normal(0.0, 0.7, labels.shape + (channels,))
  sigma_shape = labels.shape + (() if sigma_channels is None else (sigma_channels,))
  sigmas = rng.uniform(0.6, 1.6, sigma_shape)
  seeds = rng.normal(0.0, 2.0, labels.shape)
  return labels, embeddings.astype(np.float32), sigmas.astype(np.float32), seeds.astype(np.float32)


@pytest.mark.parametrize("seed, sigma_channels", [(0, None), (1, 2), (2, 1)])
def test_spatial_embedding_loss_matches_float64_loop(seed, sigma_channels):
  labels, embeddings, sigmas, seeds = random_spatial_inputs(seed, sigma_channels=sigma_channels)
  expected = reference_spatial_loss(labels, embeddings, sigmas, seeds)
  actual = losses.spatial_embedding_loss(embeddings, sigmas, seeds, labels, max_instances=4, reduction="none")
  np.testing.assert_allclose(actual, expected, rtol=2e-5, atol=1e-6)
  mean = losses.spatial_embedding_loss(embeddings, sigmas, seeds, labels, max_instances=4)
  np.testing.assert_allclose(mean, expected.mean(), rtol=2e-5)
  # The empty image is its seed term alone.
  np.testing.assert_allclose(actual[0], np.mean(1.0 / (1.0 + np.exp(-seeds[0].astype(np.float64))) ** 2), rtol=1e-5)
  options = dict(instance_weight=0.5, sigma_weight=2.0, seed_weight=3.0, foreground_weight=0.25)
  np.testing.assert_allclose(
      losses.spatial_embedding_loss(embeddings, sigmas, seeds, labels, max_instances=4, reduction="sum", **options),
      reference_spatial_loss(labels, embeddings, sigmas, seeds, **options).sum(), rtol=2e-5)


def test_spatial_embedding_loss_coordinate_centres_background_id_and_jit():
  labels, embeddings, sigmas, seeds = random_spatial_inputs(3)
  coordinates = 2.0 * np.asarray(losses.pixel_coordinates(8, 8))
  loss = lambda e, s, z, l, **options: losses.spatial_embedding_loss(e, s, z, l, max_instances=4, reduction="none",
                                                                     **options)
  np.testing.assert_allclose(loss(embeddings, sigmas, seeds, labels, coordinates=coordinates),
                             reference_spatial_loss(labels, embeddings, sigmas, seeds, coordinates), rtol=2e-5,
                             atol=1e-6)
  expected = loss(embeddings, sigmas, seeds, labels)
  swapped = np.array([3, 1, 2, 0, 4])[labels]  # Background 3 instead of 0: id 0 is an instance.
  np.testing.assert_allclose(loss(embeddings, sigmas, seeds, swapped, background=3), expected, rtol=1e-5)
  jitted = jax.jit(jax.value_and_grad(lambda e, l: jnp.sum(loss(e, sigmas, seeds, l))))
  value, gradient = jitted(embeddings, labels)
  np.testing.assert_allclose(value, expected.sum(), rtol=1e-5)
  np.testing.assert_allclose(gradient, jax.grad(lambda e: jnp.sum(loss(e, sigmas, seeds, labels)))(embeddings),
                             rtol=1e-5, atol=1e-7)
  batched = jax.vmap(lambda e, s, z, l: loss(e[None], s[None], z[None], l[None])[0])(embeddings, sigmas, seeds,
                                                                                       labels)
  np.testing.assert_allclose(batched, expected, rtol=1e-5)
  # Inside jit, ids out of range are background.
  np.testing.assert_allclose(jitted(embeddings, np.where(labels == 4, 9, labels))[0],
                             reference_spatial_loss(np.where(labels == 4, 0, labels), embeddings, sigmas, seeds).sum(),
                             rtol=2e-5)


def autodiff_spatial_loss(labels, embeddings, sigmas, seeds):
  """The loss written directly in JAX (a loop over the instances, jnp.argsort, Berman's cumulative
  Jaccard weights) and differentiated by plain autodiff: the gradient to compare ours with."""
  total = 0.0
  for b, ids in enumerate(np.asarray(labels)):
    ids = ids.reshape(-1)
    psi, sigma = embeddings[b].reshape(ids.size, -1), sigmas[b].reshape(ids.size, -1)
    probability = jax.nn.sigmoid(seeds[b].reshape(-1))
    instances = [k for k in np.unique(ids) if k != 0]
    hinge = spread = 0.0
    seed_total = jnp.sum(jnp.where(ids == 0, probability ** 2, 0.0))
    for k in instances:
      members = ids == k
      centre, bandwidth = psi[members].mean(axis=0), sigma[members].mean(axis=0)
      phi = jnp.exp(-jnp.sum((psi - centre) ** 2 / (2.0 * bandwidth ** 2), axis=-1))
      errors = jnp.where(members, 2.0 - 2.0 * phi, 2.0 * phi)
      order = jnp.argsort(-errors)
      truth = jnp.asarray(members, errors.dtype)[order]
      jaccard = 1.0 - (truth.sum() - jnp.cumsum(truth)) / (truth.sum() + jnp.cumsum(1.0 - truth))
      hinge += jnp.dot(jax.nn.relu(errors[order]), jnp.diff(jaccard, prepend=0.0))
      spread += jnp.mean((sigma[members] - jax.lax.stop_gradient(bandwidth)) ** 2)
      seed_total += 10.0 * jnp.sum(jnp.where(members, (probability - jax.lax.stop_gradient(phi)) ** 2, 0.0))
    count = max(len(instances), 1)
    total += hinge / count + 10.0 * spread / count + seed_total / ids.size
  return total / len(labels)


def test_spatial_embedding_loss_gradients_in_float64():
  labels, embeddings, sigmas, seeds = random_spatial_inputs(4, batch=2, size=6, max_instances=3)
  with jax.enable_x64(True):
    arrays = tuple(np.asarray(x, np.float64) for x in (embeddings, sigmas, seeds))
    loss = lambda e, s, z: losses.spatial_embedding_loss(e, s, z, labels, max_instances=3)
    ours = jax.grad(loss, argnums=(0, 1, 2))(*arrays)
    direct = jax.grad(lambda e, s, z: autodiff_spatial_loss(labels, e, s, z), argnums=(0, 1, 2))(*arrays)
    for a, b in zip(ours, direct):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # Finite differences see through the stopped seed targets φ (autodiff does not, by design): check the
    # embeddings and σ without the seed term, the seeds with it. The stopped σ_k in the smoothness term
    # changes nothing, its derivative through σ_k being Σ_i (σ_i − σ_k) = 0.
    without_seeds = lambda e, s: losses.spatial_embedding_loss(e, s, arrays[2], labels, max_instances=3,
                                                               seed_weight=0.0)
    check_grads(without_seeds, arrays[:2], order=1, modes=("rev", "fwd"), eps=1e-6, atol=1e-6, rtol=1e-6)
    check_grads(lambda z: loss(*arrays[:2], z), arrays[2:], order=1, modes=("rev", "fwd"), eps=1e-6, atol=1e-6,
                rtol=1e-6)


def test_spatial_embedding_loss_gradients_background_absent_and_coincident():
  labels, embeddings, sigmas, seeds = random_spatial_inputs(5)
  background = labels == 0
  loss = lambda e, s, z, **options: losses.spatial_embedding_loss(e, s, z, labels, max_instances=4, **options)
  d_embeddings, d_sigmas, d_seeds = jax.grad(loss, argnums=(0, 1, 2))(embeddings, sigmas, seeds)
  assert not np.asarray(d_sigmas)[background].any()  # Exactly zero: σ_k and the smoothness use instances only.
  assert np.abs(np.asarray(d_sigmas)[~background]).max() > 0
  assert np.abs(np.asarray(d_seeds)[background]).min() > 0  # Regressed to 0.
  # The paper's hinge takes every pixel of the image as a negative of every other instance: background
  # embeddings get gradient from it, and from nothing else.
  assert np.abs(np.asarray(d_embeddings)[background]).max() > 0
  no_hinge = jax.grad(lambda e: loss(e, sigmas, seeds, instance_weight=0.0))(embeddings)
  assert not np.asarray(no_hinge)[background].any()
  # Everything of an instance at one point, the centres on top of each other, σ = 0: finite.
  for e, s in ((np.zeros_like(embeddings), sigmas), (np.where(labels[..., None] == 2, 1.0, embeddings), sigmas),
               (embeddings, np.zeros_like(sigmas))):
    value, gradients = jax.value_and_grad(loss, argnums=(0, 1, 2))(e, s, seeds)
    assert np.isfinite(value) and all(np.isfinite(np.asarray(g)).all() for g in gradients)
  # No instances and no seed weight: 0 with a zero gradient; absent ids (all but 1) add exactly nothing.
  empty = lambda e: losses.spatial_embedding_loss(e, sigmas, seeds, np.zeros_like(labels), max_instances=4,
                                                  seed_weight=0.0)
  value, gradient = jax.value_and_grad(empty)(embeddings)
  assert value == 0.0 and not np.asarray(gradient).any()
  one = np.minimum(labels, 1)
  np.testing.assert_array_equal(
      losses.spatial_embedding_loss(embeddings, sigmas, seeds, one, max_instances=4, reduction="none"),
      losses.spatial_embedding_loss(embeddings, sigmas, seeds, one, max_instances=1, reduction="none"))


def test_spatial_extraction_recovers_well_separated_instances():
  truth, embeddings, rng = well_separated_instances()
  sigmas = np.full(truth.shape, 2.0, np.float32)  # φ > 0.5 within 2.35 of the seed's embedding.
  seeds = np.where(truth > 0, 3.0, -3.0) + rng.normal(0, 0.5, truth.shape).astype(np.float32)
  labels = losses.extract_spatial_instances(embeddings, sigmas, seeds, max_instances=5)
  assert labels.dtype == jnp.int32 and labels.shape == truth.shape
  np.testing.assert_array_equal(losses.f2_iou_score(labels, truth, reduction="none"), 1.0)
  np.testing.assert_array_equal(labels == 0, truth == 0)
  np.testing.assert_array_equal(jax.jit(lambda e: losses.extract_spatial_instances(
      e, sigmas, seeds, max_instances=5))(embeddings), labels)
  # The bound holds, instances are numbered from 1 in the order found, and a high threshold finds nothing.
  capped = losses.extract_spatial_instances(embeddings, sigmas, seeds, max_instances=2, max_rounds=5)
  assert set(np.unique(capped).tolist()) == {0, 1, 2}
  none = losses.extract_spatial_instances(embeddings, sigmas, seeds, max_instances=5, seed_threshold=0.9999)
  assert not np.asarray(none).any()
  # Proposals smaller than `min_pixels` are dropped: the 12-pixel ship 3 (3 × 4) goes with min_pixels = 13.
  small = losses.extract_spatial_instances(embeddings, sigmas, seeds, max_instances=5, min_pixels=13)
  assert not np.asarray(small)[0, 11:15, 5:8].any() and np.asarray(small)[0, 1:5, 1:9].all()


def test_spatial_extraction_inverts_a_trained_like_prediction():
  """Centres from the truth's mean coordinates, σ from each instance's spread: what the loss trains towards."""
  truth = np.zeros((1, 20, 20), np.int32)
  truth[0, 2:8, 2:6], truth[0, 2:8, 6:10], truth[0, 12:18, 4:16] = 1, 2, 3  # 1 and 2 touch.
  coordinates = np.asarray(losses.pixel_coordinates(20, 20)) * 10.0
  centres = np.stack([coordinates[truth[0] == k].mean(axis=0) for k in range(4)])
  embeddings = np.where(truth[..., None] > 0, centres[truth], coordinates[None]).astype(np.float32)
  sigmas = np.full(truth.shape, 0.5, np.float32)
  seeds = np.where(truth > 0, 4.0, -4.0).astype(np.float32)
  labels = losses.extract_spatial_instances(embeddings, sigmas, seeds, max_instances=4)
  np.testing.assert_array_equal(losses.f2_iou_score(labels, truth, reduction="none"), 1.0)
  loss = losses.spatial_embedding_loss(embeddings, sigmas, seeds, truth, max_instances=3, coordinates=coordinates)
  assert loss < 0.01
