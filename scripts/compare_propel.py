"""The README tables of the PROPEL experiment from finished runs.

    python -m scripts.compare_propel \
        --runs="PROPEL I=1=/tmp/propel_i1,PROPEL I=2=/tmp/propel_i2,MSE=/tmp/propel_mse"
    python -m scripts.compare_propel --seeds=0,1,2 \
        --runs="PROPEL I=2=/tmp/propel/propel_i2_s{seed},MSE=/tmp/propel/mse_s{seed},PROPEL I=4=/tmp/propel/i4_s0"

Each run's numbers are its final evaluation in `<workdir>/metrics.jsonl`.
Prints the overall table (errors in degrees, NLL in nats, the mixture weight
on the true mode) and the errors per digit class. With `--seeds`, `{seed}`
in a workdir stands for each seed in turn: its cells are the mean ± sample
standard deviation over those runs, and its per-class cells the mean. A
workdir without `{seed}` is one run, printed as its value alone.
"""

from absl import app
from absl import flags

from scripts import tables

_RUNS = flags.DEFINE_list("runs", [], "Comma-separated `label=workdir` pairs (labels may not contain commas).")
_SEEDS = flags.DEFINE_list("seeds", [], "Seeds that replace `{seed}` in the workdirs; the cells become mean ± std.")

COLUMNS = [
    ("mean_error_deg", "error of mean (°)", "{:.1f}"),
    ("mode_error_deg", "error of mode (°)", "{:.1f}"),
    ("best_component_error_deg", "best component (°)", "{:.1f}"),
    ("nll", "NLL (nats)", "{:.2f}"),
    ("ambiguous/mean_error_deg", "ambiguous: mean (°)", "{:.1f}"),
    ("ambiguous/mode_error_deg", "ambiguous: mode (°)", "{:.1f}"),
    ("ambiguous/best_component_error_deg", "ambiguous: best (°)", "{:.1f}"),
    ("ambiguous/nll", "ambiguous: NLL", "{:.2f}"),
    ("ambiguous/true_mode_weight", "ambiguous: true-mode weight", "{:.2f}"),
    ("unambiguous/mean_error_deg", "others: mean (°)", "{:.1f}"),
    ("unambiguous/mode_error_deg", "others: mode (°)", "{:.1f}"),
    ("unambiguous/best_component_error_deg", "others: best (°)", "{:.1f}"),
    ("unambiguous/nll", "others: NLL", "{:.2f}"),
    ("unambiguous/true_mode_weight", "others: true-mode weight", "{:.2f}"),
]


def print_table(runs, columns: list[tables.Column], *, spread: bool) -> None:
  rows = [(label, tables.summarise(records, columns, spread=spread)) for label, records in runs]
  print(tables.markdown_table(rows, [(key, title, "{}") for key, title, _ in columns]))
  print()


def main(argv):
  del argv
  runs = [(label, [tables.final_eval(path) for path in workdirs])
          for label, workdirs in tables.read_runs(_RUNS.value, _SEEDS.value)]
  if _SEEDS.value:
    print(f"Seeds {', '.join(_SEEDS.value)}: mean ± standard deviation over the runs of each row "
          f"({', '.join(f'{label}: {len(records)}' for label, records in runs)}).\n")
  print_table(runs, COLUMNS, spread=True)
  for key, title in (("mean_error_deg", "error of the mixture mean (°)"), ("mode_error_deg", "error of the mode (°)"),
                     ("best_component_error_deg", "error of the best component (°)")):
    per_class = [(f"class_{c}/{key}", str(c), "{:.1f}") for c in range(10)]
    print(f"Per digit class, {title}{', mean over the seeds' if _SEEDS.value else ''}:\n")
    print_table(runs, per_class, spread=False)


if __name__ == "__main__":
  app.run(main)
