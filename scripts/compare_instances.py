"""The README table of the ship instance experiment from a finished run.

    python -m scripts.compare_instances --run=/tmp/instances

Both rows come from the run's final evaluation: the semi-convolutional
instances and the connected components of the same predicted foreground.
"""

from absl import app
from absl import flags

from scripts import tables

_RUN = flags.DEFINE_string("run", None, "Workdir of a finished `configs/instances.py` run.", required=True)

METHODS = {"semi_conv": "semi-convolutional embeddings + extraction",
           "connected_components": "connected components of the same foreground"}


def main(argv):
  del argv
  metrics = tables.final_eval(_RUN.value)
  rows = [(title, {split: metrics[f"{prefix}f2_{name}"] for split, prefix in
                   (("all", ""), ("touching", "touching/"), ("separate", "separate/"))})
          for name, title in METHODS.items()]
  columns = [("all", "F2, all scenes", "{:.3f}"), ("touching", "F2, scenes with touching ships", "{:.3f}"),
             ("separate", "F2, other scenes", "{:.3f}")]
  print(f"After {metrics['step']} steps:\n")
  print(tables.markdown_table(rows, columns))


if __name__ == "__main__":
  app.run(main)
