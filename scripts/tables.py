"""Reading finished runs and printing Markdown tables."""

from collections.abc import Sequence

import numpy as np

from tasks import base

Column = tuple[str, str, str]  # (metric key, column title, format string)


def final_eval(workdir: str) -> dict[str, float]:
  """The last evaluation record written to `<workdir>/metrics.jsonl`, with its "step"."""
  return base.read_metrics(workdir, "eval")[-1]


def parse_runs(runs: Sequence[str]) -> list[tuple[str, str]]:
  """`["label=workdir", ...]` → `[(label, workdir), ...]`."""
  return [tuple(run.rsplit("=", 1)) for run in runs]


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
