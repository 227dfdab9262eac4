"""Trains every multi-task method of the multi-task experiment over several seeds and prints the table.

    python -m scripts.compare_multitask --output_dir=/tmp/multitask_sweep --seeds=0,1,2
    python -m scripts.compare_multitask --variant=three_tasks --output_dir=/tmp/multitask3_sweep --seeds=0,1,2

Runs `train.train_and_evaluate` on `configs/multitask.py` (or its `--variant`) for fixed weights, every
loss-level weighting and every gradient-level method (`--methods` selects some; finished runs in
`--output_dir` are read, not run again), prints the held-out metrics as mean ± standard deviation over
the seeds with each method's median step time, and writes `multitask_weights.png` (the task weights and
losses of the first seed, for `--plot` methods).
"""

import os

from absl import app
from absl import flags
import jax
import numpy as np

from configs import multitask as multitask_config
import rundir
from scripts import tables
from tasks import multitask
import train

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "/tmp/multitask_sweep", "Root of the per-run workdirs.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to run per method.")
_VARIANT = flags.DEFINE_string("variant", "", "The configs/multitask.py variant: '' or 'three_tasks'.")
_METHODS = flags.DEFINE_list("methods", [], "Labels of the methods to run (default: all of the variant).")
_ONLY_FINISHED = flags.DEFINE_bool("only_finished", False, "Train nothing: the table of the methods whose runs "
                                   "have all finished, and the list of the others.")
_PLOT = flags.DEFINE_list("plot", ["trainable α", "uncertainty (Kendall et al.)", "UPGrad", "MGDA", "GradNorm",
                                   "Nash-MTL"], "Labels of the methods whose weights the figure shows.")

LOSS_LEVEL = {
    "trainable α": dict(weighting="trainable"),
    "uncertainty (Kendall et al.)": dict(weighting="uncertainty"),
    "DWA (Liu et al.)": dict(weighting="dwa"),
    "RLW (Lin et al.)": dict(weighting="rlw"),
    "GLS (Chennupati et al.)": dict(weighting="gls"),
    "FAMO (Liu et al.)": dict(weighting="famo"),
}
GRADIENT_LEVEL = {
    "mean of the gradients": "mean", "MGDA": "mgda", "PCGrad": "pcgrad", "GradVac": "gradvac", "CAGrad": "cagrad",
    "Nash-MTL": "nash_mtl", "IMTL-G": "imtl_g", "Aligned-MTL": "aligned_mtl", "UPGrad": "upgrad",
    "DualProj": "dualproj", "GradDrop": "graddrop", "ConFIG": "config", "random gradient weighting": "random",
    "GradNorm": "gradnorm",
}

# LibMTL's rep_grad: the same aggregators on the gradients of the encoder's output.
REPRESENTATION_GRADIENTS = {f"{label}, representation gradients": dict(weighting=name, representation_gradients=True)
                            for label, name in (("UPGrad", "upgrad"), ("MGDA", "mgda"))}


def methods(variant: str) -> dict[str, dict]:
  """`{label: config overrides}` of every method of `variant`, fixed weights first."""
  if variant == "three_tasks":
    fixed = {"fixed (1/3, 1/3, 1/3)": (1 / 3, 1 / 3, 1 / 3), "fixed (0.6, 0.2, 0.2)": (0.6, 0.2, 0.2),
             "fixed (0.2, 0.6, 0.2)": (0.2, 0.6, 0.2), "fixed (0.2, 0.2, 0.6)": (0.2, 0.2, 0.6)}
    fixed = {label: dict(weighting="fixed", fixed_weights=weights) for label, weights in fixed.items()}
  else:
    fixed = {f"fixed α = {alpha}": dict(weighting="fixed", alpha=alpha) for alpha in (0.1, 0.5, 0.9)}
  return {**fixed, **LOSS_LEVEL, **{label: dict(weighting=name) for label, name in GRADIENT_LEVEL.items()},
          **REPRESENTATION_GRADIENTS}


HIGHER_IS_BETTER = {"iou": True, "accuracy": True, "size_error_px": False}


def against_best_fixed(per_seed: dict[str, list[dict[str, float]]], metrics: list[str]) -> str:
  """Each method's difference from the best fixed weights on each metric, in units of the seeds' spread.

  For each metric the reference is the fixed-weight row with the best mean on it; the difference (positive:
  better) is divided by the pooled sample standard deviation of the two rows, √((s₁² + s₂²)/2). A method
  *beats the best fixed weights* when it is better on every metric, *clearly* when also by more than one
  pooled standard deviation on each. The last column names the fixed-weight rows at least as good on every
  metric (by the means): a method no fixed row dominates found a trade-off the fixed sweep did not.
  """
  fixed = [label for label in per_seed if label.startswith("fixed")]
  best = {metric: max(fixed, key=lambda label, m=metric: _mean(per_seed[label], m)) for metric in metrics}
  lines = ["Against the best fixed weights on each metric (" + ", ".join(
      f"{metric}: {label}" for metric, label in best.items())
      + "): the difference of the means (positive is better) / the pooled standard deviation over the seeds.\n",
      "| method | " + " | ".join(metrics) + " | beats the best fixed weights? | dominated by a fixed row? |",
      "|---" * (len(metrics) + 3) + "|"]
  for label, results in per_seed.items():
    if label in fixed:
      continue
    cells, deltas = [], []
    for metric in metrics:
      reference = per_seed[best[metric]]
      delta = _mean(results, metric) - _mean(reference, metric)
      pooled = np.sqrt((np.var([r[metric] for r in results], ddof=1)
                        + np.var([r[metric] for r in reference], ddof=1)) / 2)
      deltas.append(delta / pooled)
      cells.append(f"{delta:+.3f} ({delta / pooled:+.1f} σ)")
    verdict = ("yes, clearly" if min(deltas) > 1 else "yes, within the spread" if min(deltas) > 0 else "no")
    dominating = [name for name in fixed
                  if all(_mean(per_seed[name], m) >= _mean(results, m) for m in metrics)]
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {verdict} | {', '.join(dominating) or 'no'} |")
  return "\n".join(lines)


def _mean(results: list[dict[str, float]], metric: str) -> float:
  """The mean of `metric`, negated where lower is better: larger is better."""
  sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
  return sign * float(np.mean([r[metric] for r in results]))


def _finished_eval(workdir: str, num_steps: int) -> dict[str, float] | None:
  """The final held-out metrics of a run in `workdir` that reached `num_steps`, else None."""
  if not rundir.has_metrics(workdir):
    return None
  evals = [r for r in rundir.read_metrics(workdir, "eval") if r["step"] == num_steps]
  return {k: v for k, v in evals[-1].items() if k not in ("step", "split")} if evals else None


def step_ms(records: list[dict[str, float]]) -> float:
  """The median training step time (ms) over the logging intervals after the first (which compiles)."""
  return 1000.0 / float(np.median([r["steps_per_second"] for r in records[1:]]))


def main(argv):
  del argv
  # Every run compiles the same programs; share them across runs.
  jax.config.update("jax_compilation_cache_dir", os.path.join(_OUTPUT_DIR.value, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  selected = methods(_VARIANT.value)
  if _METHODS.value:
    selected = {label: selected[label] for label in _METHODS.value}
  rows, histories, per_seed, unfinished = [], [], {}, []
  for label, overrides in selected.items():
    configs, workdirs = [], []
    for seed in map(int, _SEEDS.value):
      config = multitask_config.get_config(_VARIANT.value)
      config.update(dict(overrides, seed=seed, progress_bar=False))
      name = "_".join([config.weighting, *map("{:.2f}".format, config.fixed_weights or (config.alpha,)),
                       *(["representation"] if config.representation_gradients else [])])
      configs.append(config)
      workdirs.append(os.path.join(_OUTPUT_DIR.value, f"{name}_seed{seed}"))
    finished = [_finished_eval(workdir, config.num_train_steps) for config, workdir in zip(configs, workdirs)]
    if _ONLY_FINISHED.value and not all(finished):
      unfinished.append(label)
      continue
    results, times = [], []
    for config, workdir, result in zip(configs, workdirs, finished):
      results.append(result or train.train_and_evaluate(config, workdir))
      records = rundir.read_metrics(workdir, "train")
      times.append({"step_ms": step_ms(records)})
      if config.seed == int(_SEEDS.value[0]) and label in _PLOT.value:
        histories.append((label, records))
    metrics = [("iou", "", "{:.3f}"), ("accuracy", "", "{:.3f}"), ("size_error_px", "", "{:.2f}")]
    rows.append((label, {**tables.summarise(results, metrics), **tables.summarise(times, [("step_ms", "", "{:.0f}")],
                                                                                  spread=False)}))
    per_seed[label] = results
  columns = [("iou", "localization IoU", "{}"), ("accuracy", "classification accuracy", "{}")]
  if _VARIANT.value == "three_tasks":
    columns.append(("size_error_px", "size error (px)", "{}"))
  columns.append(("step_ms", "step (ms, median)", "{}"))
  print(f"{len(_SEEDS.value)} seeds, mean ± standard deviation:\n")
  print(tables.markdown_table(rows, columns))
  if any(label.startswith("fixed") for label in per_seed):
    print("\n" + against_best_fixed(per_seed, [key for key, _, _ in columns if key != "step_ms"]))
  if unfinished:
    print(f"\nNot run yet (some seed unfinished): {', '.join(unfinished)}.")
  if histories:
    path = os.path.join(_OUTPUT_DIR.value, "multitask_weights.png")
    num_tasks = multitask_config.get_config(_VARIANT.value).num_tasks
    multitask.plot_weight_history(histories, multitask.TASK_NAMES[:num_tasks], path)
    print(f"\nWrote {path}")


if __name__ == "__main__":
  app.run(main)
