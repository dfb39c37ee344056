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
import dataclasses
import io
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from medssl.plan.jobs import Plan, evaluation_seeds, task_type
from medssl.record.store import ResultStore
from medssl.report import compare, figures
from medssl.report.compare import Comparison, over_pretraining
from medssl.suite.config import fraction_label, statistics_settings
from methods import method_label

TABLES = {
    "linear": ("table1", "Table 1. Linear probing"),
    "finetune": ("table2", "Table 2. Fine-tuning"),
    "knn": ("table3", "Table 3. Weighted kNN on frozen features"),
}


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


def _header(columns: List[tuple]) -> List[str]:
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


def testable(comparisons: List[Comparison]) -> bool:
    """Whether any comparison has a test (a trained row needs two pretraining runs)."""
    return any(c.testable for c in comparisons)


def no_marks_reason(plan: Plan) -> str:
    """Why a table carries no comparison marks: the pretraining runs are not replicated."""
    seeds = len(plan.suite["pretrain"]["seeds"])
    have = (
        f"no two methods have two finished pretraining runs yet (of the suite's {seeds})"
        if over_pretraining(plan)
        else "this suite pretrains each method once (pretrain.seeds, --pretrain-seeds)"
    )
    return (
        f"No comparison marks: the test behind them takes the pretraining run as its unit and needs at least two pretraining "
        f"runs per method; {have}, so a difference here may be the luck of one pretraining run. statistics.md lists the "
        f"tests over test images conditional on these runs."
    )


def marks_legend(plan: Plan, comparisons: List[Comparison]) -> str:
    settings = statistics_settings(plan.suite)
    reference = method_label(settings["reference"])
    if not comparisons:
        if settings["reference"] not in plan.suite["methods"] and len(plan.suite["methods"]) > 1:
            return (
                f"No comparison marks: every row is compared with the suite's reference method, {reference}, which is not among "
                f"these rows (--set statistics.reference=NAME picks another)."
            )
        return ""
    if not testable(comparisons):
        return no_marks_reason(plan)
    legend = (
        f"\\* differs from {reference}; † ({reference} row): above every baseline of the column "
        f"({', '.join(method_label(m) for m in compare.baselines(plan)) or 'none in this suite'}), each significantly. "
        f"Test: {significance_phrase(settings)}{fixed_rows_phrase(plan)}; details in statistics.md."
    )
    return legend + (
        ""
        if any(c.significant for c in comparisons)
        else f" No difference reaches it here ({none_reached(comparisons)})."
    )


def none_reached(comparisons: List[Comparison]) -> str:
    """Why a table with testable comparisons shows no mark, in numbers: its smallest adjusted p and the test behind it."""
    best = min((c for c in comparisons if math.isfinite(c.p_adjusted)), key=lambda c: c.p_adjusted)
    return (
        f"smallest adjusted p {best.p_adjusted:.3f}, {method_label(best.method)} vs {method_label(best.versus)} at {best.task} "
        f"{fraction_label(best.fraction)}: {replicates_text(best)}, df {best.df:.1f}; docs/statistics.md gives the power"
    )


def significance_phrase(settings: Dict) -> str:
    """The test behind the marks and its multiplicity adjustment, in words (``statistics`` settings of a suite)."""
    adjust = {"holm": "Holm", "bh": "Benjamini-Hochberg"}[settings["adjust"]]
    return (
        f"Welch's t-test over pretraining runs (each run: the mean over its evaluation seeds; the two methods' runs are not paired; "
        f"plus the test-image bootstrap variance of the difference), p < {settings['alpha']:g} after {adjust} adjustment within each column"
    )


def fixed_rows_phrase(plan: Plan) -> str:
    """How rows of encoders brought from files enter the test, for the legends."""
    return (
        "; an encoder brought from a file has fixed weights: its evaluation seeds are its replicates"
        if plan.suite.get("encoders")
        else ""
    )


def replicates_text(c: Comparison) -> str:
    """What a comparison's test is over, in a paper's words: 'pretraining runs, n = 3 vs 3'."""
    if c.unit_method == c.unit_versus:
        return f"{c.unit_method}, n = {c.n_method} vs {c.n_versus}"
    return f"{c.n_method} {c.unit_method} vs {c.n_versus} {c.unit_versus}"


def marks_summary(plan: Plan, comparisons: Dict[str, List[Comparison]]) -> str:
    """One line for index.html: which differences the tables mark."""
    parts = []
    reference = method_label(statistics_settings(plan.suite)["reference"])
    for protocol, items in comparisons.items():
        if not items or not testable(items):
            continue
        marked = [c for c in items if c.significant]
        daggers = compare.dagger_columns(plan, items)
        where = "; ".join(
            f"{method_label(m)} at "
            + ", ".join(f"{c.task} {fraction_label(c.fraction)}" for c in marked if c.method == m)
            for m in dict.fromkeys(c.method for c in marked)
        )
        parts.append(
            f"{TABLES[protocol][1]}: {len(marked)} of {sum(c.testable for c in items)} comparisons with {reference} marked"
            + (f" ({where})" if where else "")
            + f"; † in {len(daggers)} of {len(compare.by_column(items))} columns."
        )
    return " ".join(parts)


def spread_phrase(plan: Plan, protocol: str) -> str:
    """What a cell's mean ± sd is over, in words."""
    evaluations = len(evaluation_seeds(plan.suite, protocol))
    if over_pretraining(plan):
        within = f"the mean over its {evaluations} evaluation seeds" if evaluations > 1 else "one evaluation seed"
        return f"mean ± sd over {len(plan.suite['pretrain']['seeds'])} pretraining runs (each run: {within}){fixed_weights_phrase(plan)}"
    return f"mean ± sd over {evaluations} evaluation seeds of one pretraining run (the spread between pretraining runs is not measured){fixed_weights_phrase(plan)}"


def fixed_weights_phrase(plan: Plan) -> str:
    """How the cells of encoders brought from files (no pretraining run) are summarised, for the captions."""
    names = [m for m in plan.suite["methods"] if m in (plan.suite.get("encoders") or {})]
    return (
        f"; encoders brought from files ({', '.join(names)}): over their evaluation seeds, their weights being fixed"
        if names
        else ""
    )


def cell_text(row: Dict, n_seeds: int, mark: str = "") -> str:
    text = (
        f"{row['mean']:.1f}"
        + (f" ± {row['sd']:.1f}" if row["n"] > 1 else "")
        + (f" (n={row['n']})" if row["n"] != n_seeds else "")
    )
    return text + mark


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


def metric_phrase(plan: Plan, protocol: str) -> str:
    kinds = {task_type(t) for t in plan.suite["tasks"] if protocol in t["protocols"]}
    phrases = {
        "classification": "test macro AUC",
        "segmentation": "test mean Dice per image (SIIM rule: both empty = 1)",
    }
    if len(kinds) == 1:
        return phrases[kinds.pop()]
    return "test metric: macro AUC (classification), mean Dice per image (segmentation, SIIM rule)"


def excluded_classes_note(plan: Plan, records: List[Dict], protocol: str) -> str:
    """The classes a table's macro AUCs leave out (no positive or no negative test image: medssl/evaluate/metrics.py), per
    task, from the records of its cells; empty when none is."""
    keys = {job.key for job in plan.eval_jobs if job.protocol == protocol}
    left: Dict[str, set] = {}
    scored: Dict[str, int] = {}
    for record in records:
        if record["key"] in keys and record.get("excluded_classes"):
            left.setdefault(record["task"], set()).update(record["excluded_classes"])
            scored[record["task"]] = len(record.get("per_class") or {})
    if not left:
        return ""
    parts = [
        f"{task}: {', '.join(sorted(names))} ({scored[task]} of {scored[task] + len(names)} classes scored)"
        for task, names in sorted(left.items())
    ]
    return (
        "Macro AUC leaves out classes without a positive (or without a negative) test image: " + "; ".join(parts) + "."
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
    lines += _header(columns)
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
    lines += _header(columns)
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


def _p_text(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _df_text(df: float) -> str:
    """Welch-Satterthwaite df are fractional: one decimal, none where whole."""
    if math.isnan(df):
        return "–"
    return f"{df:.0f}" if float(df).is_integer() else f"{df:.1f}"


def render_variance_components(plan: Plan, runs: Dict[tuple, compare.CellRuns]) -> str:
    """Per method and column, the two random-effect sds of a cell: between pretraining runs and between evaluation
    seeds of one encoder (medssl/report/stats.py ``variance_components``)."""
    lines = [
        "## Variance components",
        "",
        "sd between pretraining runs / sd between evaluation seeds of one encoder, metric points: method-of-moments estimates of a "
        "one-way random-effects model (the runs' spread less what their evaluation seeds explain). – : not separable in this "
        "design (one pretraining run, or one evaluation seed per run, whose spread then holds both).",
    ]
    for protocol, (_, title) in TABLES.items():
        columns = compare.columns(plan, protocol)
        if not columns:
            continue
        lines += ["", f"### {title}", ""] + _header(columns)
        for method in plan.suite["methods"]:
            out = []
            for task, fraction in columns:
                cell = runs.get((method, task, protocol, fraction))
                if cell is None:
                    out.append("–")
                    continue
                sds = compare.cell_variance_components(cell)
                out.append(
                    " / ".join(
                        "–" if math.isnan(sds[k]) else f"{100 * sds[k]:.1f}" for k in ("pretraining", "evaluation")
                    )
                )
            lines.append(f"| {method_label(method)} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def render_statistics(
    plan: Plan, comparisons: Dict[str, List[Comparison]], runs: Dict[tuple, compare.CellRuns], notes: Sequence[str] = ()
) -> str:
    """Every comparison of Tables 1/2 with the reference (difference, CI, df and p of the test behind the marks, the
    test over test images conditional on these pretraining runs, the adjusted p), the † verdict of each column, then
    each cell's variance components."""
    settings = statistics_settings(plan.suite)
    if not any(comparisons.values()):
        return ""
    adjust = {"holm": "Holm", "bh": "Benjamini-Hochberg"}[settings["adjust"]]
    reference = method_label(settings["reference"])
    lines = [
        f"Comparisons with {reference} (medssl/report/compare.py), the tests behind the tables' marks. Difference = row method − {reference}, "
        f"metric points: the difference of the two cells' values (each the mean over its pretraining runs of each run's mean over the "
        f"evaluation seeds both rows have). Test: Welch's two-sample t-test over pretraining runs (runs of two methods are not paired: "
        f"docs/statistics.md; an encoder brought from a file has fixed weights, and its evaluation seeds are its replicates; two such "
        f"encoders are compared over evaluation seeds and test images only), its variance plus the variance of the same difference over "
        f"test images (paired bootstrap, {settings['resamples']} resamples of whole patients stratified by rarest finding), "
        f"Welch-Satterthwaite df over the replicates, {100 * settings['confidence']:g}% CI (unadjusted); none where a trained row has one pretraining run. "
        f"p (images | runs): conditional on these pretraining runs, over test images only (that bootstrap, pROC's standard-error form, "
        f"or Wilcoxon signed-rank on per-image Dice); it does not carry over to other pretraining runs. Adjusted: {adjust} within each "
        f"column (one dataset at one label budget: the claims of one experiment); significant at {settings['alpha']:g}.",
    ]
    for note in dict.fromkeys(note for note in notes if note):  # Tables 1 and 2 usually leave out the same classes
        lines += ["", note]
    if not any(testable(items) for items in comparisons.values()):
        lines += ["", no_marks_reason(plan)]
    header = (
        "| Task | Labels | Method | test over | Difference | CI | df | p | p (images \\| runs) | adjusted p | sig. |"
    )
    for protocol, items in comparisons.items():
        if not items:
            continue
        lines += ["", f"### {TABLES[protocol][1]}", "", header, "|---|---:|---|---|---:|---|---:|---:|---:|---:|:---:|"]
        for c in items:
            ci = f"[{c.ci_low:+.1f}, {c.ci_high:+.1f}]" if math.isfinite(c.ci_low) else "–"
            lines.append(
                f"| {c.task} | {fraction_label(c.fraction)} | {method_label(c.method)} | {replicates_text(c)} | "
                f"{c.difference:+.1f} | {ci} | {_df_text(c.df)} | {_p_text(c.p)} | {_p_text(c.p_images)} | {_p_text(c.p_adjusted)} | {'yes' if c.significant else ''} |"
            )
        lines += render_daggers(plan, items)
    lines += ["", render_variance_components(plan, runs)]
    return "\n".join(lines)


def render_daggers(plan: Plan, items: List[Comparison]) -> List[str]:
    """Per column, the reference's closest baseline (smallest margin) and whether the † holds."""
    wanted = compare.baselines(plan)
    if not wanted or not testable(items):
        return []
    reference = method_label(statistics_settings(plan.suite)["reference"])
    lines = [
        "",
        f"† ({reference} above every baseline: {', '.join(method_label(m) for m in wanted)}), per column:",
        "",
        "| Task | Labels | closest baseline | margin | adjusted p | † |",
        "|---|---:|---|---:|---:|:---:|",
    ]
    daggers = compare.dagger_columns(plan, items)
    for (task, fraction), column in compare.by_column(items).items():
        candidates = [c for c in column if c.method in wanted]
        if not candidates:
            continue
        closest = max(candidates, key=lambda c: (c.difference, c.p_adjusted))
        lines.append(
            f"| {task} | {fraction_label(fraction)} | {method_label(closest.method)} | {-closest.difference:+.1f} | {_p_text(closest.p_adjusted)} | "
            f"{'yes' if (task, fraction) in daggers else ''} |"
        )
    return lines


def _csv(header: List[str], rows: Iterable[List]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _number(value: float, digits: int = 6) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def statistics_csv(comparisons: Dict[str, List[Comparison]]) -> str:
    fields = [f.name for f in dataclasses.fields(Comparison)]
    return _csv(
        fields,
        (
            [_number(v) if isinstance(v, float) else v for v in dataclasses.astuple(c)]
            for items in comparisons.values()
            for c in items
        ),
    )


def per_class_csv(rows: List[Dict]) -> str:
    if not rows:
        return ""
    header = list(rows[0])
    return _csv(header, ([_number(r[k]) if isinstance(r[k], float) else r[k] for k in header] for r in rows))


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
    lines += _header(shared)
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
    plan: Plan,
    records: Iterable[Dict],
    reports_dir: Path,
    pretraining: Optional[Dict[str, Dict]] = None,
    writer=None,
    produces: Sequence[str] = REPORT_FILES,
) -> List[Path]:
    """Every report file of a suite from its records; ``records`` may be the ``ResultStore`` itself, whose stored
    per-image predictions then feed the image-level statistics (CIs, bootstrap and DeLong tests).

    The files are written into a fresh folder next to ``reports_dir`` and swapped in with two renames, so a reader
    (or a run killed while writing) never sees new and old files mixed. Report files of earlier records that these
    records no longer produce (``REPORT_FILES``) are thereby dropped; files of other origin in the folder are kept,
    and so is the per-class CSV when no store is given, since without predictions it cannot be rebuilt. ``writer``
    (default: the image track's files) writes the files into the folder it is given and returns them, ``produces``
    names every file it can write: the CT track passes its own (medssl/report/ct.py)."""
    final = Path(reports_dir)
    _recover_swap(final)
    staging = final.parent / f".{final.name}.writing-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        written = (writer or _write_report_files)(plan, records, staging, pretraining)
        if final.is_dir():
            produced = {p.name for p in written}
            keep = [
                p
                for p in final.iterdir()
                if p.is_file()
                and p.name not in produced
                and (
                    p.name not in produces
                    or (p.name == "statistics_per_class.csv" and not isinstance(records, ResultStore))
                )
            ]
            for path in keep:
                shutil.copy2(path, staging / path.name)
        _swap_in(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [final / p.name for p in written]


def _recover_swap(final: Path) -> None:
    """A run killed between the two renames of :func:`_swap_in` left the old folder aside and none in place: put the
    old one back (it is whole), so that files of other origin kept there are not lost."""
    aside = (
        sorted(final.parent.glob(f".{final.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if final.parent.exists()
        else []
    )
    if aside and not final.exists():
        os.rename(aside[-1], final)
    for leftover in final.parent.glob(f".{final.name}.old-*") if final.parent.exists() else []:
        shutil.rmtree(leftover, ignore_errors=True)


def _swap_in(staging: Path, final: Path) -> None:
    """Replace the folder ``final`` by ``staging``: rename the old one aside, the new one in, delete the old."""
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)


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
        outputs["statistics_per_class.csv"] = per_class_csv(compare.per_class_delong(plan, records, store))
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
