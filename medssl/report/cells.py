"""A table cell from stored records: the values its mean and sd are over (pretraining runs, or one run's evaluation
seeds), and its text."""

from __future__ import annotations

from typing import Dict, Iterable, List

from medssl.plan.jobs import Plan, evaluation_seeds
from medssl.report import compare
from medssl.report.compare import over_pretraining
from medssl.suite.config import fraction_label


def aggregate(plan: Plan, records: Iterable[Dict]) -> Dict[tuple, Dict[tuple, float]]:
    """(method, task, protocol, fraction) -> {(pretrain seed, seed): metric} of the plan's finished jobs."""
    by_key = {r["key"]: r for r in records}
    cells: Dict[tuple, Dict[tuple, float]] = {}
    for job in plan.eval_jobs:
        record = by_key.get(job.key)
        if record is not None:
            cells.setdefault((job.pretrain.method, job.task["name"], job.protocol, job.fraction), {})[job.run] = float(
                record["value"]
            )
    return cells


def table_header(columns: List[tuple]) -> List[str]:
    """Markdown header and alignment rows of a method x (task, fraction) table."""
    return [
        "| Method | " + " | ".join(f"{task} {fraction_label(f)}" for task, f in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]


def replicates(plan: Plan, protocol: str) -> int:
    """How many values a full cell's sd is over: pretraining runs, or the evaluation seeds of the single run."""
    return (
        len(plan.suite["pretrain"]["seeds"]) if over_pretraining(plan) else len(evaluation_seeds(plan.suite, protocol))
    )


def cell_values(plan: Plan, values: Dict[tuple, float]) -> List[float]:
    """The values a cell's mean and sd are over: each pretraining run's mean over its evaluation seeds, or, with a
    single pretraining seed in the suite, that run's evaluations."""
    return compare.CellRuns(values=dict(values)).replicates(over_pretraining(plan))


def cell_text(row: Dict, n_seeds: int, mark: str = "") -> str:
    text = (
        f"{row['mean']:.1f}"
        + (f" ± {row['sd']:.1f}" if row["n"] > 1 else "")
        + (f" (n={row['n']})" if row["n"] != n_seeds else "")
    )
    return text + mark
