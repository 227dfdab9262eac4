"""Trains every loss weighting of the multi-task experiment over several seeds and prints the table.

    python -m scripts.compare_multitask --output_dir=/tmp/multitask_sweep --seeds=0,1,2

Runs `train.train_and_evaluate` on `configs/multitask.py` for fixed α ∈ {0.1,
0.5, 0.9}, trainable α, uncertainty weighting and DWA (finished runs in
`--output_dir` are resumed, i.e. skipped), prints held-out IoU and accuracy as
mean ± standard deviation over the seeds, and writes
`multitask_weights.png` (weights and weighted losses of the first seed).
"""

import os

from absl import app
from absl import flags
import jax

from configs import multitask as multitask_config
from scripts import tables
from tasks import base
from tasks import multitask
import train

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "/tmp/multitask_sweep", "Root of the per-run workdirs.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to run per method.")

METHODS = {
    "fixed α = 0.1": dict(weighting="fixed", alpha=0.1),
    "fixed α = 0.5": dict(weighting="fixed", alpha=0.5),
    "fixed α = 0.9": dict(weighting="fixed", alpha=0.9),
    "trainable α": dict(weighting="trainable"),
    "uncertainty (Kendall et al.)": dict(weighting="uncertainty"),
    "DWA (Liu et al.)": dict(weighting="dwa"),
}


def main(argv):
  del argv
  # Every run compiles the same programs; share them across runs.
  jax.config.update("jax_compilation_cache_dir", os.path.join(_OUTPUT_DIR.value, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  rows, histories = [], []
  for label, overrides in METHODS.items():
    results = []
    for seed in map(int, _SEEDS.value):
      config = multitask_config.get_config()
      config.update(dict(overrides, seed=seed, progress_bar=False))
      workdir = os.path.join(_OUTPUT_DIR.value, f"{config.weighting}_{config.alpha}_seed{seed}")
      results.append(train.train_and_evaluate(config, workdir))
      if seed == int(_SEEDS.value[0]):
        histories.append((label, base.read_metrics(workdir, "train")))
    summary = tables.summarise(results, [("iou", "", "{:.3f}"), ("accuracy", "", "{:.3f}")])
    final = histories[-1][1][-1]
    summary["weight"] = f"{final['weight_localization']:.3g}"
    rows.append((label, summary))
  columns = [("iou", "localization IoU", "{}"), ("accuracy", "classification accuracy", "{}"),
             ("weight", "final localization weight (seed 0)", "{}")]
  print(f"{len(_SEEDS.value)} seeds, mean ± standard deviation:\n")
  print(tables.markdown_table(rows, columns))
  path = os.path.join(_OUTPUT_DIR.value, "multitask_weights.png")
  multitask.plot_weight_history(histories, path)
  print(f"\nWrote {path}")


if __name__ == "__main__":
  app.run(main)
