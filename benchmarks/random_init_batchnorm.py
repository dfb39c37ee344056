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
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medssl.config import fraction_label, load_suite  # noqa: E402
from medssl.plan import build_plan, task_type  # noqa: E402
from medssl.records import ResultStore  # noqa: E402
from medssl.runner import run_plan  # noqa: E402


def linear_cells(records, method: str, tasks):
    cells = defaultdict(list)
    for r in records:
        if r["method"] == method and r["protocol"] == "linear" and r["task"] in tasks:
            cells[(r["task"], float(r["fraction"]))].append(r["value"])
    return cells


def fmt(values) -> str:
    if not values:
        return "-"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1) if len(values) > 1 else 0.0:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--data-root", default=str(ROOT / "data"))
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--reports", default=str(ROOT / "reports"))
    args = parser.parse_args()
    suite = load_suite(args.suite)
    stored = ResultStore(Path(args.out) / suite["name"]).records()
    classification = {t["name"] for t in suite["tasks"] if task_type(t) == "classification" and "linear" in t["protocols"]}
    corpus = linear_cells(stored, "supervised", classification)
    if not corpus:
        print(f"no stored linear-probe records of 'supervised' in {args.out}/{suite['name']}; run the suite first", file=sys.stderr)
        return 2
    variant = copy.deepcopy(suite)
    variant["name"] = f"{suite['name']}-bn-init"
    variant["methods"] = ["supervised"]
    variant["method_params"] = {"supervised": {"batchnorm_statistics": "init"}}
    variant["tasks"] = [{**t, "protocols": ["linear"]} for t in suite["tasks"] if t["name"] in classification]
    run_plan(build_plan(variant), Path(args.data_root), Path(args.out), progress=False, log=lambda message: None)
    initial = linear_cells(ResultStore(Path(args.out) / variant["name"]).records(), "supervised", classification)
    columns = sorted(corpus, key=lambda c: ([t["name"] for t in suite["tasks"]].index(c[0]), c[1]))
    header = "| Random-init frozen encoder | " + " | ".join(f"{t} {fraction_label(f)}" for t, f in columns) + " |"
    lines = [
        f"Random-init floor and BatchNorm statistics — suite `{suite['name']}`: linear-probe macro AUC (%), mean ± sd over seeds.",
        "",
        header,
        "|---|" + "---:|" * len(columns),
        "| BatchNorm statistics of the pretraining corpus (the tables' Sup. row) | " + " | ".join(fmt(corpus[c]) for c in columns) + " |",
        "| PyTorch's initial statistics (BatchNorm = identity) | " + " | ".join(fmt(initial.get(c, [])) for c in columns) + " |",
    ]
    text = "\n".join(lines) + "\n"
    out = Path(args.reports) / suite["name"] / "random_init_batchnorm.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
