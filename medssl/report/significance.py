"""statistics.md, statistics.csv and statistics_per_class.csv: every comparison behind the marks with its test, the †
rule per column, the variance components, and the per-class DeLong tests (descriptive)."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from typing import Dict, Iterable, List, Sequence

import numpy as np

from medssl.plan.jobs import FIXED_RUN, Plan
from medssl.record.store import ResultStore
from medssl.report import compare, stats
from medssl.report.captions import TABLES, no_marks_reason, replicates_text, testable
from medssl.report.cells import table_header
from medssl.report.compare import Comparison
from medssl.suite.config import fraction_label, statistics_settings
from methods import method_label


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
        lines += ["", f"### {title}", ""] + table_header(columns)
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


def per_class_delong(plan: Plan, records, store: ResultStore) -> List[Dict]:
    """DeLong test of every class, for every run the reference shares with another method (long format)."""
    settings = statistics_settings(plan.suite)
    by_key = {r["key"]: r for r in records}
    jobs = {}
    for job in plan.eval_jobs:
        if (
            job.key in by_key
            and by_key[job.key].get("metric") == "macro_auc"
            and (store.predictions_dir / f"{job.key}.npz").exists()
        ):
            jobs[(job.pretrain.method, job.task["name"], job.protocol, job.fraction, *job.run)] = job.key
    reference_seeds = sorted({k[4] for k in jobs if k[0] == settings["reference"]})
    pairs = []
    for (method, task, protocol, fraction, pretrain_seed, seed), key in sorted(jobs.items()):
        # an external encoder (no pretraining seed) is compared with each pretraining run of the reference
        for reference_seed in reference_seeds if pretrain_seed == FIXED_RUN else [pretrain_seed]:
            reference_key = jobs.get((settings["reference"], task, protocol, fraction, reference_seed, seed))
            if method != settings["reference"] and reference_key is not None:
                pairs.append((method, task, protocol, fraction, reference_seed, seed, key, reference_key))
    rows: List[Dict] = []
    for method, task, protocol, fraction, pretrain_seed, seed, key, reference_key in pairs:
        try:
            mine, theirs = store.load_predictions(key), store.load_predictions(reference_key)
        except Exception:  # noqa: BLE001 - a damaged predictions file: named by record_problems
            continue
        if "labels" not in mine or not np.array_equal(mine["test_indices"], theirs["test_indices"]):
            continue
        class_names = (
            [str(name) for name in mine["class_names"]]
            if "class_names" in mine
            else [str(k) for k in range(mine["labels"].shape[1])]
        )
        block = []
        for k in range(mine["labels"].shape[1]):
            column = mine["labels"][:, k]
            if column.min() == column.max():
                continue
            test = stats.delong_test(column, theirs["scores"][:, k], mine["scores"][:, k])
            block.append(
                {
                    "protocol": protocol,
                    "task": task,
                    "fraction": fraction,
                    "pretrain_seed": pretrain_seed,
                    "seed": seed,
                    "method": settings["reference"],
                    "versus": method,
                    "class": class_names[k],
                    "auc_method": test["auc_a"],
                    "auc_versus": test["auc_b"],
                    "difference": test["difference"],
                    "z": test["z"],
                    "p": test["p"],
                }
            )
        for row, p in zip(block, stats.adjust_p_values([r["p"] for r in block], "bh")):
            row["p_bh_over_classes"] = float(p)
        rows += block
    return rows
