"""The README tables of the PROPEL experiment from finished runs.

    python -m scripts.compare_propel \
        --runs="PROPEL I=1=/tmp/propel_i1,PROPEL I=2=/tmp/propel_i2,MSE=/tmp/propel_mse"

Each run's numbers are its final evaluation in `<workdir>/metrics.jsonl`.
Prints the overall table (errors in degrees, NLL in nats) and the mean-error
per digit class.
"""

from absl import app
from absl import flags

from scripts import tables

_RUNS = flags.DEFINE_list("runs", [], "Comma-separated `label=workdir` pairs (labels may not contain commas).")

COLUMNS = [
    ("mean_error_deg", "error of mean (°)", "{:.1f}"),
    ("mode_error_deg", "error of mode (°)", "{:.1f}"),
    ("best_component_error_deg", "best component (°)", "{:.1f}"),
    ("nll", "NLL (nats)", "{:.2f}"),
    ("ambiguous/mean_error_deg", "ambiguous: mean (°)", "{:.1f}"),
    ("ambiguous/mode_error_deg", "ambiguous: mode (°)", "{:.1f}"),
    ("ambiguous/best_component_error_deg", "ambiguous: best (°)", "{:.1f}"),
    ("ambiguous/nll", "ambiguous: NLL", "{:.2f}"),
    ("unambiguous/mean_error_deg", "others: mean (°)", "{:.1f}"),
    ("unambiguous/mode_error_deg", "others: mode (°)", "{:.1f}"),
    ("unambiguous/best_component_error_deg", "others: best (°)", "{:.1f}"),
    ("unambiguous/nll", "others: NLL", "{:.2f}"),
]


def main(argv):
  del argv
  runs = [(name, tables.final_eval(workdir)) for name, workdir in tables.parse_runs(_RUNS.value)]
  print(tables.markdown_table(runs, COLUMNS))
  print()
  for key, title in (("mean_error_deg", "error of the mixture mean (°)"), ("mode_error_deg", "error of the mode (°)"),
                     ("best_component_error_deg", "error of the best component (°)")):
    per_class = [(f"class_{c}/{key}", str(c), "{:.1f}") for c in range(10)]
    print(f"Per digit class, {title}:\n")
    print(tables.markdown_table(runs, per_class))
    print()


if __name__ == "__main__":
  app.run(main)
