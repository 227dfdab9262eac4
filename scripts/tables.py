"""Reading finished runs and printing Markdown tables."""

from collections.abc import Sequence

from tasks import base

Column = tuple[str, str, str]  # (metric key, column title, format string)


def final_eval(workdir: str) -> dict[str, float]:
  """The last evaluation record written to `<workdir>/metrics.jsonl`, with its "step"."""
  return base.read_metrics(workdir, "eval")[-1]


def parse_runs(runs: Sequence[str]) -> list[tuple[str, str]]:
  """`["label=workdir", ...]` → `[(label, workdir), ...]`."""
  return [tuple(run.rsplit("=", 1)) for run in runs]


def markdown_table(rows: Sequence[tuple[str, dict]], columns: Sequence[Column], first: str = "method") -> str:
  """One row per `(name, metrics)`; a metric a row lacks prints as "—"."""
  lines = ["| " + " | ".join([first] + [title for _, title, _ in columns]) + " |",
           "|---" * (len(columns) + 1) + "|"]
  for name, metrics in rows:
    cells = [fmt.format(metrics[key]) if key in metrics else "—" for key, _, fmt in columns]
    lines.append("| " + " | ".join([name] + cells) + " |")
  return "\n".join(lines)
