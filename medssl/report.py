"""Table 1 (linear probing) and Table 2 (fine-tuning) in the CoBooM paper's layout, from stored records alone.

Rows are methods in suite order, columns are task x label fraction; a cell is mean +- sd (sample sd, ddof=1)
over seeds of the metric in percent, with the number of seeds when it differs from the suite's. The best mean
of each column (at the displayed precision, so ties are all bold) is bold. Output is deterministic: the same
records give byte-identical files.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np

from medssl.config import fraction_label
from medssl.plan import Plan, evaluation_seeds
from methods import REGISTRY

TABLES = {"linear": ("table1", "Table 1. Linear probing"), "finetune": ("table2", "Table 2. Fine-tuning")}


def method_label(name: str) -> str:
    entry = REGISTRY.get(name)
    return entry.label if entry is not None else name


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def aggregate(plan: Plan, records: Iterable[Dict]) -> Dict[tuple, Dict[tuple, float]]:
    """(method, task, protocol, fraction) -> {(pretrain seed, seed): metric} of the plan's finished jobs."""
    by_key = {r["key"]: r for r in records}
    cells: Dict[tuple, Dict[tuple, float]] = {}
    for job in plan.eval_jobs:
        record = by_key.get(job.key)
        if record is not None:
            cells.setdefault((job.pretrain.method, job.task["name"], job.protocol, job.fraction), {})[(job.pretrain.seed, job.seed)] = float(record["value"])
    return cells


def _columns(plan: Plan, protocol: str) -> List[tuple]:
    return [(t["name"], float(f)) for t in plan.suite["tasks"] if protocol in t["protocols"] for f in t["fractions"]]


def _header(columns: List[tuple]) -> List[str]:
    """Markdown header and alignment rows of a method x (task, fraction) table."""
    return ["| Method | " + " | ".join(f"{task} {fraction_label(f)}" for task, f in columns) + " |", "|---|" + "---:|" * len(columns)]


def table_rows(plan: Plan, cells: Dict[tuple, Dict[tuple, float]], protocol: str) -> List[Dict]:
    rows = []
    for method in plan.suite["methods"]:
        for task, fraction in _columns(plan, protocol):
            values = list(cells.get((method, task, protocol, fraction), {}).values())
            mean = float(np.mean(values)) * 100 if values else math.nan
            sd = float(np.std(values, ddof=1)) * 100 if len(values) > 1 else math.nan
            rows.append({"method": method, "label": method_label(method), "task": task, "fraction": fraction, "n": len(values), "mean": mean, "sd": sd})
    best: Dict[tuple, float] = {}
    for row in rows:
        if row["n"]:
            col = (row["task"], row["fraction"])
            best[col] = max(best.get(col, -math.inf), round(row["mean"], 1))
    for row in rows:
        row["best"] = bool(row["n"]) and round(row["mean"], 1) == best.get((row["task"], row["fraction"]))
    return rows


def render_markdown(plan: Plan, rows: List[Dict], protocol: str) -> str:
    columns = _columns(plan, protocol)
    n_seeds = len(evaluation_seeds(plan.suite, protocol)) * len(plan.suite["pretrain"]["seeds"])
    lookup = {(r["method"], r["task"], r["fraction"]): r for r in rows}
    title = TABLES[protocol][1]
    lines = [f"{title} — suite `{plan.suite['name']}`: test macro AUC (%), mean ± sd over {n_seeds} seeds; best per column in bold.", ""]
    lines += _header(columns)
    for method in plan.suite["methods"]:
        cells = []
        for task, fraction in columns:
            r = lookup[(method, task, fraction)]
            if not r["n"]:
                cells.append("–")
                continue
            text = f"{r['mean']:.1f}" + (f" ± {r['sd']:.1f}" if r["n"] > 1 else "") + (f" (n={r['n']})" if r["n"] != n_seeds else "")
            cells.append(f"**{text}**" if r["best"] else text)
        lines.append(f"| {method_label(method)} | " + " | ".join(cells) + " |")
    missing = sum(1 for r in rows if not r["n"])
    if missing:
        lines += ["", f"– : {missing} cells have no finished result yet."]
    exact_probe = protocol == "linear" and plan.suite["evaluation"]["linear"].get("solver", "lbfgs") == "lbfgs"
    if exact_probe and any(fraction == 100 for _, fraction in columns) and len(plan.suite["pretrain"]["seeds"]) == 1:
        lines += ["", "At 100 % labels every seed trains on the same images and the probe is fitted exactly, so the sd is 0 there."]
    return "\n".join(lines) + "\n"


def render_csv(rows: List[Dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "label", "task", "fraction", "n", "mean", "sd", "best"])
    for r in rows:
        writer.writerow([r["method"], r["label"], r["task"], f"{r['fraction']:g}", r["n"], "" if math.isnan(r["mean"]) else f"{r['mean']:.4f}", "" if math.isnan(r["sd"]) else f"{r['sd']:.4f}", int(r["best"])])
    return out.getvalue()


def render_random_init_margins(plan: Plan, cells: Dict[tuple, Dict[tuple, float]], reference: str = "supervised") -> str:
    """Linear-probe gain of each pretrained encoder over the randomly initialised frozen encoder, per column.

    Values are paired by seed (same label subset, same head initialisation); the sd is over those differences.
    """
    if reference not in plan.suite["methods"] or not _columns(plan, "linear"):
        return ""
    columns = _columns(plan, "linear")
    lines = [f"Linear probing: gain over the randomly initialised frozen encoder ({method_label(reference)}), macro AUC points, mean ± sd of per-seed differences.", ""]
    lines += _header(columns)
    for method in plan.suite["methods"]:
        if method == reference:
            continue
        out = []
        for task, fraction in columns:
            ours, base = cells.get((method, task, "linear", fraction), {}), cells.get((reference, task, "linear", fraction), {})
            paired = sorted(set(ours) & set(base))
            n = len(paired)
            if n == 0:
                out.append("–")
                continue
            diff = np.array([ours[k] - base[k] for k in paired]) * 100
            out.append(f"{diff.mean():+.1f}" + (f" ± {diff.std(ddof=1):.1f}" if n > 1 else ""))
        lines.append(f"| {method_label(method)} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def render_pretraining(plan: Plan, pretraining: Dict[str, Dict]) -> str:
    """Per pretraining: epochs, final loss, wall time, the learning-signal probe over training (if monitored) and,
    for codebook methods, codebook usage in the last epoch."""
    rows = [(job, pretraining[job.key]) for job in plan.pretrain_jobs if job.key in pretraining and job.trains]
    if not rows:
        return ""
    lines = [
        "Pretraining: final-epoch loss and diagnostics. Probe = validation macro AUC (%) of the learning-signal monitor "
        "(medssl/monitor.py) at initialisation and after each monitored epoch; rank = effective rank (centred RankMe) of "
        "the same validation features, low when the representation has collapsed onto few directions; codebook "
        "perplexity = exp(entropy of code usage); dead = share of codes unused in the epoch.",
        "",
        "| Method | epochs | steps | final loss | wall time (min) | probe: init → monitored epochs | rank: init → monitored epochs | codebook perplexity | dead codes |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for job, row in rows:
        epochs = [r for r in row["history"] if r["epoch"] >= 0]
        last = epochs[-1] if epochs else {}
        probes = " → ".join(f"{100 * r['probe_auc']:.1f}" for r in row["history"] if "probe_auc" in r) or "–"
        ranks = " → ".join(f"{r['feature_rank']:.0f}" for r in row["history"] if "feature_rank" in r) or "–"
        size = job.config["params"].get("codebook_size")
        perplexity = f"{last['codebook_perplexity']:.1f} / {size}" if "codebook_perplexity" in last else "–"
        dead = f"{100 * last['codebook_dead_share']:.0f}%" if "codebook_dead_share" in last else "–"
        lines.append(f"| {method_label(job.method)} | {len(epochs)} | {last.get('step', 0)} | {last.get('loss', math.nan):.4f} | {row['wall_time_s'] / 60:.1f} | {probes} | {ranks} | {perplexity} | {dead} |")
    return "\n".join(lines) + "\n"


def write_reports(plan: Plan, records: Iterable[Dict], reports_dir: Path, pretraining: Optional[Dict[str, Dict]] = None) -> List[Path]:
    records = list(records)
    cells = aggregate(plan, records)
    written = []
    for name, text in (("random_init_margins.md", render_random_init_margins(plan, cells)), ("pretraining.md", render_pretraining(plan, pretraining or {}))):
        if text:
            _atomic_write(Path(reports_dir) / name, text)
            written.append(Path(reports_dir) / name)
    for protocol, (stem, _) in TABLES.items():
        if not _columns(plan, protocol):
            continue
        rows = table_rows(plan, cells, protocol)
        for suffix, text in ((".md", render_markdown(plan, rows, protocol)), (".csv", render_csv(rows))):
            path = Path(reports_dir) / f"{stem}{suffix}"
            _atomic_write(path, text)
            written.append(path)
    return written
