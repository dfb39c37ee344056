"""Report figures and the one-page HTML summary of a suite (``reports/<suite>/``).

* ``label_efficiency.png``: metric vs label fraction per method, one panel per protocol and task, with the 95 %
  interval of each cell's value (medssl/report/compare.py ``cell_interval``: over pretraining runs and test images, over
  evaluation seeds and test images for a fixed-weight row beside them; with one pretraining run, conditional on it).
* ``ablation.png``: the reference method and its ablations (CoBooM with/without decoder and DiversiFuse) side by
  side in every column, mean ± sd as the tables' cells (over pretraining runs; one run: over its evaluation seeds),
  drawn with seaborn from the cells' replicates.
* ``index.html``: every Markdown report of the suite converted to HTML, then the figures, in one page.

Files are deterministic for the same records (no timestamps in the PNG metadata), so ``report`` regenerates them
byte for byte.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from datasets.storage import write_atomic
from medssl.plan.jobs import Plan
from medssl.report.compare import CellKey, CellRuns, columns, over_pretraining
from medssl.suite.config import fraction_label, statistics_settings
from medssl.suite.protocol import PROTOCOLS
from methods import method_label

PNG_METADATA = {"Software": None}
PROTOCOL_NAMES = {"linear": "linear probing", "finetune": "fine-tuning", "knn": "kNN"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, metadata=PNG_METADATA, format="png"))
    return path


def _label(method: str) -> str:

    return method_label(method)


def label_efficiency_figure(
    plan: Plan, runs: Dict[CellKey, CellRuns], intervals: Dict[CellKey, Tuple[float, float]], path: Path
):
    panels = [
        (protocol, task)
        for protocol in PROTOCOLS
        for task in dict.fromkeys(t for t, _ in columns(plan, protocol))
        if len([f for t, f in columns(plan, protocol) if t == task]) > 1
    ]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
    for ax, (protocol, task) in zip(axes[0], panels):
        fractions = [f for t, f in columns(plan, protocol) if t == task]
        for i, method in enumerate(plan.suite["methods"]):
            keys = [(method, task, protocol, f) for f in fractions]
            present = [(f, k) for f, k in zip(fractions, keys) if k in runs]
            if not present:
                continue
            xs = [f for f, _ in present]
            ax.plot(
                xs,
                [100 * runs[k].mean for _, k in present],
                marker="o",
                markersize=3,
                linewidth=1.2,
                color=colours[i % 20],
                label=_label(method),
            )
            low = [100 * intervals[k][0] for _, k in present]
            high = [100 * intervals[k][1] for _, k in present]
            if all(math.isfinite(v) for v in low + high):
                ax.fill_between(xs, low, high, color=colours[i % 20], alpha=0.12, linewidth=0)
        ax.set_xscale("log")
        ax.set_xticks(fractions)
        ax.set_xticklabels([fraction_label(f) for f in fractions])
        ax.minorticks_off()
        ax.set_title(f"{task}: {PROTOCOL_NAMES[protocol]}", fontsize=10)
        ax.set_xlabel("labelled training images")
        ax.set_ylabel("test metric (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


PROTOCOL_SHORT = {"linear": "LP", "finetune": "FT", "knn": "kNN"}


def ablation_figure(plan: Plan, runs: Dict[CellKey, CellRuns], path: Path):
    """Bars of the reference and its ablations per column, drawn by seaborn from the replicates of each cell (its
    mean and sd, ddof 1, are the tables' cell value and spread)."""
    import pandas as pd
    import seaborn as sns

    settings = statistics_settings(plan.suite)
    variants = [m for m in plan.suite["methods"] if m == settings["reference"] or m in settings["variants"]]
    cols = [
        (protocol, task, f)
        for protocol in PROTOCOLS
        for task, f in columns(plan, protocol)
        if sum((m, task, protocol, f) in runs for m in variants) > 1
    ]
    if len(variants) < 2 or not cols:
        return None
    replicated = over_pretraining(plan)
    long = pd.DataFrame(
        [
            {
                "column": f"{PROTOCOL_SHORT[p]}\n{task} {fraction_label(f)}",
                "method": _label(method),
                "value": 100 * value,
            }
            for p, task, f in cols
            for method in variants
            if (method, task, p, f) in runs
            for value in runs[(method, task, p, f)].replicates(replicated)
        ]
    )
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(cols) + 1.5), 3.6))
    sns.barplot(
        data=long,
        x="column",
        y="value",
        hue="method",
        hue_order=[_label(m) for m in variants],
        errorbar="sd",
        capsize=0.1,
        err_kws={"linewidth": 1},
        ax=ax,
    )
    finite = [100 * runs[(m, t, p, f)].mean for m in variants for p, t, f in cols if (m, t, p, f) in runs]
    ax.set_ylim(max(0.0, min(finite) - 5), min(100.0, max(finite) + 5))
    ax.set_xlabel("")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_ylabel("test metric (%)")
    ax.set_title(
        f"Ablation of {_label(settings['reference'])}: mean ± sd over {'pretraining runs' if replicated else 'evaluation seeds'}",
        fontsize=10,
    )
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


FIGURE_FILES = ("label_efficiency.png", "ablation.png")


def write_figures(
    plan: Plan, runs: Dict[CellKey, CellRuns], intervals: Dict[CellKey, Tuple[float, float]], reports_dir: Path
) -> List[Path]:
    """The figures of ``FIGURE_FILES`` that the runs call for (the ablation figure needs two CoBooM variants)."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    efficiency, ablation = (reports_dir / name for name in FIGURE_FILES)
    made = [label_efficiency_figure(plan, runs, intervals, efficiency), ablation_figure(plan, runs, ablation)]
    return [p for p in made if p is not None]


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return text.replace("\\*", "*")


def markdown_to_html(markdown: str) -> str:
    """The subset of Markdown the reports use: pipe tables, ### headings, paragraphs, bold and code spans."""
    out: List[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out.append(
                "<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in block[0]) + "</tr></thead><tbody>"
            )
            out += [
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block[2:]
            ]  # row 1: alignment
            out.append("</tbody></table>")
            continue
        if line.startswith("### "):
            out.append(f"<h3>{_inline(line[4:])}</h3>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


_ORDER = [
    "table1.md",
    "table2.md",
    "table3.md",
    "statistics.md",
    "random_init_margins.md",
    "finetune_gap.md",
    "segmentation.md",
    "pretraining.md",
]
_STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}table{border-collapse:collapse;margin:1em 0;font-size:13px}"
    "th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}th:first-child,td:first-child{text-align:left}img{max-width:100%}"
)


def write_html(
    plan: Plan,
    reports_dir: Path,
    files: List[Path],
    order: Sequence[str] = tuple(_ORDER),
    figure_files: Sequence[str] = FIGURE_FILES,
    summary: str = "",
) -> Path:
    """index.html: ``summary`` (a line saying which differences the tables mark), the Markdown reports named in
    ``order``, then the figures of ``figure_files`` (defaults: the image track's; the CT track passes its own,
    medssl/report/ct.py)."""
    names = {p.name: p for p in files}
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>medssl-bench: {html.escape(plan.suite['name'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>medssl-bench — suite <code>{html.escape(plan.suite['name'])}</code></h1>",
        "<p>Generated by <code>python run_benchmark.py report</code> from the stored results; LaTeX tables: "
        + ", ".join(
            f"<a href='{n}'>{n}</a>"
            for n in ("table1.tex", "table2.tex", "table3.tex", "ct_table.tex")
            if (reports_dir / n).exists()
        )
        + ".</p>",
    ]
    if summary:
        parts.append(f"<p><b>Marks.</b> {_inline(summary)}</p>")
    for name in order:
        if name in names:
            parts.append(f"<h2>{name}</h2>")
            parts.append(markdown_to_html(names[name].read_text(encoding="utf-8")))
    for name in figure_files:
        if name in names:
            parts.append(f"<h2>{name}</h2><img src='{name}' alt='{name}'>")
    parts.append("</body></html>")
    path = reports_dir / "index.html"
    write_atomic(path, lambda tmp: tmp.write_text("\n".join(parts) + "\n", encoding="utf-8"))
    return path
