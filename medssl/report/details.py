"""The reports beside Tables 1/2: random-init margins, the pretraining runs, the fine-tuning gap and the segmentation
details."""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional

import numpy as np

from medssl.plan.jobs import Plan, task_type
from medssl.report import compare
from medssl.report.captions import (
    TABLES,
    fixed_rows_phrase,
    no_marks_reason,
    none_reached,
    significance_phrase,
    spread_phrase,
    testable,
)
from medssl.report.cells import cell_values, table_header
from medssl.report.compare import Comparison
from medssl.suite.config import fraction_label, statistics_settings
from methods import method_label


def render_random_init_margins(plan: Plan, runs: Dict[tuple, compare.CellRuns], reference: str = "supervised") -> str:
    """Linear-probe gain of each pretrained encoder over the randomly initialised frozen encoder, per column.

    With replicated pretraining, a cell is the difference of the two cells' values with the CI of the tables' test,
    the random-init row as the other side, and a mark says the gain is significant (adjusted within each column):
    "clear margin" is a test, not a judgement by eye. With one pretraining run there is no test and no mark: a cell
    is then the mean ± sd over evaluation seeds of the difference per evaluation seed (same label subset).
    """
    if reference not in plan.suite["methods"] or not compare.columns(plan, "linear"):
        return ""
    columns = compare.columns(plan, "linear")
    tested = {
        (c.method, c.task, c.fraction): c
        for c in compare.comparisons_versus(plan, runs, "linear", reference, "random init")
    }
    settings = statistics_settings(plan.suite)
    with_test = testable(list(tested.values()))
    spread = (
        f"the difference of the two cells' values with its {100 * settings['confidence']:g}% CI (unadjusted; the mark is adjusted)"
        if with_test
        else f"per evaluation seed, {spread_phrase(plan, 'linear')}"
    )
    lines = [
        f"Linear probing: gain over the randomly initialised frozen encoder ({method_label(reference)}: random weights, BatchNorm statistics "
        f"of the pretraining corpus), macro AUC points; {spread}.",
        "",
    ]
    lines += table_header(columns)
    for method in plan.suite["methods"]:
        if method == reference:
            continue
        out = [
            _margin_text(plan, runs, tested.get((method, task, fraction)), (method, reference), (task, fraction))
            for task, fraction in columns
        ]
        lines.append(f"| {method_label(method)} | " + " | ".join(out) + " |")
    if with_test:
        significant = any(c.significant for c in tested.values())
        lines += [
            "",
            f"\\* the difference from {method_label(reference)} is significant: {significance_phrase(settings)}{fixed_rows_phrase(plan)}."
            + ("" if significant else f" No gain reaches it here ({none_reached(list(tested.values()))})."),
        ]
    elif tested:
        lines += ["", no_marks_reason(plan)]
    return "\n".join(lines) + "\n"


def _margin_text(
    plan: Plan, runs: Dict[tuple, compare.CellRuns], comparison: Optional[Comparison], pair: tuple, column: tuple
) -> str:
    """One cell of the random-init margins: the tested difference with its CI, or, untestable, the difference per
    evaluation seed of the runs both rows have."""
    if comparison is not None and comparison.testable:
        return f"{comparison.difference:+.1f} [{comparison.ci_low:+.1f}, {comparison.ci_high:+.1f}]" + (
            "\\*" if comparison.significant else ""
        )
    ours, base = (runs.get((method, column[0], "linear", column[1])) for method in pair)
    paired = sorted(set(ours.values) & set(base.values)) if ours and base else []
    if not paired:
        return "–"
    diff = np.array(cell_values(plan, {k: ours.values[k] - base.values[k] for k in paired})) * 100
    return f"{diff.mean():+.1f}" + (f" ± {diff.std(ddof=1):.1f}" if len(diff) > 1 else "")


def render_pretraining(plan: Plan, pretraining: Dict[str, Dict]) -> str:
    """Per pretraining: epochs, final loss, wall time, the learning-signal probe over training (if monitored) and,
    for codebook methods, codebook usage in the last epoch."""
    rows = [(job, pretraining[job.key]) for job in plan.pretrain_jobs if job.key in pretraining and job.trains]
    if not rows:
        return ""
    lines = [
        "Pretraining: final-epoch loss and diagnostics. Probe = validation macro AUC (%) of the learning-signal monitor "
        "(medssl/pretrain/monitor.py) at initialisation and after each monitored epoch; rank = effective rank (centred RankMe) of "
        "the same validation features, low when the representation has collapsed onto few directions; codebook "
        "perplexity = exp(entropy of code usage); dead = share of codes unused in the epoch.",
        "",
        "| Method | corpus | epochs | steps | final loss | wall time (min) | probe: init → monitored epochs | rank: init → monitored epochs | codebook perplexity | dead codes |",
        "|---|---|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for job, row in rows:
        epochs = [r for r in row["history"] if r["epoch"] >= 0]
        last = epochs[-1] if epochs else {}
        probes = (
            " → ".join(f"{100 * r['probe_auc']:.1f}" for r in row["history"] if r.get("probe_auc") is not None) or "–"
        )
        ranks = " → ".join(f"{r['feature_rank']:.0f}" for r in row["history"] if "feature_rank" in r) or "–"
        size = job.config["params"].get("codebook_size")
        perplexity = f"{last['codebook_perplexity']:.1f} / {size}" if "codebook_perplexity" in last else "–"
        dead = f"{100 * last['codebook_dead_share']:.0f}%" if "codebook_dead_share" in last else "–"
        lines.append(
            f"| {method_label(job.method)} | {job.corpus} | {len(epochs)} | {last.get('step', 0)} | {last.get('loss', math.nan):.4f} | {row['wall_time_s'] / 60:.1f} | {probes} | {ranks} | {perplexity} | {dead} |"
        )
    return "\n".join(lines) + "\n"


def render_gap(plan: Plan, cells: Dict[tuple, Dict[tuple, float]]) -> str:
    """Fine-tuning minus linear probing per method and column (the paper's "minimal fine-tuning" claim: a good
    representation leaves fine-tuning little to add), mean over the runs both protocols have."""
    shared = [c for c in compare.columns(plan, "linear") if c in compare.columns(plan, "finetune")]
    if not shared:
        return ""
    lines = [
        "Fine-tuning − linear probing, metric points (mean over seeds both protocols ran; small = the frozen features were already nearly as good).",
        "",
    ]
    lines += table_header(shared)
    for method in plan.suite["methods"]:
        out = []
        for task, fraction in shared:
            tuned, probed = (
                cells.get((method, task, "finetune", fraction), {}),
                cells.get((method, task, "linear", fraction), {}),
            )
            paired = sorted(set(tuned) & set(probed))
            out.append(f"{100 * np.mean([tuned[k] - probed[k] for k in paired]):+.1f}" if paired else "–")
        lines.append(f"| {method_label(method)} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def render_segmentation_details(plan: Plan, records: Iterable[Dict]) -> str:
    """Per segmentation task and protocol: the SIIM-rule mean Dice of the tables next to the Dice over images with a
    mask and the share of mask-free images given a mask. The SIIM rule scores an empty prediction on a mask-free
    image as 1, so a decoder that predicts nothing scores the mask-free share of the test set; the second column
    shows whether a row segments at all."""
    tasks = [t for t in plan.suite["tasks"] if task_type(t) == "segmentation"]
    if not tasks:
        return ""
    by_key = {r["key"]: r for r in records}
    by_cell: Dict[tuple, List[Dict]] = {}
    for job in plan.eval_jobs:
        if job.key in by_key:
            by_cell.setdefault((job.pretrain.method, job.task["name"], job.protocol, job.fraction), []).append(
                by_key[job.key]
            )
    protocols = [p for p in TABLES if any(p in t["protocols"] for t in tasks)]
    lines = [
        "Segmentation details: mean Dice per image with the SIIM rule (the tables' metric) | Dice over the test images "
        "with a mask | share of mask-free test images given a mask (%), mean over seeds. A decoder that predicts no "
        "mask anywhere scores the mask-free share of the test set under the SIIM rule, with Dice 0 on the images with a mask.",
        "",
    ]
    for task in tasks:
        columns = [(p, float(f)) for p in protocols if p in task["protocols"] for f in task["fractions"]]
        lines.append("| Method | " + " | ".join(f"{task['name']} {fraction_label(f)} {p}" for p, f in columns) + " |")
        lines.append("|---|" + "---:|" * len(columns))
        for method in plan.suite["methods"]:
            out = []
            for protocol, fraction in columns:
                found = by_cell.get((method, task["name"], protocol, fraction))
                if not found:
                    out.append("–")
                    continue
                values = [
                    [r["value"], r["extra_metrics"]["dice_positive"], r["extra_metrics"]["false_positive_rate_empty"]]
                    for r in found
                ]
                out.append(" \\| ".join(f"{100 * v:.1f}" for v in np.mean(values, axis=0)))
            lines.append(f"| {method_label(method)} | " + " | ".join(out) + " |")
        lines.append("")
    return "\n".join(lines)
