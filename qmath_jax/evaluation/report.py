"""Eval outputs in the workdir: `eval_results.json`, `eval_report.md`, `eval_scores.png`.

Every file is written to a temporary name and renamed, so a reader never sees half a file.
"""

import json
import pathlib

from qmath_jax.data import records
from qmath_jax.evaluation import benchmarks

RESULTS_JSON = "eval_results.json"
REPORT_MD = "eval_report.md"
SCORES_PNG = "eval_scores.png"


def metric_label(metric: str, n: int) -> str:
  return {"acc": "greedy" if n == 1 else "sample 1", "mean": "mean", "maj": f"maj@{n}",
          "rm": f"rm@{n}"}.get(metric, metric)


def group_averages(per_dataset: dict, metric: str) -> dict:
  """Unweighted means over the report's groups (only when every member was evaluated)."""
  out = {}
  for group, members in benchmarks.REPORT_GROUPS.items():
    if all(m in per_dataset and metric in per_dataset[m] for m in members):
      out[group] = sum(per_dataset[m][metric] for m in members) / len(members)
  evaluated = [d for d in per_dataset.values() if metric in d]
  if evaluated:
    out["all_avg"] = sum(d[metric] for d in evaluated) / len(evaluated)
  return out


def markdown_table(results: dict) -> str:
  """One row per dataset: problems, the headline metric, then the other scores."""
  per_dataset = results["datasets"]
  extra = sorted({k for d in per_dataset.values() for k in d} - {"num_problems",
                                                                   results["metric"]})
  header = ["dataset", "problems", results["metric_label"]] + extra
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, scores in per_dataset.items():
    cells = [name, str(scores.get("num_problems", 0))]
    cells += [f"{scores[k]:.1f}" if k in scores else "-" for k in [results["metric"]] + extra]
    lines.append("| " + " | ".join(cells) + " |")
  for group, value in results["averages"].items():
    lines.append(f"| **{group}** | | {value:.1f} |" + " |" * len(extra))
  config = ", ".join(f"{k}={v}" for k, v in results["config"].items() if k != "datasets")
  return f"# Evaluation\n\n{config}\n\n" + "\n".join(lines) + "\n"


def bar_chart_png(results: dict) -> bytes:
  """A bar per dataset (headline metric, percent) as PNG bytes."""
  import io  # pylint: disable=g-import-not-at-top
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  names = list(results["datasets"])
  values = [results["datasets"][n].get(results["metric"], 0.0) for n in names]
  fig = figure.Figure(figsize=(max(4.0, 0.5 * len(names) + 2), 4))
  ax = fig.add_subplot()
  bars = ax.bar(range(len(names)), values, color="#4c72b0")
  ax.bar_label(bars, fmt="%.1f", fontsize=7)
  ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
  ax.set_ylim(0, 100)
  ax.set_ylabel(f"{results['metric_label']} (%)")
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  return buf.getvalue()


def write_all(workdir, results: dict) -> None:
  workdir = pathlib.Path(workdir)
  records.write_atomic(workdir / RESULTS_JSON, json.dumps(results, indent=2, ensure_ascii=False))
  records.write_atomic(workdir / REPORT_MD, markdown_table(results))
  records.write_atomic(workdir / SCORES_PNG, bar_chart_png(results))
