"""A figure of several instance runs on the same held-out images (`tasks.instances.plot_runs`).

    python -m scripts.plot_instances --output=docs/figures/dsb2018_methods.png --runs="\
semi-convolutional (complete)=/tmp/dsb2018/semi_conv/0,semi-convolutional eq. 5=/tmp/dsb2018/semi_conv_eq5/0,\
discriminative=/tmp/dsb2018/discriminative/0,spatial embeddings=/tmp/dsb2018/spatial/0"

One row per held-out image (the first `--num_images` of the first run's held-out set): the image, its true
instances and each run's instances, titled by the run's label.
"""

from absl import app
from absl import flags

from scripts import tables
from tasks import instances

_RUNS = flags.DEFINE_list("runs", [], "Comma-separated `label=workdir` pairs of finished runs of one data source.")
_OUTPUT = flags.DEFINE_string("output", "instances_runs.png", "Where to write the PNG.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 4, "Held-out images shown, one per row.")


def main(argv):
  del argv
  if not _RUNS.value:
    raise app.UsageError("Give the runs with --runs=label=workdir,...")
  instances.plot_runs(tables.parse_runs(_RUNS.value), _OUTPUT.value, num_images=_NUM_IMAGES.value)
  print(f"Wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
