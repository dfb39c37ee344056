"""Table 1 (linear probing) and Table 2 (fine-tuning) in the CoBooM paper's layout, from stored records alone.

Rows are methods in suite order, columns are task x label fraction; a cell is the metric in percent, mean +- sd
(sample sd, ddof=1) over pretraining runs, each run's value the mean over its evaluation seeds; with a single
pretraining seed in the suite, over that run's evaluation seeds instead, and the caption says so. The count is
shown when it differs from the suite's. The best mean of each column (at the displayed precision, so ties are all
bold) is bold. Comparison marks need replicated pretraining (medssl/report/compare.py). Output is deterministic: the same
records give byte-identical files.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np

from medssl.plan.jobs import Plan
from medssl.record.store import ResultStore
from medssl.report import compare, figures
from medssl.report.captions import (
    TABLES,
    excluded_classes_note,
    marks_legend,
    marks_summary,
    metric_phrase,
    spread_phrase,
)
from medssl.report.cells import cell_text, cell_values, replicates, table_header
from medssl.report.compare import Comparison
from medssl.report.details import (
    render_gap,
    render_pretraining,
    render_random_init_margins,
    render_segmentation_details,
)
from medssl.report.folder import replace_folder
from medssl.report.significance import per_class_csv, per_class_delong, render_statistics, statistics_csv
from medssl.suite.config import fraction_label, statistics_settings
from methods import method_label


def table_rows(plan: Plan, cells: Dict[tuple, Dict[tuple, float]], protocol: str) -> List[Dict]:
    rows = []
    for method in plan.suite["methods"]:
        for task, fraction in compare.columns(plan, protocol):
            values = cell_values(plan, cells.get((method, task, protocol, fraction), {}))
            mean = float(np.mean(values)) * 100 if values else math.nan
            sd = float(np.std(values, ddof=1)) * 100 if len(values) > 1 else math.nan
            rows.append(
                {
                    "method": method,
                    "label": method_label(method),
                    "task": task,
                    "fraction": fraction,
                    "n": len(values),
                    "mean": mean,
                    "sd": sd,
                }
            )
    best: Dict[tuple, float] = {}
    for row in rows:
        if row["n"]:
            col = (row["task"], row["fraction"])
            best[col] = max(best.get(col, -math.inf), round(row["mean"], 1))
    for row in rows:
        row["best"] = bool(row["n"]) and round(row["mean"], 1) == best.get((row["task"], row["fraction"]))
    return rows


def table_marks(plan: Plan, comparisons: List[Comparison]) -> Dict[tuple, str]:
    """(method, task, fraction) -> mark: ``*`` on a row that differs significantly from the reference method,
    ``†`` on the reference's row where it is above every baseline of the column (compare.above_every_baseline)."""
    marks: Dict[tuple, str] = {}
    reference = statistics_settings(plan.suite)["reference"]
    for c in comparisons:
        if c.significant and c.family == "reference":
            marks[(c.method, c.task, c.fraction)] = "*"
    for task, fraction in compare.dagger_columns(plan, comparisons):
        marks[(reference, task, fraction)] = marks.get((reference, task, fraction), "") + "†"
    return marks


def _cell_grid(plan: Plan, rows: List[Dict], protocol: str, marks: Dict[tuple, str], render, missing: str):
    """(method, formatted cells) per table row; ``render(text, best, mark)`` formats a finished cell."""
    n_seeds = replicates(plan, protocol)
    lookup = {(r["method"], r["task"], r["fraction"]): r for r in rows}
    for method in plan.suite["methods"]:
        cells = [lookup[(method, task, fraction)] for task, fraction in compare.columns(plan, protocol)]
        yield (
            method,
            [
                render(cell_text(r, n_seeds), r["best"], marks.get((method, r["task"], r["fraction"]), ""))
                if r["n"]
                else missing
                for r in cells
            ],
        )


def render_markdown(
    plan: Plan,
    rows: List[Dict],
    protocol: str,
    marks: Optional[Dict[tuple, str]] = None,
    legend: str = "",
    notes: str = "",
) -> str:
    marks = marks or {}
    columns = compare.columns(plan, protocol)
    title = TABLES[protocol][1]
    lines = [
        f"{title} — suite `{plan.suite['name']}`: {metric_phrase(plan, protocol)} (%), {spread_phrase(plan, protocol)}; best per column in bold.",
        "",
    ]
    lines += table_header(columns)
    for method, cells in _cell_grid(
        plan,
        rows,
        protocol,
        marks,
        lambda text, best, mark: (f"**{text}**" if best else text) + mark.replace("*", "\\*"),
        "–",
    ):
        lines.append(f"| {method_label(method)} | " + " | ".join(cells) + " |")
    if legend:
        lines += ["", legend]
    if notes:
        lines += ["", notes]
    missing = sum(1 for r in rows if not r["n"])
    if missing:
        lines += ["", f"– : {missing} cells have no finished result yet."]
    if plan.unrecorded:
        lines += ["", f"Not run yet (no records, so no row): {', '.join(method_label(m) for m in plan.unrecorded)}."]
    exact_probe = protocol == "linear" and plan.suite["evaluation"]["linear"].get("solver", "lbfgs") == "lbfgs"
    if exact_probe and any(fraction == 100 for _, fraction in columns) and len(plan.suite["pretrain"]["seeds"]) == 1:
        lines += [
            "",
            "At 100 % labels every seed trains on the same images and the probe is fitted exactly, so the sd is 0 there.",
        ]
    return "\n".join(lines) + "\n"


def render_csv(rows: List[Dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "label", "task", "fraction", "n", "mean", "sd", "best"])
    for r in rows:
        writer.writerow(
            [
                r["method"],
                r["label"],
                r["task"],
                f"{r['fraction']:g}",
                r["n"],
                "" if math.isnan(r["mean"]) else f"{r['mean']:.4f}",
                "" if math.isnan(r["sd"]) else f"{r['sd']:.4f}",
                int(r["best"]),
            ]
        )
    return out.getvalue()


def render_latex(plan: Plan, rows: List[Dict], protocol: str, marks: Optional[Dict[tuple, str]] = None) -> str:
    """The table as a LaTeX booktabs tabular (needs ``\\usepackage{booktabs}``); best in bold, marks as superscripts."""
    marks = marks or {}
    columns = compare.columns(plan, protocol)
    tasks = list(dict.fromkeys(task for task, _ in columns))

    def escape(text: str) -> str:
        return text.replace("%", "\\%").replace("&", "\\&").replace("_", "\\_")

    spread = spread_phrase(plan, protocol).replace("±", "$\\pm$")
    lines = [
        f"% {TABLES[protocol][1]} — suite {plan.suite['name']}: test metric (%), {spread}; best in bold.",
        "\\begin{tabular}{l" + "c" * len(columns) + "}",
        "\\toprule",
    ]
    lines.append(
        "Method & "
        + " & ".join(
            f"\\multicolumn{{{sum(1 for t, _ in columns if t == task)}}}{{c}}{{{escape(task)}}}" for task in tasks
        )
        + " \\\\"
    )
    lines.append(" & " + " & ".join(escape(fraction_label(f)) for _, f in columns) + " \\\\")
    lines.append("\\midrule")

    def latex_cell(text: str, best: bool, mark: str) -> str:
        text = text.replace("±", "$\\pm$")
        mark = mark.replace("†", "\\dagger")
        return (f"\\textbf{{{text}}}" if best else text) + (f"$^{{{mark}}}$" if mark else "")

    for method, out in _cell_grid(plan, rows, protocol, marks, latex_cell, "--"):
        lines.append(f"{escape(method_label(method))} & " + " & ".join(out) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


# Every file write_reports can produce besides index.html (always written). One of them that the current records do
# not call for (a fine-tuning table after the fine-tuning rows were dropped, an ablation figure with a single CoBooM
# variant left) is removed, so the folder never shows a report of records that are no longer there. Files other tools
# write there (benchmarks/*.py) are left alone.
REPORT_FILES = (
    "random_init_margins.md",
    "pretraining.md",
    "finetune_gap.md",
    "segmentation.md",
    *(f"{stem}.{ext}" for stem, _ in TABLES.values() for ext in ("md", "csv", "tex")),
    "statistics.md",
    "statistics.csv",
    "statistics_per_class.csv",
    *figures.FIGURE_FILES,
)


def write_reports(
    plan: Plan, records: Iterable[Dict], reports_dir: Path, pretraining: Optional[Dict[str, Dict]] = None
) -> List[Path]:
    """Every report file of a suite from its records, swapped in whole (medssl/report/folder.py); ``records`` may be
    the ``ResultStore`` itself, whose stored per-image predictions then feed the image-level statistics (CIs,
    bootstrap and DeLong tests). Report files of earlier records that these records no longer produce
    (``REPORT_FILES``) are dropped, except the per-class CSV when no store is given, since without predictions it
    cannot be rebuilt."""
    return replace_folder(
        reports_dir,
        lambda folder: _write_report_files(plan, records, folder, pretraining),
        REPORT_FILES,
        keep=() if isinstance(records, ResultStore) else ("statistics_per_class.csv",),
    )


def _write_report_files(
    plan: Plan, records: Iterable[Dict], reports_dir: Path, pretraining: Optional[Dict[str, Dict]]
) -> List[Path]:
    store = records if isinstance(records, ResultStore) else None
    records = list(records)
    for problem in compare.record_problems(plan, records, store):
        print(f"warning: {problem}", file=sys.stderr)
    records = [record for record in records if "key" in record]
    runs = compare.collect_runs(plan, records, store)
    cells = {key: dict(r.values) for key, r in runs.items()}
    outputs: Dict[str, str] = {
        "random_init_margins.md": render_random_init_margins(plan, runs),
        "pretraining.md": render_pretraining(plan, pretraining or {}),
        "finetune_gap.md": render_gap(plan, cells),
        "segmentation.md": render_segmentation_details(plan, records),
    }
    comparisons: Dict[str, List[Comparison]] = {}
    tables: Dict[str, str] = {}
    notes: List[str] = []
    for protocol, (stem, _) in TABLES.items():
        if not compare.columns(plan, protocol):
            continue
        comparisons[protocol] = compare.comparisons(plan, runs, protocol)
        marks = table_marks(plan, comparisons[protocol])
        rows = table_rows(plan, cells, protocol)
        notes.append(excluded_classes_note(plan, records, protocol))
        tables[stem] = render_markdown(
            plan, rows, protocol, marks, marks_legend(plan, comparisons[protocol]), notes[-1]
        )
        outputs.update(
            {
                f"{stem}.md": tables[stem],
                f"{stem}.csv": render_csv(rows),
                f"{stem}.tex": render_latex(plan, rows, protocol, marks),
            }
        )
    outputs["statistics.md"] = render_statistics(plan, comparisons, runs, notes)
    summary = marks_summary(plan, comparisons)
    if any(comparisons.values()):
        outputs["statistics.csv"] = statistics_csv(comparisons)
    if store is not None:
        outputs["statistics_per_class.csv"] = per_class_csv(per_class_delong(plan, records, store))
    written = []
    for name, text in outputs.items():
        if text:
            (reports_dir / name).write_text(
                text, encoding="utf-8"
            )  # a private staging folder: no reader sees it half-written
            written.append(reports_dir / name)
    intervals = compare.cell_intervals(plan, runs)
    written += figures.write_figures(plan, runs, intervals, reports_dir)
    written.append(
        figures.write_html(plan, reports_dir, [p for p in written if p.suffix in (".md", ".png")], summary=summary)
    )
    return written
