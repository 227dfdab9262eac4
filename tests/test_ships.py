"""The synthetic ship scenes: disjoint labels, harbour groups that touch, and the two kinds of group."""

import functools
import inspect

import jax
import numpy as np
import pytest

from configs import instances
from data import ships

NUM_SCENES = 128
DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(ships.sample_scene).parameters.items()
            if parameter.default is not inspect.Parameter.empty}


@pytest.fixture(scope="module")
def scenes():
  sample = jax.jit(jax.vmap(ships.sample_scene))
  return jax.tree.map(np.asarray, sample(jax.random.split(jax.random.key(7), NUM_SCENES)))


def shift_or(mask):
  """The pixels with a 4-neighbour in `mask`."""
  near = np.zeros_like(mask)
  near[1:] |= mask[:-1]
  near[:-1] |= mask[1:]
  near[:, 1:] |= mask[:, :-1]
  near[:, :-1] |= mask[:, 1:]
  return near


def shared_boundary(labels, a, b):
  """The pixels of ship `a` with a 4-neighbour in ship `b`."""
  return (labels == a) & shift_or(labels == b)


def hull_brightness(labels, image, a):
  """The median brightness of ship `a` away from its edges (where the seams are)."""
  mask = labels == a
  inner = mask & ~shift_or(~mask)
  inner[[0, -1]] = inner[:, [0, -1]] = False
  return float(np.median(image[inner if inner.any() else mask]))


def neighbours(scenes, kind):
  """`(labels, image, a, a + 1)` for the consecutive ships of the harbour groups of scenes of `kind`."""
  for i in np.flatnonzero(kind):
    for a in range(1, scenes["group_size"][i]):
      yield scenes["labels"][i], scenes["image"][i, ..., 0], a, a + 1


def test_shapes_ids_and_flags(scenes):
  assert scenes["image"].shape == (NUM_SCENES, 64, 64, 1) and scenes["image"].dtype == np.float32
  assert scenes["labels"].shape == (NUM_SCENES, 64, 64) and scenes["labels"].dtype == np.int32
  for name in ("touching", "distinguishable"):
    assert scenes[name].shape == (NUM_SCENES,) and scenes[name].dtype == bool
  # One label per pixel: the masks are disjoint by construction; the ids are those of the ship slots.
  assert scenes["labels"].min() >= 0 and scenes["labels"].max() <= DEFAULTS["max_ships"]
  assert (scenes["distinguishable"] <= scenes["touching"]).all()
  group_size = scenes["group_size"]
  assert (group_size[~scenes["touching"]] == 0).all()
  assert ((group_size[scenes["touching"]] >= 2) & (group_size[scenes["touching"]] <= DEFAULTS["max_group"])).all()
  for labels, size in zip(scenes["labels"], group_size):
    assert set(range(1, size + 1)) <= set(np.unique(labels))  # The group is painted last, never hidden.


def test_split_fractions_are_as_configured(scenes):
  touching, distinguishable = scenes["touching"], scenes["distinguishable"]
  assert abs(touching.mean() - DEFAULTS["harbour_probability"]) < 0.15
  assert abs(distinguishable[touching].mean() - DEFAULTS["distinguishable_probability"]) < 0.2
  assert min(distinguishable.sum(), (touching & ~distinguishable).sum(), (~touching).sum()) >= 0.2 * NUM_SCENES


def test_harbour_ships_share_a_boundary(scenes):
  """Each ship of a group is 4-adjacent to the next, so connected components of the foreground merge them."""
  pairs = list(neighbours(scenes, scenes["touching"]))
  assert len(pairs) > NUM_SCENES / 2
  for labels, _, a, b in pairs:
    assert shared_boundary(labels, a, b).any()


def test_distinguishable_neighbours_differ_and_show_a_seam(scenes):
  pairs = list(neighbours(scenes, scenes["distinguishable"]))
  assert pairs
  for labels, image, a, b in pairs:
    hull_a, hull_b = hull_brightness(labels, image, a), hull_brightness(labels, image, b)
    assert abs(hull_a - hull_b) > DEFAULTS["min_contrast"] - 0.07  # Less the image noise in the medians.
    # The later ship's seam runs along the boundary it shares with the earlier one, darker than both hulls.
    seam = image[shared_boundary(labels, b, a)]
    assert np.median(seam) < min(hull_a, hull_b) - 0.2


def test_indistinguishable_neighbours_look_the_same(scenes):
  pairs = list(neighbours(scenes, scenes["touching"] & ~scenes["distinguishable"]))
  assert pairs
  for labels, image, a, b in pairs:
    assert abs(hull_brightness(labels, image, a) - hull_brightness(labels, image, b)) < 0.07
    seam = image[shared_boundary(labels, b, a)]
    assert np.median(seam) > hull_brightness(labels, image, a) - 0.07  # No seam.


def test_the_experiment_config_options_are_accepted():
  config = instances.get_config()
  sample = functools.partial(ships.sample_scene, size=config.image_size, **config.data)
  shapes = jax.eval_shape(sample, jax.random.key(0))
  assert shapes["labels"].shape == (config.image_size,) * 2 and shapes["distinguishable"].shape == ()
