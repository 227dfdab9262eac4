"""Trains every multi-task method of the multi-task experiment over several seeds and prints the table.

    python -m scripts.compare_multitask --output_dir=/tmp/multitask_sweep --seeds=0,1,2
    python -m scripts.compare_multitask --variant=three_tasks --output_dir=/tmp/multitask3_sweep --seeds=0,1,2
    python -m scripts.compare_multitask --variant=multi_fashion --output_dir=/tmp/multi_fashion --seeds=0,1,2

Runs `train.train_and_evaluate` on `configs/multitask.py` (or its `--variant`) for fixed weights, every
loss-level weighting and every gradient-level method (`--methods` selects some, `--shard=I/K` every K-th from
the I-th, for K processes side by side; finished runs in `--output_dir` are read, not run again), prints the
held-out metrics as mean ± standard deviation over the seeds with each method's median step time, and
writes `multitask_weights.png` (the task weights and losses of the first seed, for `--plot` methods).

On Multi-Fashion the fixed weights are the sweep α = 0, 0.1, …, 1 that traces the scalarization front, the
methods are those of both levels (`multi_fashion_methods`), and the script also reports where each method
lies against that front (`against_front`) and draws it (`multi_fashion_front.png`).
"""

import itertools
import os

from absl import app
from absl import flags
import jax
import numpy as np

from configs import multitask as multitask_config
import losses
import rundir
from scripts import tables
from tasks import base
from tasks import multitask
import train

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "/tmp/multitask_sweep", "Root of the per-run workdirs.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to run per method.")
_VARIANT = flags.DEFINE_string("variant", "", "The configs/multitask.py variant: '', 'three_tasks' or "
                               "'multi_fashion'.")
_METHODS = flags.DEFINE_list("methods", [], "Labels of the methods to run (default: all of the variant).")
_SHARD = flags.DEFINE_string("shard", "0/1", "I/K: only every K-th of the selected methods, from the I-th.")
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


# Multi-Fashion's gradient-level methods that are not run: "constant", "sum", "mean" and "random" make the
# same update Jᵀw as their loss-level namesakes, which are run; Krum needs N ≥ 3 tasks, and the trimmed mean
# of two tasks can trim nothing, so it is their mean.
NOT_RUN_ON_TWO_TASKS = ("constant", "sum", "mean", "random", "krum", "trimmed_mean")
FRONT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


def multi_fashion_methods() -> dict[str, dict]:
  """The fixed-weight sweep α = 0, 0.1, …, 1 (α weighs the top-left task), every loss-level weighting but the
  aliases and "constant" (the sweep itself), and every gradient-level method but `NOT_RUN_ON_TWO_TASKS`; each
  labelled by its `--config.weighting`."""
  fixed = {f"fixed α = {alpha}": dict(weighting="fixed", alpha=alpha) for alpha in FRONT_ALPHAS}
  aliases = set(losses.scalarization.ALIASES)
  loss_level = [name for name in losses.LOSS_WEIGHTING_NAMES if name not in aliases and name != "constant"]
  gradient_level = [name for name in losses.AGGREGATOR_NAMES if name not in NOT_RUN_ON_TWO_TASKS]
  return {**fixed, **{f"{multitask.LOSS_PREFIX}{name}": dict(weighting=f"{multitask.LOSS_PREFIX}{name}")
                      for name in loss_level},
          **{name: dict(weighting=name) for name in gradient_level}}


def methods(variant: str) -> dict[str, dict]:
  """`{label: config overrides}` of every method of `variant`, fixed weights first."""
  if variant == "multi_fashion":
    return multi_fashion_methods()
  if variant == "three_tasks":
    fixed = {"fixed (1/3, 1/3, 1/3)": (1 / 3, 1 / 3, 1 / 3), "fixed (0.6, 0.2, 0.2)": (0.6, 0.2, 0.2),
             "fixed (0.2, 0.6, 0.2)": (0.2, 0.6, 0.2), "fixed (0.2, 0.2, 0.6)": (0.2, 0.2, 0.6)}
    fixed = {label: dict(weighting="fixed", fixed_weights=weights) for label, weights in fixed.items()}
  else:
    fixed = {f"fixed α = {alpha}": dict(weighting="fixed", alpha=alpha) for alpha in (0.1, 0.5, 0.9)}
  return {**fixed, **LOSS_LEVEL, **{label: dict(weighting=name) for label, name in GRADIENT_LEVEL.items()},
          **REPRESENTATION_GRADIENTS}


HIGHER_IS_BETTER = {"iou": True, "accuracy": True, "size_error_px": False, "accuracy_top_left": True,
                    "accuracy_bottom_right": True}


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


def _alpha(label: str) -> float:
  return float(label.rsplit("= ", 1)[1])


def _front(per_seed: dict[str, list[dict[str, float]]], metrics: list[str]):
  """The fixed-weight rows in the order of α, their means (F, 2) and the dense polyline (M, 2) through them."""
  fixed = sorted((label for label in per_seed if label.startswith("fixed")), key=_alpha)
  means = np.array([[np.mean([r[m] for r in per_seed[label]]) for m in metrics] for label in fixed])
  steps = np.linspace(0.0, 1.0, 201)[:, None]
  polyline = np.concatenate([start + steps * (end - start) for start, end in itertools.pairwise(means)])
  return fixed, means, polyline


def _largest_std(results: list[dict[str, float]], metrics: list[str]) -> float:
  return max(float(np.std([r[m] for r in results], ddof=1)) for m in metrics)


def against_front(per_seed: dict[str, list[dict[str, float]]], metrics: list[str]) -> str:
  """Where each method's mean lies against the fixed-weight front, in both accuracies (higher is better).

  The front is the polyline through the means of the fixed-weight rows, in the order of α. A method's margin
  is the additive ε-indicator of its mean p against that polyline, ε = max_q minᵢ (qᵢ − pᵢ) over its points
  q: ε > 0 means some point of the front is better by ε on both tasks; ε < 0 means no point of it comes
  within |ε| of p on both. The seed spread is √(s² + s_f²), s the method's larger standard deviation over
  the seeds, s_f the median of the fixed rows' own. A method lies *beyond* the front when −ε exceeds the
  spread, *behind* it when ε does, and *on* it otherwise.
  """
  fixed, _, polyline = _front(per_seed, metrics)
  front_std = float(np.median([_largest_std(per_seed[label], metrics) for label in fixed]))
  lines = [(f"Against the fixed-weight front (α = {', '.join(str(_alpha(label)) for label in fixed)}; the median "
           f"seed spread of its rows is {front_std:.4f}): ε > 0 is behind the front by ε on both tasks, ε < 0 "
           "beyond it.\n"),
           "| method | ε | seed spread | where |", "|---|---|---|---|"]
  verdicts = {}
  for label, results in per_seed.items():
    if label in fixed:
      continue
    point = np.array([np.mean([r[m] for r in results]) for m in metrics])
    margin = float(np.max(np.min(polyline - point, axis=1)))
    spread = float(np.hypot(_largest_std(results, metrics), front_std))
    verdicts[label] = "beyond" if -margin > spread else "behind" if margin > spread else "on"
    lines.append(f"| {label} | {margin:+.4f} | {spread:.4f} | {verdicts[label]} |")
  for verdict in ("beyond", "on", "behind"):
    names = [label for label, v in verdicts.items() if v == verdict]
    lines.append(f"\n{verdict.capitalize()} the front ({len(names)}): {', '.join(names) or 'none'}.")
  return "\n".join(lines)


def plot_front(per_seed: dict[str, list[dict[str, float]]], metrics: list[str], titles: list[str], path: str):
  """Task-1 against task-2 accuracy: the fixed-weight front as a line, each method as its mean with its seed
  standard deviation as error bars; the loss-level methods on the left, the gradient-level ones on the right.
  The top row shows every method (the sweep's ends, α = 0 or 1 with one task untrained, lie outside it), the
  bottom row zooms on the front between α = 0.4 and 0.6, where most methods land."""
  plt = base.pyplot()
  fixed, means, _ = _front(per_seed, metrics)
  stds = np.array([[np.std([r[m] for r in per_seed[label]], ddof=1) for m in metrics] for label in fixed])
  others = [label for label in per_seed if label not in fixed]
  panels = (("loss level", [label for label in others if label.startswith(multitask.LOSS_PREFIX)]),
            ("gradient level", [label for label in others if not label.startswith(multitask.LOSS_PREFIX)]))
  method_means = {label: np.mean([[r[m] for m in metrics] for r in per_seed[label]], axis=0) for label in others}
  everything = np.concatenate([means[1:-1], list(method_means.values())])
  middle = means[[index for index, label in enumerate(fixed) if 0.4 <= _alpha(label) <= 0.6]]
  views = [(everything.min(axis=0), everything.max(axis=0)), (middle.min(axis=0), middle.max(axis=0))]
  markers = "osD^v<>PX*"
  figure, axes = plt.subplots(2, 2, figsize=(14, 13))
  for row, (low, high) in enumerate(views):
    margin = 0.08 * (high - low)
    for axis, (title, labels) in zip(axes[row], panels):
      axis.errorbar(means[:, 0], means[:, 1], xerr=stds[:, 0], yerr=stds[:, 1], color="black", marker="s",
                    markersize=3, linewidth=1, label="fixed weights (α on each point)")
      for label, (x, y) in zip(fixed, means):
        axis.annotate(f"{_alpha(label):g}", (x, y), fontsize=7, xytext=(-12, -10), textcoords="offset points")
      for index, label in enumerate(labels):
        std = np.std([[r[m] for m in metrics] for r in per_seed[label]], axis=0, ddof=1)
        axis.errorbar(*method_means[label], xerr=std[0], yerr=std[1], marker=markers[index // 10 % len(markers)],
                      color=f"C{index % 10}", markersize=5, linewidth=0.8,
                      label=label.removeprefix(multitask.LOSS_PREFIX))
      axis.set(xlabel=titles[0], ylabel=titles[1], xlim=(low[0] - margin[0], high[0] + margin[0]),
               ylim=(low[1] - margin[1], high[1] + margin[1]),
               title=f"{title} methods against the fixed-weight front" + (", around α = 0.5" if row else ""))
    if row == 0:
      for axis in axes[row]:
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4)
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  plt.close(figure)


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


def _shard(selected: dict[str, dict]) -> dict[str, dict]:
  index, count = map(int, _SHARD.value.split("/"))
  return {label: overrides for position, (label, overrides) in enumerate(selected.items())
          if position % count == index}


def main(argv):
  del argv
  # Every run compiles the same programs; share them across runs.
  jax.config.update("jax_compilation_cache_dir", os.path.join(_OUTPUT_DIR.value, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  selected = methods(_VARIANT.value)
  if _METHODS.value:
    selected = {label: selected[label] for label in _METHODS.value}
  selected = _shard(selected)
  if _VARIANT.value == "multi_fashion":
    columns = [("accuracy_top_left", "top-left accuracy", "{:.4f}"),
               ("accuracy_bottom_right", "bottom-right accuracy", "{:.4f}")]
  else:
    columns = [("iou", "localization IoU", "{:.3f}"), ("accuracy", "classification accuracy", "{:.3f}")]
    if _VARIANT.value == "three_tasks":
      columns.append(("size_error_px", "size error (px)", "{:.2f}"))
  metrics = [key for key, _, _ in columns]
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
    rows.append((label, {**tables.summarise(results, columns),
                         **tables.summarise(times, [("step_ms", "", "{:.0f}")], spread=False)}))
    per_seed[label] = results
  print(f"{len(_SEEDS.value)} seeds, mean ± standard deviation:\n")
  print(tables.markdown_table(rows, [(key, title, "{}") for key, title, _ in columns]
                              + [("step_ms", "step (ms, median)", "{}")]))
  fixed = [label for label in per_seed if label.startswith("fixed")]
  if _VARIANT.value == "multi_fashion" and len(fixed) > 1:
    print("\n" + against_front(per_seed, metrics))
    path = os.path.join(_OUTPUT_DIR.value, "multi_fashion_front.png")
    plot_front(per_seed, metrics, [title for _, title, _ in columns], path)
    print(f"\nWrote {path}")
  elif fixed:
    print("\n" + against_best_fixed(per_seed, metrics))
  if unfinished:
    print(f"\nNot run yet (some seed unfinished): {', '.join(unfinished)}.")
  if histories:
    path = os.path.join(_OUTPUT_DIR.value, "multitask_weights.png")
    multitask.plot_weight_history(histories, multitask.names_of_tasks(multitask_config.get_config(_VARIANT.value)),
                                  path)
    print(f"\nWrote {path}")


if __name__ == "__main__":
  app.run(main)
