"""The README table: trained orientation runs against the structure-tensor baseline.

    python scripts/compare_orientation.py --config=configs/orientation.py \
        --runs="U-Net, angular loss=/tmp/orient_angular,U-Net, MSE=/tmp/orient_mse"

Each run's numbers are its final evaluation in `<workdir>/metrics.jsonl`; the
baseline is evaluated here on the same held-out set (its two scales tuned on a
separate validation draw). Prints a Markdown table.
"""

import json
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tasks import orientation  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file("config", "configs/orientation.py", "The runs' config.")
_RUNS = flags.DEFINE_list("runs", [], "Comma-separated `label=workdir` pairs (labels may not contain commas).")

COLUMNS = [
    ("mean_abs_error_deg", "MAE (°)", "{:.2f}"),
    ("within_5deg", "≤ 5°", "{:.1%}"),
    ("within_10deg", "≤ 10°", "{:.1%}"),
    ("noisy/mean_abs_error_deg", "noisy MAE (°)", "{:.2f}"),
    ("noisy/within_5deg", "noisy ≤ 5°", "{:.1%}"),
    ("noisy/within_10deg", "noisy ≤ 10°", "{:.1%}"),
]


def final_eval(workdir: str) -> dict[str, float]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    evals = [record for record in map(json.loads, f) if record["split"] == "eval"]
  return max(evals, key=lambda record: record["step"])


def main(argv):
  del argv
  scales, baseline = orientation.evaluate_structure_tensor(_CONFIG.value)
  label = "structure tensor (σ_grad = {gradient_sigma:g}, σ_window = {integration_sigma:g})".format(**scales)
  rows = [(label, baseline)]
  for run in _RUNS.value:
    name, workdir = run.rsplit("=", 1)
    rows.append((f"{name} ({final_eval(workdir)['step']} steps)", final_eval(workdir)))
  print("| method | " + " | ".join(title for _, title, _ in COLUMNS) + " |")
  print("|---" * (len(COLUMNS) + 1) + "|")
  for name, metrics in rows:
    print(f"| {name} | " + " | ".join(fmt.format(metrics[key]) for key, _, fmt in COLUMNS) + " |")
  for name, metrics in rows[1:]:
    ratio = baseline["mean_abs_error_deg"] / metrics["mean_abs_error_deg"]
    noisy_ratio = baseline["noisy/mean_abs_error_deg"] / metrics["noisy/mean_abs_error_deg"]
    print(f"\n{name}: mean error {ratio:.2f}× lower than the baseline, {noisy_ratio:.2f}× on noisy images.")


if __name__ == "__main__":
  app.run(main)
