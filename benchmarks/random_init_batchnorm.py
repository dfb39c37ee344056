"""How much of the random-init floor is BatchNorm's convention: the frozen random encoder with the BatchNorm
statistics of the pretraining corpus (the suite's ``Sup.`` row, ``methods/supervised.py``) against the same weights
with PyTorch's initial statistics (BatchNorm = identity in eval mode), linear probing on the suite's
classification tasks.

    python benchmarks/random_init_batchnorm.py --suite quick

The corpus-statistics numbers are the suite's own stored ``supervised`` records (run the suite first); the
initial-statistics variant is run here as suite ``<suite>-bn-init`` (records in results/<suite>-bn-init/, reused on
a re-run) and the table is written to reports/<suite>/random_init_batchnorm.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medssl.plan.jobs import build_plan, task_type  # noqa: E402
from medssl.record.store import ResultStore  # noqa: E402
from medssl.report.cells import aggregate, cell_text, replicates, table_header  # noqa: E402
from medssl.report.tables import table_rows  # noqa: E402
from medssl.run.image import run_plan  # noqa: E402
from medssl.runtime.options import RunOptions  # noqa: E402
from medssl.suite.config import load_suite  # noqa: E402


def random_init_plan(suite, name: str, batchnorm_statistics: str):
    """The suite narrowed to the random-init row on its linear-probed classification tasks; with the suite's own
    name and ``corpus`` statistics its jobs are the suite's stored ones (job keys do not depend on the other rows)."""
    narrowed = copy.deepcopy(suite)
    narrowed["name"] = name
    narrowed["methods"] = ["supervised"]
    narrowed["method_params"] = {"supervised": {"batchnorm_statistics": batchnorm_statistics}}
    narrowed["tasks"] = [
        {**t, "protocols": ["linear"]}
        for t in suite["tasks"]
        if task_type(t) == "classification" and "linear" in t["protocols"]
    ]
    return build_plan(narrowed)


def row_cells(plan, records) -> list:
    n_seeds = replicates(plan, "linear")
    return [
        cell_text(row, n_seeds) if row["n"] else "–" for row in table_rows(plan, aggregate(plan, records), "linear")
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--data-root", default=str(ROOT / "data"))
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--reports", default=str(ROOT / "reports"))
    args = parser.parse_args()
    suite = load_suite(args.suite)
    corpus_plan = random_init_plan(suite, suite["name"], "corpus")
    stored = ResultStore(Path(args.out) / suite["name"]).records()
    if not any(r["key"] in {job.key for job in corpus_plan.eval_jobs} for r in stored):
        print(
            f"no stored linear-probe records of 'supervised' in {args.out}/{suite['name']}; run the suite first",
            file=sys.stderr,
        )
        return 2
    initial_plan = random_init_plan(suite, f"{suite['name']}-bn-init", "init")
    run_plan(initial_plan, Path(args.data_root), Path(args.out), RunOptions(progress=False, log=lambda message: None))
    initial = ResultStore(Path(args.out) / initial_plan.suite["name"]).records()
    columns = [(t["name"], float(f)) for t in corpus_plan.suite["tasks"] for f in t["fractions"]]
    header = table_header(columns)
    lines = [
        f"Random-init floor and BatchNorm statistics — suite `{suite['name']}`: linear-probe macro AUC (%), mean ± sd over seeds.",
        "",
        header[0].replace("| Method |", "| Random-init frozen encoder |", 1),
        header[1],
        "| BatchNorm statistics of the pretraining corpus (the tables' Sup. row) | "
        + " | ".join(row_cells(corpus_plan, stored))
        + " |",
        "| PyTorch's initial statistics (BatchNorm = identity) | "
        + " | ".join(row_cells(initial_plan, initial))
        + " |",
    ]
    text = "\n".join(lines) + "\n"
    out = Path(args.reports) / suite["name"] / "random_init_batchnorm.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
