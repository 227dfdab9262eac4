"""The README table of the ship instance experiment from finished runs.

    python -m scripts.compare_instances --seeds=0,1,2 --runs="semi-convolutional=/tmp/instances/semi_conv/{seed},\
discriminative=/tmp/instances/discriminative/{seed},spatial embeddings=/tmp/instances/spatial/{seed}"

One row per `label=workdir`: the F2 of the method the run trained (its `config.method`), from the run's
final evaluation; a last row, connected components, labels the predicted foreground of the first
label's runs. Columns are the held-out splits: touching ships that can be told apart in the image,
touching identical ships, the other scenes, and all. With `--seeds`, `{seed}` in a workdir stands for
each seed in turn and the cells are the mean ± sample standard deviation over those runs.
"""

from absl import app
from absl import flags

import rundir
from scripts import tables

_RUNS = flags.DEFINE_list("runs", [], "Comma-separated `label=workdir` pairs (labels may not contain commas).")
_SEEDS = flags.DEFINE_list("seeds", [], "Seeds that replace `{seed}` in the workdirs; the cells become mean ± std.")

SPLITS = [("distinguishable/", "touching, distinguishable"), ("indistinguishable/", "touching, indistinguishable"),
          ("separate/", "other scenes"), ("", "all scenes")]
COLUMNS = [(split, f"F2, {title}", "{:.3f}") for split, title in SPLITS]


def method_scores(workdir: str, method: str) -> dict[str, float]:
  """`{split prefix: F2}` of `method` in the final evaluation of the run in `workdir`."""
  metrics = tables.final_eval(workdir)
  return {split: metrics[f"{split}f2_{method}"] for split, _ in SPLITS}


def main(argv):
  del argv
  runs = tables.read_runs(_RUNS.value, _SEEDS.value)
  rows = [(label, [method_scores(path, rundir.read_config(path).method) for path in workdirs])
          for label, workdirs in runs]
  first_label, first_runs = runs[0]
  rows.append((f"connected components (foreground of the {first_label} runs)",
               [method_scores(path, "connected_components") for path in first_runs]))
  steps = {tables.final_eval(path)["step"] for _, workdirs in runs for path in workdirs}
  print(f"After {', '.join(map(str, sorted(steps)))} steps; runs per row: "
        f"{', '.join(str(len(records)) for _, records in rows)}.\n")
  print(tables.markdown_table([(label, tables.summarise(records, COLUMNS)) for label, records in rows],
                              [(key, title, "{}") for key, title, _ in COLUMNS]))


if __name__ == "__main__":
  app.run(main)
