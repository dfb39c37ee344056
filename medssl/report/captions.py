"""The words of the reports: what a cell is over, which test is behind the marks and why a table has none, which
classes a macro AUC leaves out; shared by the tables, statistics.md and index.html."""

from __future__ import annotations

import math
from typing import Dict, List

from medssl.plan.jobs import Plan, evaluation_seeds, task_type
from medssl.report import compare
from medssl.report.compare import Comparison, over_pretraining
from medssl.suite.config import fraction_label, statistics_settings
from methods import method_label

TABLES = {
    "linear": ("table1", "Table 1. Linear probing"),
    "finetune": ("table2", "Table 2. Fine-tuning"),
    "knn": ("table3", "Table 3. Weighted kNN on frozen features"),
}


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
