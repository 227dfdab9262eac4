"""The README tables of the instance experiments (ships, DSB2018 nuclei) from finished runs.

    python -m scripts.compare_instances --seeds=0,1,2 --runs="semi-convolutional=/tmp/instances/semi_conv/{seed},\
discriminative=/tmp/instances/discriminative/{seed},spatial embeddings=/tmp/instances/spatial/{seed}"
    python -m scripts.compare_instances --seeds=0,1,2 --runs="semi-convolutional=/tmp/dsb2018/semi_conv/{seed},\
spatial embeddings=/tmp/dsb2018/spatial/{seed}"

One row per `label=workdir`: the scores of the method the run trained (its `config.method`), from the
run's final evaluation. Ships (`data_source` "synthetic"): F2 on the held-out splits (touching ships that
can be told apart in the image, touching identical ships, the other scenes, all), and a last row,
connected components, labels the predicted foreground of the first label's runs. DSB2018: StarDist's
pooled AP at IoU 0.5, 0.75 and 0.9, Kaggle's mean AP and F2, each method followed by connected components
and the watershed on its own foreground. With `--seeds`, `{seed}` in a workdir stands for each seed in
turn and the cells are the mean ± sample standard deviation over those runs.
"""

from absl import app
from absl import flags

import rundir
from scripts import tables

_RUNS = flags.DEFINE_list("runs", [], "Comma-separated `label=workdir` pairs (labels may not contain commas).")
_SEEDS = flags.DEFINE_list("seeds", [], "Seeds that replace `{seed}` in the workdirs; the cells become mean ± std.")

SPLITS = [("distinguishable/", "touching, distinguishable"), ("indistinguishable/", "touching, indistinguishable"),
          ("separate/", "other scenes"), ("", "all scenes")]
SHIP_COLUMNS = [(f"{split}f2", f"F2, {title}", "{:.3f}") for split, title in SPLITS]
DSB2018_COLUMNS = [("pooled_ap50", "pooled AP@0.5", "{:.3f}"), ("pooled_ap75", "pooled AP@0.75", "{:.3f}"),
                   ("pooled_ap90", "pooled AP@0.9", "{:.3f}"), ("ap", "Kaggle mean AP", "{:.3f}"),
                   ("f2", "F2", "{:.3f}")]
BASELINES = (("connected_components", "connected components"), ("watershed", "watershed"))


def method_scores(workdir: str, method: str, columns: list[tables.Column]) -> dict[str, float]:
  """`{column key: score}` of `method` in the final evaluation of the run in `workdir`: the metric
  "<key>_<method>" of each column."""
  metrics = tables.final_eval(workdir)
  return {key: metrics[f"{key}_{method}"] for key, _, _ in columns}


def main(argv):
  del argv
  runs = tables.read_runs(_RUNS.value, _SEEDS.value)
  nuclei = rundir.read_config(runs[0][1][0]).data_source == "dsb2018"
  columns = DSB2018_COLUMNS if nuclei else SHIP_COLUMNS
  rows = []
  for label, workdirs in runs:
    rows.append((label, [method_scores(path, rundir.read_config(path).method, columns) for path in workdirs]))
    if nuclei:
      rows.extend((f"{name} (its foreground)", [method_scores(path, method, columns) for path in workdirs])
                  for method, name in BASELINES)
  if not nuclei:
    first_label, first_runs = runs[0]
    rows.append((f"connected components (foreground of the {first_label} runs)",
                 [method_scores(path, "connected_components", columns) for path in first_runs]))
  steps = {tables.final_eval(path)["step"] for _, workdirs in runs for path in workdirs}
  print(f"After {', '.join(map(str, sorted(steps)))} steps; runs per row: "
        f"{', '.join(str(len(records)) for _, records in rows)}.\n")
  print(tables.markdown_table([(label, tables.summarise(records, columns)) for label, records in rows],
                              [(key, title, "{}") for key, title, _ in columns]))


if __name__ == "__main__":
  app.run(main)
