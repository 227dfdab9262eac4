"""`losses` used the way another JAX project uses it: inside its transformations, with captured constants.

Every public function runs under `jax.jit`, `lax.scan`, `jax.vmap`,
`shard_map` and `jax.checkpoint` with its first input traced and the others
captured from the enclosing scope as concrete arrays (a fixed label map or
evaluation set, say); with everything captured; from NumPy inputs; and with
int64/float64 inputs under `jax_enable_x64`. Each result must equal the
eager one. A captured array is concrete while the function is traced, so a
value check that calls `int()` or `np.asarray` on something derived from it
with `jnp` would fail here.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec
import numpy as np
import pytest

import losses

RNG = np.random.default_rng(0)


def _floats(*shape):
  return RNG.normal(size=shape).astype(np.float32)


def _labels(*shape, high=3):
  return RNG.integers(0, high + 1, size=shape).astype(np.int32)


MIXTURE = np.concatenate([_floats(4, 3, 2), RNG.uniform(0.2, 1.0, (4, 3, 2)).astype(np.float32)], axis=-1)
WEIGHTING_NAMES = ("constant", "balanced_weights", "trainable_alpha", "uw", "imtl_l", "dwa", "random",
                   "geometric_mean", "famo", "stch", "pbi", "cosmos")
WEIGHTING_OPTIONS = {"constant": dict(weights=(0.3, 0.7)), "stch": dict(mu=0.5, weights=(0.3, 0.7)),
                     "pbi": dict(theta=5.0, weights=(0.3, 0.7)), "cosmos": dict(lambda_=1.0, weights=(0.3, 0.7))}


def _weighting_combine(name):
  """`task_losses -> (total, weights)` of the weighting `name`, built on each call (so in the caller's dtypes)."""
  def combine(task_losses):
    weighting = losses.loss_weighting(name, num_tasks=2, **WEIGHTING_OPTIONS.get(name, {}))
    params, state = weighting.init()
    return weighting.combine(params, state, task_losses)[:2]
  return combine


def _aggregator_update(name, **options):
  """`(kernel gradients (3, 2, 2), bias gradients (3, 3)) -> (update, state)` of aggregator `name`, from init."""
  def update(kernel, bias):
    grads = {"kernel": kernel, "bias": bias}
    aggregator = losses.gradient_aggregator(name, num_tasks=3, **options)
    params = jax.tree.map(lambda g: jnp.zeros_like(g[0]), grads)
    task_losses = jnp.array([1.0, 2.0, 0.5], jnp.result_type(kernel))
    return aggregator.update(grads, aggregator.init(params), params, task_losses=task_losses)
  return update


# A QP solved by projected gradient and active set (mgda), Newton steps under `lax.cond` with state (nash_mtl),
# random draws per coordinate (graddrop), state and task losses (gradnorm), a pytree state (excess_mtl).
AGGREGATOR_CASES = ("mgda", "nash_mtl", "graddrop", "gradnorm", "excess_mtl")

# name -> (function of arrays, the arrays: the first is traced, the others captured)
CASES = {
    "angular_distance": (losses.angular_distance, (_floats(2, 4, 4, 2), _floats(2, 4, 4, 2))),
    "angular_loss": (lambda p, t, m: losses.angular_loss(p, t, mask=m),
                     (_floats(2, 4, 4, 2), _floats(2, 4, 4, 2), RNG.random((2, 4, 4)) > 0.3)),
    "orientation_metrics": (lambda p, t, m: losses.orientation_metrics(p, t, mask=m, axial=True),
                            (_floats(2, 4, 4, 2), _floats(2, 4, 4, 2), RNG.random((2, 4, 4)) > 0.3)),
    "encode_orientation": (functools.partial(losses.encode_orientation, axial=True), (_floats(2, 4, 4),)),
    "decode_orientation": (losses.decode_orientation, (_floats(2, 4, 4, 2),)),
    "propel_loss": (losses.propel_loss, (MIXTURE, _floats(4, 2))),
    "mixture_log_density": (lambda p, t, w: losses.mixture_log_density(p, t, log_weights=w),
                            (MIXTURE, _floats(4, 2), _floats(4, 3))),
    "mixture_mean": (lambda p, w: losses.mixture_mean(p, log_weights=w), (MIXTURE, _floats(4, 3))),
    "constrain_mixture": (losses.constrain_mixture, (_floats(4, 3, 4),)),
    "split_mixture": (losses.split_mixture, (MIXTURE,)),
    "log_gaussian_overlap": (losses.log_gaussian_overlap,
                             (_floats(5, 3), np.ones((5, 3), np.float32), _floats(5, 3), np.ones(3, np.float32))),
    "semi_conv_loss": (lambda e, l: losses.semi_conv_loss(e, l, max_instances=3),
                       (_floats(2, 5, 5, 2), _labels(2, 5, 5))),
    "semi_conv_loss/traced labels": (lambda l, e: losses.semi_conv_loss(e, l, max_instances=3),
                                     (_labels(2, 5, 5), _floats(2, 5, 5, 2))),
    "semi_conv_kernel_loss": (lambda e, l: losses.semi_conv_kernel_loss(e, l, sigma=0.7, key=jax.random.key(1),
                                                                        max_instances=3, num_seeds=3),
                              (_floats(2, 5, 5, 2), _labels(2, 5, 5))),
    "semi_conv_kernel_loss/traced sigma, gaussian": (
        lambda s, e, l: losses.semi_conv_kernel_loss(e, l, sigma=s, key=jax.random.PRNGKey(2), max_instances=3,
                                                     kernel="gaussian"),
        (np.float32(1.3), _floats(2, 5, 5, 2), _labels(2, 5, 5))),
    "discriminative_loss": (lambda e, l: losses.discriminative_loss(e, l, max_instances=3),
                            (_floats(2, 5, 5, 2), _labels(2, 5, 5))),
    "f2_iou_score": (lambda p, t: losses.f2_iou_score(p, t, max_instances=4), (_labels(2, 6, 6), _labels(2, 6, 6))),
    "f2_iou_score/traced truth": (lambda t, p: losses.f2_iou_score(p, t, max_instances=4),
                                  (_labels(2, 6, 6), _labels(2, 6, 6))),
    "average_precision": (lambda p, t: losses.average_precision(p, t, max_instances=4),
                          (_labels(2, 6, 6), _labels(2, 6, 6))),
    "matching_counts": (lambda t, p: losses.matching_counts(p, t, max_instances=4, reduction="none"),
                        (_labels(2, 6, 6), _labels(2, 6, 6))),
    "pooled_scores": (lambda *counts: losses.pooled_scores(counts), (_labels(10), _labels(10), _labels(10))),
    "pixel_coordinates": (lambda x: x + losses.pixel_coordinates(3, 4), (_floats(3, 4, 2),)),
    "semi_convolution": (lambda e, s: losses.semi_convolution(e, scale=s), (_floats(2, 3, 4, 3), np.float32(2.5))),
    "extract_instances": (lambda f, e: losses.extract_instances(f, e, max_instances=3, distance=0.5),
                          (RNG.random((2, 5, 5)).astype(np.float32), _floats(2, 5, 5, 2))),
    "extract_kernel_instances": (lambda f, e: losses.extract_kernel_instances(f, e, sigma=0.8, max_instances=3),
                                 (RNG.random((2, 5, 5)).astype(np.float32), _floats(2, 5, 5, 2))),
    "extract_kernel_instances/traced sigma": (
        lambda s, f, e: losses.extract_kernel_instances(f, e, sigma=s, max_instances=3, kernel="gaussian"),
        (np.float32(0.8), RNG.random((2, 5, 5)).astype(np.float32), _floats(2, 5, 5, 2))),
    "connected_components": (losses.connected_components, (RNG.random((2, 5, 5)) > 0.5,)),
    "trainable_alpha_loss": (losses.trainable_alpha_loss,
                             (np.float32(0.3), RNG.random(4).astype(np.float32), np.float32(2.0))),
    "balanced_weights_loss": (losses.balanced_weights_loss,
                              (np.array([0.2, 0.8], np.float32), np.array([1.5, 0.5], np.float32))),
    "uncertainty_weighted_loss": (losses.uncertainty_weighted_loss, (_floats(2), np.array([1.5, 0.5], np.float32))),
    "dwa_weights": (losses.dwa_weights, (np.array([1.0, 2.0], np.float32), np.array([1.5, 1.0], np.float32))),
    "spatial_embedding_loss": (lambda e, s, z, l: losses.spatial_embedding_loss(e, s, z, l, max_instances=3),
                               (_floats(2, 5, 5, 2), RNG.uniform(0.5, 1.5, (2, 5, 5)).astype(np.float32),
                                _floats(2, 5, 5), _labels(2, 5, 5))),
    "spatial_embedding_loss/traced labels": (
        lambda l, e, s, z: losses.spatial_embedding_loss(e, s, z, l, max_instances=3),
        (_labels(2, 5, 5), _floats(2, 5, 5, 2), RNG.uniform(0.5, 1.5, (2, 5, 5, 2)).astype(np.float32),
         _floats(2, 5, 5))),
    "spatial_embedding_loss/traced sigmas, coordinate centres": (
        lambda s, e, z, l, c: losses.spatial_embedding_loss(e, s, z, l, max_instances=3, coordinates=c),
        (RNG.uniform(0.5, 1.5, (2, 5, 5)).astype(np.float32), _floats(2, 5, 5, 2), _floats(2, 5, 5),
         _labels(2, 5, 5), _floats(5, 5, 2))),
    "spatial_embedding_loss/sampled instances": (
        lambda e, s, z, l: losses.spatial_embedding_loss(e, s, z, l, max_instances=3, sampled_instances=2,
                                                         key=jax.random.key(3)),
        (_floats(2, 5, 5, 2), RNG.uniform(0.5, 1.5, (2, 5, 5)).astype(np.float32), _floats(2, 5, 5),
         _labels(2, 5, 5))),
    "extract_spatial_instances": (lambda e, s, z: losses.extract_spatial_instances(e, s, z, max_instances=3),
                                  (_floats(2, 5, 5, 2), RNG.uniform(0.5, 1.5, (2, 5, 5)).astype(np.float32),
                                   _floats(2, 5, 5))),
    **{f"loss_weighting/{name}": (_weighting_combine(name), (np.array([1.5, 0.5], np.float32),))
       for name in WEIGHTING_NAMES},
    **{f"gradient_aggregator/{name}": (_aggregator_update(name), (_floats(3, 2, 2), _floats(3, 3)))
       for name in AGGREGATOR_CASES},
}

# Public names that are not array functions of their own (`loss_weighting` and `gradient_aggregator` have cases
# for their methods; tests/test_aggregation.py runs every aggregator under jit in float32 and float64).
NOT_ARRAY_FUNCTIONS = {"LossWeighting", "loss_weighting", "AGGREGATOR_NAMES", "MatchingCounts", "PooledScores",
                       "LOSS_WEIGHTING_NAMES", "scalarization", "aggregation"}


def test_every_public_function_has_a_case():
  covered = {name.split("/")[0] for name in CASES}
  assert set(losses.__all__) - NOT_ARRAY_FUNCTIONS <= covered


def _one_device_shard_map(fn):
  mesh = jax.make_mesh((1,), ("data",))
  return jax.shard_map(fn, mesh=mesh, in_specs=PartitionSpec(), out_specs=PartitionSpec(), check_vma=False)


def _under_every_transformation(fn, arrays):
  """`fn` of `arrays` under each transformation, all in one jitted program (one compilation per case).

  The first array is the traced input; the others are captured from the enclosing scope as concrete arrays.
  """
  first, *rest = arrays
  captured = [jnp.asarray(x) for x in rest]
  everything_captured = [jnp.asarray(x) for x in arrays]
  with_first = lambda x: fn(x, *captured)

  def scan(x):
    _, outputs = jax.lax.scan(lambda carry, y: (carry, with_first(y)), None, x[None])
    return jax.tree.map(lambda y: y[0], outputs)

  def vmap(x):
    return jax.tree.map(lambda y: y[1], jax.vmap(with_first)(jnp.stack([x, x])))

  def all_of_them(x):
    return {
        "jit": with_first(x),
        "jit, everything captured": fn(*everything_captured),
        "lax.scan": scan(x),
        "vmap": vmap(x),
        "shard_map": _one_device_shard_map(with_first)(x),
        "checkpoint": jax.checkpoint(with_first)(x),
    }

  return jax.jit(all_of_them)(jnp.asarray(first))


def _assert_trees_close(actual, expected):
  actual_leaves, actual_structure = jax.tree.flatten(actual)
  expected_leaves, expected_structure = jax.tree.flatten(expected)
  assert actual_structure == expected_structure
  for a, e in zip(actual_leaves, expected_leaves):
    assert jnp.shape(a) == jnp.shape(e)
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_each_function_under_each_transformation_equals_eager(case):
  fn, arrays = CASES[case]
  expected = fn(*[jnp.asarray(x) for x in arrays])
  _assert_trees_close(fn(*arrays), expected)  # NumPy inputs.
  for transform, result in _under_every_transformation(fn, arrays).items():
    try:
      _assert_trees_close(result, expected)
    except AssertionError as error:
      raise AssertionError(f"{case} under {transform}: {error}") from None


DIFFERENTIABLE = ("angular_loss", "propel_loss", "semi_conv_loss", "discriminative_loss", "mixture_log_density",
                  "trainable_alpha_loss", "spatial_embedding_loss", "spatial_embedding_loss/sampled instances",
                  "semi_conv_kernel_loss", "semi_conv_kernel_loss/traced sigma, gaussian",
                  "spatial_embedding_loss/traced sigmas, coordinate centres")


@pytest.mark.parametrize("case", DIFFERENTIABLE)
def test_gradients_with_captured_constants_under_jit_and_checkpoint(case):
  fn, arrays = CASES[case]
  first, *rest = arrays
  captured = [jnp.asarray(x) for x in rest]
  loss = lambda x: jnp.sum(fn(x, *captured))
  expected = jax.grad(loss)(jnp.asarray(first))
  _assert_trees_close(jax.jit(jax.grad(loss))(first), expected)
  _assert_trees_close(jax.jit(jax.grad(jax.checkpoint(loss)))(first), expected)


def test_value_checks_still_run_on_host_values_inside_a_trace():
  """A captured NumPy label map is checked at trace time; a traced one cannot be and is not."""
  labels = np.full((1, 3, 3), 7, np.int32)
  embeddings = jnp.zeros((1, 3, 3, 2))
  with pytest.raises(ValueError, match="max_instances"):
    jax.jit(lambda e: losses.semi_conv_loss(e, labels, max_instances=3))(embeddings)
  traced = jax.jit(lambda l: losses.semi_conv_loss(embeddings, l, max_instances=3))(labels)
  assert float(traced) == 0.0  # Ids out of range are background.


@pytest.fixture
def enable_x64():
  with jax.enable_x64(True):
    yield


def _to_64_bit(x):
  x = np.asarray(x)
  if x.dtype == np.float32:
    return x.astype(np.float64)
  if x.dtype == np.int32:
    return x.astype(np.int64)
  return x


@pytest.mark.parametrize("case", CASES)
def test_int64_and_float64_inputs_under_x64(case, enable_x64):
  del enable_x64
  fn, arrays = CASES[case]
  arrays64 = [_to_64_bit(x) for x in arrays]
  eager = fn(*arrays64)
  _assert_trees_close(jax.jit(fn)(*arrays64), eager)
  any_float = any(np.asarray(x).dtype == np.float64 for x in arrays64)
  for leaf in jax.tree.leaves(eager):
    if any_float and jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      assert jnp.result_type(leaf) == jnp.float64, case
