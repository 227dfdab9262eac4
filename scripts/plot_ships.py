"""A figure of the two kinds of harbour group in the synthetic ship scenes (`data.ships`).

    python -m scripts.plot_ships --output=docs/figures/ship_scenes.png

Left, distinguishable groups (alternating hull brightness, a dark seam along
each hull); right, indistinguishable ones (identical hulls). Each shows the
image, the true ships and the connected components of the true foreground,
which merge the touching ships of either kind, in a window around the group
(the counts are of the objects in the window).
"""

from absl import app
from absl import flags
import jax
import numpy as np

from data import ships
import losses
from tasks import base

_OUTPUT = flags.DEFINE_string("output", "docs/figures/ship_scenes.png", "Where to write the PNG.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the scenes.")
_ROWS = flags.DEFINE_integer("rows", 3, "Scenes of each kind.")
_CROP = flags.DEFINE_integer("crop", 36, "Side of the window around each harbour group that is shown, in pixels.")


def _window(labels, group_size, crop):
  """The `crop`-pixel slices around the centre of the group's ships (ids 1…group_size), inside the image."""
  rows, columns = np.nonzero((labels >= 1) & (labels <= group_size))
  starts = [int(np.clip(round(c.mean()) - crop // 2, 0, side - crop)) for c, side in zip((rows, columns), labels.shape)]
  return tuple(slice(start, start + crop) for start in starts)


def _overlay(axis, image, labels, title):
  """The image in grey with each label (renumbered by order) in a colour of tab10."""
  axis.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
  _, compact = np.unique(labels, return_inverse=True)
  compact = compact.reshape(labels.shape)
  axis.imshow(np.ma.array(compact % 10, mask=labels == 0), cmap="tab10", vmin=0, vmax=9, alpha=0.6,
              interpolation="nearest")
  axis.set_title(f"{title} ({len(np.unique(labels[labels > 0]))})", fontsize=9)


def main(argv):
  del argv
  num = 16 * _ROWS.value
  scenes = jax.jit(jax.vmap(ships.sample_scene))(jax.random.split(jax.random.key(_SEED.value), num))
  scenes["components"] = losses.connected_components(scenes["labels"] > 0)
  scenes = jax.tree.map(np.asarray, scenes)
  kinds = {"distinguishable": scenes["distinguishable"],
           "indistinguishable": scenes["touching"] & ~scenes["distinguishable"]}

  plt = base.pyplot()
  figure, axes = plt.subplots(_ROWS.value, 6, figsize=(13, 2.3 * _ROWS.value), squeeze=False)
  for column, (kind, chosen) in enumerate(kinds.items()):
    for row, i in enumerate(np.flatnonzero(chosen)[:_ROWS.value]):
      window = _window(scenes["labels"][i], scenes["group_size"][i], min(_CROP.value, *scenes["labels"].shape[1:]))
      image = scenes["image"][i, ..., 0][window]
      panels = axes[row, 3 * column:3 * column + 3]
      panels[0].imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
      panels[0].set_title(f"{kind}: image", fontsize=9)
      _overlay(panels[1], image, scenes["labels"][i][window], "true ships")
      _overlay(panels[2], image, scenes["components"][i][window], "connected components")
  for axis in axes.flat:
    axis.axis("off")
  figure.suptitle("Touching harbour groups: connected components of the true foreground merge both kinds")
  figure.tight_layout()
  figure.savefig(_OUTPUT.value, dpi=90)
  plt.close(figure)
  print(f"Wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
