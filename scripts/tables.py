"""Reading finished runs and printing Markdown tables."""

from collections.abc import Sequence

from absl import app
import numpy as np

import rundir

Column = tuple[str, str, str]  # (metric key, column title, format string)
SEED = "{seed}"  # In a workdir given to `read_runs`: stands for each seed in turn.


def final_eval(workdir: str) -> dict[str, float]:
  """The last evaluation record written to `<workdir>/metrics.jsonl`, with its "step"."""
  return rundir.read_metrics(workdir, "eval")[-1]


def parse_runs(runs: Sequence[str]) -> list[tuple[str, str]]:
  """`["label=workdir", ...]` → `[(label, workdir), ...]`."""
  return [tuple(run.rsplit("=", 1)) for run in runs]


def read_runs(runs: Sequence[str], seeds: Sequence[str]) -> list[tuple[str, list[str]]]:
  """`(label, workdirs)` per `label=workdir`: one workdir per seed where it has `{seed}`, else itself.

  Raises:
    app.UsageError: for a workdir with `{seed}` and no seeds.
  """
  rows = []
  for label, workdir in parse_runs(runs):
    if SEED in workdir and not seeds:
      raise app.UsageError(f"The workdir of {label!r} contains {SEED}; pass the seeds with --seeds.")
    rows.append((label, [workdir.replace(SEED, seed) for seed in seeds] if SEED in workdir else [workdir]))
  return rows


def summarise(records: Sequence[dict[str, float]], columns: Sequence[Column], *, spread: bool = True) -> dict[str, str]:
  """The formatted mean over `records` of each column, "± the sample standard deviation" added with `spread` and
  several records; a metric that some record lacks is left out, so that it prints as "—"."""
  cells = {}
  for key, _, fmt in columns:
    if not all(key in record for record in records):
      continue
    values = np.array([record[key] for record in records])
    cells[key] = fmt.format(values.mean())
    if spread and len(values) > 1:
      cells[key] += " ± " + fmt.format(values.std(ddof=1))
  return cells


def markdown_table(rows: Sequence[tuple[str, dict]], columns: Sequence[Column], first: str = "method") -> str:
  """One row per `(name, metrics)`; a metric a row lacks prints as "—"."""
  lines = ["| " + " | ".join([first] + [title for _, title, _ in columns]) + " |",
           "|---" * (len(columns) + 1) + "|"]
  for name, metrics in rows:
    cells = [fmt.format(metrics[key]) if key in metrics else "—" for key, _, fmt in columns]
    lines.append("| " + " | ".join([name] + cells) + " |")
  return "\n".join(lines)
