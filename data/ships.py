"""Synthetic satellite-like scenes: elongated, rotated ships on a textured sea, with exact instance labels.

Each scene holds up to `max_ships` ships. With probability `harbour_probability`
the first `2…max_group` ships form a harbour group: parallel and side by side,
each hull overlapping its neighbour by `overlap` pixels before the later one
occludes the earlier, so neighbouring masks always share a boundary and the
connected components of the foreground merge them. A harbour group is of one
of two kinds, chosen per scene:

* distinguishable (probability `distinguishable_probability`): the hulls
  alternate dark (brightness in [0.5, 0.6]) and bright (at least
  `min_contrast` brighter), each has a thin dark seam (`seam_width` pixels of
  `seam_brightness`, inside its label) along the side facing the previous
  ship, so the shared boundary is visible in the image, and the ships have
  their own widths, lengths, bow shapes, headings and larger staggers;
* indistinguishable: the same brightness and width, no seam and small
  staggers, so nothing in the image separates them (only their lengths differ).

The other ships are placed at random and may be absent; the harbour group is
painted over them and later ships occlude earlier ones, so the instance masks
never overlap. Some scenes have no ship.
"""

import jax
import jax.numpy as jnp

_DARK_HULL = (0.5, 0.6)  # The brightness range of the dark hulls of a distinguishable group.


def _sea(key: jax.Array, size: int) -> jax.Array:
  """A smooth random texture: a sum of random sinusoids plus fine noise, around 0.3."""
  wave_key, noise_key = jax.random.split(key)
  keys = jax.random.split(wave_key, 4)
  y, x = jnp.meshgrid(jnp.arange(size), jnp.arange(size), indexing="ij")

  def wave(key):
    angle_key, period_key, phase_key = jax.random.split(key, 3)
    angle = jax.random.uniform(angle_key, maxval=2 * jnp.pi)
    period = jax.random.uniform(period_key, minval=6.0, maxval=30.0)
    phase = jax.random.uniform(phase_key, maxval=2 * jnp.pi)
    return jnp.sin(2 * jnp.pi / period * (jnp.cos(angle) * x + jnp.sin(angle) * y) + phase)

  texture = 0.05 * jnp.sum(jax.vmap(wave)(keys), axis=0)
  return 0.3 + texture + 0.04 * jax.random.normal(noise_key, (size, size))


def _ship_mask(size, centre, angle, length, width, bow=4.0, heading=1.0):
  """Pixels inside a ship: a superellipse (|u|/(L/2))^bow + (|v|/(W/2))² ≤ 1 with a blunt stern (exponent 8).

  The bow points along +u for `heading` 1 and along -u for -1; `bow` 2 is pointed, 4 is rounder.
  """
  y, x = jnp.meshgrid(jnp.arange(size) + 0.5, jnp.arange(size) + 0.5, indexing="ij")
  dx, dy = x - centre[0], y - centre[1]
  u = heading * (jnp.cos(angle) * dx + jnp.sin(angle) * dy)
  v = -jnp.sin(angle) * dx + jnp.cos(angle) * dy
  along = jnp.abs(u) / (length / 2)
  ends = jnp.where(u > 0, along ** bow, along ** 8)
  return ends + (jnp.abs(v) / (width / 2)) ** 2 <= 1.0


def sample_scene(
    key: jax.Array,
    *,
    size: int = 64,
    max_ships: int = 6,
    max_group: int = 3,
    harbour_probability: float = 0.6,
    distinguishable_probability: float = 0.5,
    ship_probability: float = 0.5,
    min_length: float = 12.0,
    max_length: float = 24.0,
    min_width: float = 4.0,
    max_width: float = 6.0,
    overlap: float = 1.0,
    min_contrast: float = 0.2,
    seam_width: float = 1.0,
    seam_brightness: float = 0.15,
) -> dict[str, jax.Array]:
  """One scene, a pure function of `key` (jittable, vmappable).

  Args:
    key: a JAX random key.
    size: S, the image side in pixels.
    max_ships: the number of ship slots (label ids 1…max_ships).
    max_group: the largest harbour group (at most `max_ships`).
    harbour_probability: the probability of a harbour group of touching ships.
    distinguishable_probability: the fraction of harbour groups whose ships are told apart in the image.
    ship_probability: the probability of each ship outside the group.
    min_length: the ships' lengths are uniform in [min_length, max_length].
    max_length: see `min_length`.
    min_width: the ships' widths are uniform in [min_width, max_width].
    max_width: see `min_width`.
    overlap: how far (pixels) neighbouring hulls of a group overlap before occlusion, so that they always touch.
    min_contrast: the least brightness difference between neighbouring hulls of a distinguishable group.
    seam_width: the thickness (pixels) of the seam along each hull of a distinguishable group.
    seam_brightness: its brightness, below the dark hulls (0.5…0.6) and the mean sea (0.3).

  Returns:
    `image` `(S, S, 1)` float32; `labels` `(S, S)` int32 (0 sea, 1…max_ships ships, disjoint masks);
    `touching` `()` bool, true when a harbour group is present; `distinguishable` `()` bool, true when that
    group is distinguishable; `group_size` `()` int32, the number of ships in the group (0 without one),
    which are ids 1…group_size, each 4-adjacent to the next.
  """
  keys = jax.random.split(key, 17)
  lengths = jax.random.uniform(keys[0], (max_ships,), minval=min_length, maxval=max_length)
  widths = jax.random.uniform(keys[1], (max_ships,), minval=min_width, maxval=max_width)
  angles = jax.random.uniform(keys[2], (max_ships,), maxval=jnp.pi)
  margin = max_length / 2
  centres = jax.random.uniform(keys[3], (max_ships, 2), minval=margin / 2, maxval=size - margin / 2)
  present = jax.random.bernoulli(keys[4], ship_probability, (max_ships,))

  # A harbour group: the first `group` ships parallel, side by side, each overlapping the previous one.
  harbour = jax.random.bernoulli(keys[5], harbour_probability) & (max_ships >= 2)
  distinguishable = harbour & jax.random.bernoulli(keys[12], distinguishable_probability)
  group = jnp.minimum(jax.random.randint(keys[6], (), 2, max_group + 1), max_ships)
  in_group = (jnp.arange(max_ships) < group) & harbour
  group_widths = jnp.where(distinguishable, widths, widths[0])
  spacing = (group_widths[:-1] + group_widths[1:]) / 2 - overlap
  offsets = jnp.concatenate([jnp.zeros(1), jnp.cumsum(spacing)])
  offsets = offsets - offsets[group - 1] / 2  # The group centred on `group_centre`.
  normal = jnp.array([-jnp.sin(angles[0]), jnp.cos(angles[0])])
  along = jnp.array([jnp.cos(angles[0]), jnp.sin(angles[0])])
  group_centre = jax.random.uniform(keys[7], (2,), minval=size / 3, maxval=2 * size / 3)
  max_stagger = jnp.where(distinguishable, min_length / 4, 2.0)
  stagger = max_stagger * jax.random.uniform(keys[8], (max_ships,), minval=-1.0, maxval=1.0)
  group_centres = group_centre + offsets[:, None] * normal + stagger[:, None] * along
  centres = jnp.where(in_group[:, None], group_centres, centres)
  angles = jnp.where(in_group, angles[0], angles)
  widths = jnp.where(in_group, group_widths, widths)
  present = present | in_group
  varied = in_group & distinguishable  # Ships with their own bow shape, heading and seam.
  bows = jnp.where(varied & jax.random.bernoulli(keys[13], 0.5, (max_ships,)), 2.0, 4.0)
  headings = jnp.where(varied & jax.random.bernoulli(keys[14], 0.5, (max_ships,)), -1.0, 1.0)

  brightness = jax.random.uniform(keys[9], (max_ships,), minval=0.6, maxval=0.9)
  dark = jax.random.uniform(keys[15], (max_ships,), minval=_DARK_HULL[0], maxval=_DARK_HULL[1])
  bright = dark + (_DARK_HULL[1] - _DARK_HULL[0]) + min_contrast  # ≥ min_contrast above any dark hull.
  is_bright = (jnp.arange(max_ships) + jax.random.bernoulli(keys[16])) % 2 == 1  # Alternating along the group.
  group_brightness = jnp.where(distinguishable, jnp.where(is_bright, bright, dark), brightness[0])
  brightness = jnp.where(in_group, group_brightness, brightness)

  ship_masks = jax.vmap(_ship_mask, in_axes=(None, 0, 0, 0, 0, 0, 0))
  masks = ship_masks(size, centres, angles, lengths, widths, bows, headings) & present[:, None, None]
  # The seam: the pixels of a hull that leave it when moved `seam_width` against the normal (towards the previous
  # ship), a line along the side it shares with that ship.
  shifted = ship_masks(size, centres + seam_width * normal, angles, lengths, widths, bows, headings)
  seams = masks & ~shifted & varied[:, None, None]

  labels = jnp.zeros((size, size), jnp.int32)
  image = _sea(keys[10], size)
  for painted in (~in_group, in_group):  # The group over the other ships; later ships occlude earlier ones.
    for k in range(max_ships):
      mask = masks[k] & painted[k]
      labels = jnp.where(mask, k + 1, labels)
      image = jnp.where(mask, jnp.where(seams[k], seam_brightness, brightness[k]), image)
  image = image + 0.05 * jax.random.normal(keys[11], (size, size))
  return {"image": image[..., None], "labels": labels, "touching": harbour, "distinguishable": distinguishable,
          "group_size": jnp.where(harbour, group, 0).astype(jnp.int32)}
