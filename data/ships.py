"""Synthetic satellite-like scenes: elongated, rotated ships on a textured sea, with exact instance labels.

Each scene holds up to `max_ships` ships. With probability `harbour_probability`
the first `2…max_group` ships form a harbour group: parallel, side by side and
touching (no gap), the case where connected components merge instances. The
other ships are placed at random and may be absent; later ships occlude
earlier ones, so the instance masks never overlap. Some scenes have no ship.
"""

import jax
import jax.numpy as jnp


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


def _ship_mask(size, centre, angle, length, width):
  """Pixels inside a ship: a superellipse (|u|/(L/2))⁴ + (|v|/(W/2))² ≤ 1 with a blunt stern."""
  y, x = jnp.meshgrid(jnp.arange(size) + 0.5, jnp.arange(size) + 0.5, indexing="ij")
  dx, dy = x - centre[0], y - centre[1]
  u = jnp.cos(angle) * dx + jnp.sin(angle) * dy
  v = -jnp.sin(angle) * dx + jnp.cos(angle) * dy
  along = jnp.abs(u) / (length / 2)
  bow = (along ** 4) * (u > 0) + (along ** 8) * (u <= 0)
  return bow + (jnp.abs(v) / (width / 2)) ** 2 <= 1.0


def sample_scene(
    key: jax.Array,
    *,
    size: int = 64,
    max_ships: int = 6,
    max_group: int = 3,
    harbour_probability: float = 0.5,
    ship_probability: float = 0.5,
    min_length: float = 12.0,
    max_length: float = 24.0,
    min_width: float = 4.0,
    max_width: float = 6.0,
) -> dict[str, jax.Array]:
  """One scene: `image` `(S, S, 1)`, `labels` `(S, S)` int32 (0 sea, 1…max_ships ships), `touching` `()` bool.

  `touching` is true when a harbour group of at least two ships is present.
  """
  keys = jax.random.split(key, 12)
  lengths = jax.random.uniform(keys[0], (max_ships,), minval=min_length, maxval=max_length)
  widths = jax.random.uniform(keys[1], (max_ships,), minval=min_width, maxval=max_width)
  angles = jax.random.uniform(keys[2], (max_ships,), maxval=jnp.pi)
  margin = max_length / 2
  centres = jax.random.uniform(keys[3], (max_ships, 2), minval=margin / 2, maxval=size - margin / 2)
  present = jax.random.bernoulli(keys[4], ship_probability, (max_ships,))

  # A harbour group: the first `group` ships parallel, touching side by side.
  harbour = jax.random.bernoulli(keys[5], harbour_probability)
  group = jax.random.randint(keys[6], (), 2, max_group + 1)
  in_group = (jnp.arange(max_ships) < group) & harbour
  group_width = widths[0]
  normal = jnp.array([-jnp.sin(angles[0]), jnp.cos(angles[0])])
  slot = jnp.arange(max_ships) - (group - 1) / 2
  group_centre = jax.random.uniform(keys[7], (2,), minval=size / 3, maxval=2 * size / 3)
  stagger = jax.random.uniform(keys[8], (max_ships,), minval=-2.0, maxval=2.0)
  along = jnp.array([jnp.cos(angles[0]), jnp.sin(angles[0])])
  group_centres = group_centre + slot[:, None] * group_width * normal + stagger[:, None] * along
  centres = jnp.where(in_group[:, None], group_centres, centres)
  angles = jnp.where(in_group, angles[0], angles)
  widths = jnp.where(in_group, group_width, widths)
  present = present | in_group

  brightness = jax.random.uniform(keys[9], (max_ships,), minval=0.6, maxval=0.9)
  brightness = jnp.where(in_group, brightness[0], brightness)  # Identical-looking neighbours.
  masks = jax.vmap(_ship_mask, in_axes=(None, 0, 0, 0, 0))(size, centres, angles, lengths, widths)
  masks = masks & present[:, None, None]
  labels = jnp.zeros((size, size), jnp.int32)
  image = _sea(keys[10], size)
  for k in range(max_ships):  # Later ships occlude earlier ones.
    labels = jnp.where(masks[k], k + 1, labels)
    image = jnp.where(masks[k], brightness[k], image)
  image = image + 0.05 * jax.random.normal(keys[11], (size, size))
  return {"image": image[..., None], "labels": labels, "touching": harbour}
