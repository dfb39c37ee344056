"""How a suite's table cells moved between two versions of its reports: the committed ``table1.csv``/``table2.csv`` at a
git revision against the ones in ``reports/<suite>/`` now, one Markdown table per protocol.

    python benchmarks/report_changes.py --suite quick --before a9e13b7 --columns "CXR 10%,CXR 100%,Fundus 10%,PTX-seg 100%"

Each cell reads ``before -> after (change)`` in the tables' metric points; a row or column missing on one side
shows ``-``. Used for docs/changelog.md's account of what a re-run changed, so no number there is typed by hand.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
TABLES = {"table1": "Linear probing", "table2": "Fine-tuning"}


def column_name(task: str, fraction: str) -> str:
    value = float(fraction)
    return f"{task} {'100' if value == 100 else f'{value:g}'}%"


def read_cells(text: str) -> Tuple[Dict[str, str], Dict[Tuple[str, str], float]]:
    """(method -> row label, (method, column) -> mean) of a table CSV written by ``medssl.report.tables``."""
    labels, cells = {}, {}
    for row in csv.DictReader(io.StringIO(text)):
        labels[row["method"]] = row["label"]
        cells[(row["method"], column_name(row["task"], row["fraction"]))] = float(row["mean"])
    return labels, cells


def committed(revision: str, path: str) -> Optional[str]:
    result = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=ROOT, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def changes_table(before: str, after: str, columns: List[str], title: str) -> str:
    labels_before, old = read_cells(before)
    labels_after, new = read_cells(after)
    methods = list(labels_after) + [m for m in labels_before if m not in labels_after]
    lines = [
        f"{title}: before -> after (change), metric points.",
        "",
        "| Method | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for method in methods:
        cells = []
        for column in columns:
            a, b = old.get((method, column)), new.get((method, column))
            if a is None or b is None:
                cells.append(f"{'-' if a is None else f'{a:.1f}'} -> {'-' if b is None else f'{b:.1f}'}")
            else:
                cells.append(f"{a:.1f} -> {b:.1f} ({b - a:+.1f})")
        lines.append(f"| {labels_after.get(method, labels_before.get(method))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--before", required=True, help="git revision holding the earlier reports/<suite>/table*.csv")
    parser.add_argument(
        "--columns", required=True, help='comma-separated columns as the tables name them, e.g. "CXR 10%%,CXR 100%%"'
    )
    args = parser.parse_args()
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    parts = []
    for table, title in TABLES.items():
        path = f"reports/{args.suite}/{table}.csv"
        before = committed(args.before, path)
        if before is None:
            print(
                f"{path} is not in revision {args.before!r}: pass a commit that has the suite's reports",
                file=sys.stderr,
            )
            return 2
        current = ROOT / path
        if not current.exists():
            print(
                f"{path} does not exist: run python run_benchmark.py report --suite {args.suite} first", file=sys.stderr
            )
            return 2
        parts.append(changes_table(before, current.read_text(), columns, title))
    print("\n\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
