"""The complete semi-convolutional loss (eq. 5 + steered-kernel cross-entropy), its extraction, and the sampled
spatial-embedding hinge, against float64 loops written from the math."""

import jax
from jax.test_util import check_grads
import numpy as np
import pytest

import losses
from tests.test_instances import reference_spatial_loss


def reference_kernel_loss(labels, embeddings, sigma, key, num_seeds, kernel="laplacian", pull_weight=1.0,
                          kernel_weight=1.0):
  """Per image, loops over the instances and the pixels (float64), the seeds drawn as the docstring says."""
  labels, embeddings = np.asarray(labels), np.asarray(embeddings, np.float64)
  batch, max_id = labels.shape[0], int(labels.max())
  order_key, pixel_key = jax.random.split(key)
  instance_draws = np.asarray(jax.random.uniform(order_key, (batch, MAX_INSTANCES + 1)))
  pixel_draws = np.asarray(jax.random.uniform(pixel_key, (batch, num_seeds)))
  assert max_id <= MAX_INSTANCES
  totals = []
  for b in range(batch):
    ids, psi = labels[b].reshape(-1), embeddings[b].reshape(labels[b].size, -1)
    present = [k for k in range(1, MAX_INSTANCES + 1) if np.any(ids == k)]
    pull = sum(np.mean([np.linalg.norm(psi[u] - psi[ids == k].mean(axis=0)) for u in np.flatnonzero(ids == k)])
               for k in present)
    cross_entropy = 0.0
    if present:
      shuffled = sorted(present, key=lambda k: instance_draws[b, k])
      for j in range(num_seeds):
        instance = shuffled[j % len(present)]
        members = np.flatnonzero(ids == instance)
        seed = members[min(int(np.floor(pixel_draws[b, j] * len(members))), len(members) - 1)]
        for u in range(ids.size):
          distance = np.linalg.norm(psi[u] - psi[seed])
          a = distance / sigma if kernel == "laplacian" else distance ** 2 / (2 * sigma ** 2)
          cross_entropy += a if ids[u] == instance else -np.log(1.0 - np.exp(-max(a, 1e-6)))
      cross_entropy /= num_seeds * ids.size
    totals.append(pull_weight * pull + kernel_weight * cross_entropy)
  return np.array(totals)


MAX_INSTANCES = 4


def touching_pair():
  """One 4 × 6 image: instances 1 and 2 touch (columns 0-2 and 3-5), a background row below."""
  labels = np.zeros((1, 5, 6), np.int32)
  labels[0, :4, :3], labels[0, :4, 3:] = 1, 2
  return labels


def random_case(seed, batch=3, size=6, channels=2):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, MAX_INSTANCES + 1, (batch, size, size)).astype(np.int32)
  labels[0] = 0  # No instances: 0.
  labels[1][labels[1] == 3] = 1  # An absent id.
  embeddings = rng.normal(0.0, 1.5, labels.shape + (channels,))
  return labels, embeddings


@pytest.mark.parametrize("kernel, num_seeds, seed", [("laplacian", 3, 0), ("gaussian", 5, 1)])
def test_kernel_loss_matches_float64_loop(kernel, num_seeds, seed):
  labels, embeddings = random_case(seed)
  key = jax.random.key(seed)
  with jax.enable_x64(True):
    expected = reference_kernel_loss(labels, embeddings, 0.8, key, num_seeds, kernel, 0.5, 2.0)
    actual = losses.semi_conv_kernel_loss(embeddings, labels, sigma=0.8, key=key, max_instances=MAX_INSTANCES,
                                          num_seeds=num_seeds, kernel=kernel, pull_weight=0.5, kernel_weight=2.0,
                                          reduction="none")
    np.testing.assert_allclose(actual, expected, rtol=1e-10)
  assert actual[0] == 0.0
  # Eq. 5 alone is the kernel weight 0.
  np.testing.assert_allclose(
      losses.semi_conv_kernel_loss(embeddings, labels, sigma=0.8, key=key, max_instances=MAX_INSTANCES,
                                   kernel_weight=0.0, reduction="none"),
      losses.semi_conv_loss(embeddings, labels, max_instances=MAX_INSTANCES, reduction="none"), rtol=1e-6)


def test_gradients_in_embeddings_and_sigma_match_finite_differences():
  labels, embeddings = random_case(2, batch=2, size=4)
  with jax.enable_x64(True):
    for kernel in ("laplacian", "gaussian"):
      loss = lambda e, s, k=kernel: losses.semi_conv_kernel_loss(e, labels, sigma=s, key=jax.random.key(0),
                                                                 max_instances=MAX_INSTANCES, num_seeds=4, kernel=k)
      check_grads(loss, (embeddings, np.float64(0.9)), order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)


def test_eq5_merges_touching_instances_and_the_kernel_term_separates_them():
  labels = touching_pair()
  merged = np.zeros(labels.shape + (2,))  # Every pixel of both instances points at one shared point.
  merged[labels == 0] = (0.0, 8.0)  # The background elsewhere.
  assert losses.semi_conv_loss(merged, labels, max_instances=2) == 0.0
  loss = lambda e: losses.semi_conv_kernel_loss(e, labels, sigma=1.0, key=jax.random.key(0), max_instances=2,
                                                num_seeds=4)
  assert loss(merged) > 1.0
  # A coincident point is stationary for any radial kernel; a step of descent from beside it separates the two.
  nearly = merged + np.random.default_rng(0).normal(0.0, 0.05, merged.shape)
  means = lambda e: [e[labels == k].mean(axis=0) for k in (1, 2)]
  separation = lambda e: np.linalg.norm(np.subtract(*means(e)))
  stepped = nearly - 0.5 * np.asarray(jax.grad(loss)(nearly))
  assert separation(stepped) > separation(nearly) + 0.1
  assert loss(stepped) < loss(nearly)


def test_kernel_loss_edge_cases_and_errors():
  labels, embeddings = random_case(3)
  options = dict(sigma=1.0, key=jax.random.key(0), max_instances=MAX_INSTANCES)
  value, gradient = jax.value_and_grad(lambda e: losses.semi_conv_kernel_loss(e, labels, **options))(
      np.zeros_like(embeddings, np.float32))
  assert np.isfinite(value) and np.isfinite(np.asarray(gradient)).all()
  empty = losses.semi_conv_kernel_loss(np.zeros((2, 0, 3, 2), np.float32), np.zeros((2, 0, 3), np.int32), **options)
  assert empty == 0.0
  with pytest.raises(AssertionError, match="embeddings"):
    losses.semi_conv_kernel_loss(embeddings[:, :-1], labels, **options)
  with pytest.raises(ValueError, match="`sigma` must be > 0"):
    losses.semi_conv_kernel_loss(embeddings, labels, **{**options, "sigma": 0.0})
  with pytest.raises(AssertionError, match="`sigma` must be a scalar"):
    jax.jit(lambda s: losses.semi_conv_kernel_loss(embeddings, labels, **{**options, "sigma": s}))(np.ones(2))
  with pytest.raises(TypeError, match="`key`"):
    losses.semi_conv_kernel_loss(embeddings, labels, **{**options, "key": 0})
  with pytest.raises(ValueError, match="`kernel`"):
    losses.semi_conv_kernel_loss(embeddings, labels, **options, kernel="cauchy")
  with pytest.raises(ValueError, match="`num_seeds`"):
    losses.semi_conv_kernel_loss(embeddings, labels, **options, num_seeds=0)


def test_kernel_extraction_reads_instances_at_the_level_set():
  labels = touching_pair()
  centres = np.array([[0.0, 9.0], [0.0, 0.0], [3.0, 0.0]])  # Touching in the image, 3 apart in Ψ.
  embeddings = centres[labels] + np.random.default_rng(0).normal(0.0, 0.1, labels.shape + (2,))
  foreground = np.where(labels > 0, 0.9, 0.1) + np.random.default_rng(1).uniform(-0.05, 0.05, labels.shape)
  extract = jax.jit(lambda s: losses.extract_kernel_instances(foreground, embeddings, sigma=s, max_instances=4))
  found = np.asarray(extract(1.0))  # K > 0.5 within σ ln 2 ≈ 0.69 of the seed: each instance, whole.
  np.testing.assert_array_equal(losses.f2_iou_score(found, labels, reduction="none"), 1.0)
  np.testing.assert_array_equal(found == 0, labels == 0)
  assert len(np.unique(np.asarray(extract(10.0))[labels > 0])) == 1  # A σ too wide merges them.
  assert np.asarray(losses.extract_kernel_instances(foreground, embeddings, sigma=1.0, max_instances=4,
                                                    min_pixels=13)).max() == 0  # 12-pixel instances dropped.


def test_sampled_spatial_hinge_is_exact_when_every_instance_is_drawn_and_else_the_drawn_ones():
  rng = np.random.default_rng(0)
  labels = np.kron(rng.integers(0, 4, (2, 3, 3)), np.ones((2, 2), int)).astype(np.int32)  # Ids 1-3 present.
  embeddings = rng.normal(0.0, 1.5, labels.shape + (2,)).astype(np.float32)
  sigmas, seeds = rng.uniform(0.6, 1.6, labels.shape).astype(np.float32), rng.normal(0, 2, labels.shape).astype(
      np.float32)
  loss = lambda **options: losses.spatial_embedding_loss(embeddings, sigmas, seeds, labels, max_instances=5,
                                                         reduction="none", **options)
  exact = loss()
  np.testing.assert_allclose(loss(sampled_instances=3, key=jax.random.key(0)), exact, rtol=1e-6)
  np.testing.assert_array_equal(loss(sampled_instances=5), exact)  # Every id: exact, no key needed.
  key = jax.random.key(1)
  draws = np.asarray(jax.random.uniform(key, (2, 6)))
  for b in range(2):  # One drawn instance: its hinge stands for all, the other terms stay exact.
    present = [k for k in range(1, 6) if np.any(labels[b] == k)]
    drawn = min(present, key=lambda k: draws[b, k])
    hinges = [reference_spatial_loss(labels[b:b + 1] * (labels[b:b + 1] == k), embeddings[b:b + 1],
                                     sigmas[b:b + 1], seeds[b:b + 1], sigma_weight=0.0, seed_weight=0.0)[0]
              for k in present]
    rest = reference_spatial_loss(labels[b:b + 1], embeddings[b:b + 1], sigmas[b:b + 1], seeds[b:b + 1],
                                  instance_weight=0.0)[0]
    np.testing.assert_allclose(loss(sampled_instances=1, key=key)[b], rest + hinges[present.index(drawn)],
                               rtol=2e-5)
  with pytest.raises(ValueError, match="pass `key`"):
    loss(sampled_instances=2)
