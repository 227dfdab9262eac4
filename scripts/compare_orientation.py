"""The README table: trained orientation runs against the structure-tensor baseline.

    python -m scripts.compare_orientation --config=configs/orientation.py \
        --runs="U-Net, angular loss=/tmp/orient_angular,U-Net, MSE=/tmp/orient_mse"

Each run's numbers are its final evaluation in `<workdir>/metrics.jsonl`; the
baseline is evaluated here on the same held-out set (its two scales tuned on a
separate validation draw). Prints a Markdown table.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from scripts import tables
from tasks import orientation

_CONFIG = config_flags.DEFINE_config_file("config", "configs/orientation.py", "The runs' config.")
_RUNS = flags.DEFINE_list("runs", [], "Comma-separated `label=workdir` pairs (labels may not contain commas).")

COLUMNS = [
    ("mean_abs_error_deg", "MAE (°)", "{:.2f}"),
    ("within_5deg", "≤ 5°", "{:.1%}"),
    ("within_10deg", "≤ 10°", "{:.1%}"),
    ("goe", "GOE", "{:.4f}"),
    ("noisy/mean_abs_error_deg", "noisy MAE (°)", "{:.2f}"),
    ("noisy/within_5deg", "noisy ≤ 5°", "{:.1%}"),
    ("noisy/within_10deg", "noisy ≤ 10°", "{:.1%}"),
    ("noisy/goe", "noisy GOE", "{:.4f}"),
]


def main(argv):
  del argv
  scales, baseline = orientation.evaluate_structure_tensor(_CONFIG.value)
  label = "structure tensor (σ_grad = {gradient_sigma:g}, σ_window = {integration_sigma:g})".format(**scales)
  rows = [(label, baseline)]
  for name, workdir in tables.parse_runs(_RUNS.value):
    metrics = tables.final_eval(workdir)
    rows.append((f"{name} ({metrics['step']} steps)", metrics))
  print(tables.markdown_table(rows, COLUMNS))
  for name, metrics in rows[1:]:
    ratio = baseline["mean_abs_error_deg"] / metrics["mean_abs_error_deg"]
    noisy_ratio = baseline["noisy/mean_abs_error_deg"] / metrics["noisy/mean_abs_error_deg"]
    print(f"\n{name}: mean error {ratio:.2f}× lower than the baseline, {noisy_ratio:.2f}× on noisy images.")


if __name__ == "__main__":
  app.run(main)
