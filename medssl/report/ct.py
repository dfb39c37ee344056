"""Reports of a CT suite (``track: ct``, medssl/run/ct.py), written to ``reports/<suite>/`` by ``run`` and ``report``.

* ``ct_table.md`` / ``.csv`` / ``.tex``, one table per task: rows FPN3d from scratch, the method's linear probe,
  non-linear probe and fine-tuned FPN (the official README's rows), then the random-init linear and non-linear probes
  (the controls the probes must beat); columns the 13 organs and their mean. A cell is the mean +- sd over the
  row's runs (pretraining seeds x folds x evaluation seeds) of the test Dice, per organ averaged over the test CTs,
  the mean over the 13 organs per CT and then over CTs, with the official convention that an organ absent from a CT
  scores 1 when predicted empty and about 0 otherwise (medssl/evaluate/segment3d.py). Best per column in bold (none where
  every row has the same value).
* ``ct_statistics.md`` / ``.csv``: the ranking the official README reports (fine-tune >= from scratch >
  non-linear probe > linear probe; each probe above the same probe of a random-init FPN), tested over the test CTs:
  per CT its mean Dice over the 13 organs, averaged over the row's runs that tested it; a paired two-sided Wilcoxon
  signed-rank test per comparison, p-values adjusted across the comparisons of a task (``statistics.adjust``, Holm by
  default). The unit is the test CT: the tests are conditional on these pretraining runs (they say nothing about
  another pretraining seed). "≥" holds unless the first row is significantly worse; ">" holds when it is
  significantly better.
* ``ct_organs.png``: per-organ Dice of every row (seaborn bars, sd over runs); ``pretraining.md``: loss per epoch and
  wall time of each pretraining; ``index.html``: all of it on one page.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from datasets.volumes import ORGANS
from medssl.record.store import ResultStore
from medssl.report import figures, stats
from medssl.report.folder import replace_folder
from medssl.run.ct import HEADS, RANDOM_INIT, TRAINED, CTPlan, evaluation_seeds
from methods import method_label

CT_REPORT_FILES = (
    "ct_table.md",
    "ct_table.csv",
    "ct_table.tex",
    "ct_statistics.md",
    "ct_statistics.csv",
    "ct_organs.png",
    "pretraining.md",
)
Row = Tuple[str, str, str]  # (method or random-init, protocol, head)


@dataclasses.dataclass
class RowRuns:
    """The finished runs of one row on one task: per run (pretraining seed, fold, seed) the test values."""

    values: Dict[tuple, float] = dataclasses.field(default_factory=dict)  # mean Dice over organs and CTs
    organs: Dict[tuple, Dict[str, Optional[float]]] = dataclasses.field(default_factory=dict)  # per-organ mean over CTs
    per_ct: Dict[tuple, Dict[str, float]] = dataclasses.field(default_factory=dict)  # case id -> mean Dice over organs

    def ct_means(self) -> Dict[str, float]:
        """Each test CT's mean Dice, averaged over the runs that tested it."""
        pooled: Dict[str, List[float]] = {}
        for cases in self.per_ct.values():
            for case, value in cases.items():
                pooled.setdefault(case, []).append(value)
        return {case: float(np.mean(values)) for case, values in sorted(pooled.items())}


def row_label(row: Row) -> str:

    method, protocol, head = row
    kind = "linear probe" if head == "linear" else "non-linear probe"
    if protocol == "scratch":
        return "FPN3d from scratch"
    if protocol == "random_probe":
        return f"random-init {kind}"
    return f"{method_label(method)} fine-tuned" if protocol == "finetune" else f"{method_label(method)} {kind}"


def rows_of(plan: CTPlan, task: Dict) -> List[Row]:
    """The task's rows in the official README's order, then the random-init controls."""
    protocols = task["protocols"]
    rows: List[Row] = [(RANDOM_INIT, "scratch", "linear")] if "scratch" in protocols else []
    for method in plan.suite["methods"]:
        rows += [(method, protocol, head) for protocol in TRAINED if protocol in protocols for head in HEADS[protocol]]
    if "random_probe" in protocols:
        rows += [(RANDOM_INIT, "random_probe", head) for head in HEADS["random_probe"]]
    return rows


def collect(plan: CTPlan, records: Iterable[Dict], store: Optional[ResultStore]) -> Dict[Tuple[str, Row], RowRuns]:
    """The plan's records by (task, row); per-CT values from the stored predictions when a store is given."""
    wanted = {key: (job, head) for job in plan.eval_jobs for head in job.heads for key in [job.record_key(head)]}
    out: Dict[Tuple[str, Row], RowRuns] = {}
    for record in records:
        if record["key"] not in wanted:
            continue  # another version of the suite's settings
        job, head = wanted[record["key"]]
        runs = out.setdefault((job.task["name"], (job.method, job.protocol, head)), RowRuns())
        runs.values[job.run] = float(record["value"])
        runs.organs[job.run] = record.get("per_class") or {}  # records of older versions may lack it
        if store is not None:
            try:
                predictions = store.load_predictions(record["key"])
                per_ct = np.nanmean(predictions["dice"].astype(np.float64), axis=1)
            except Exception as err:  # noqa: BLE001 - missing or damaged: the row keeps its value, loses its per-CT tests
                print(
                    f"warning: record {record['key']} ({job.describe()} {head}): its predictions cannot be read ({type(err).__name__}); "
                    "its row has no per-CT statistics",
                    file=sys.stderr,
                )
                continue
            runs.per_ct[job.run] = {str(case): float(value) for case, value in zip(predictions["case_ids"], per_ct)}
    return out


def _mean_sd(values: List[float]) -> Tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else math.nan)


def table_cells(runs: RowRuns, organs: List[str]) -> Dict[str, Tuple[float, float]]:
    cells = {organ: _mean_sd([run.get(organ) for run in runs.organs.values()]) for organ in organs}
    cells["mean"] = _mean_sd(list(runs.values.values()))
    return cells


def _text(cell: Tuple[float, float], bold: bool) -> str:
    mean, sd = cell
    if math.isnan(mean):
        return "–"
    body = f"{mean:.3f}" + ("" if math.isnan(sd) else f" ± {sd:.3f}")
    return f"**{body}**" if bold else body


def _best(cells: Dict[Row, Dict[str, Tuple[float, float]]], column: str) -> float:
    """The column's highest mean; NaN (nothing in bold) when every row has the same value, e.g. an organ no row finds."""
    means = [c[column][0] for c in cells.values() if not math.isnan(c[column][0])]
    return max(means) if means and max(means) > min(means) else math.nan


def _runs_phrase(plan: CTPlan, task: Dict) -> str:
    folds = task.get("folds") or []
    seeds = evaluation_seeds(plan.suite)
    parts = [
        f"{len(plan.suite['pretrain']['seeds'])} pretraining seed{'s' if len(plan.suite['pretrain']['seeds']) > 1 else ''}"
    ]
    if folds:
        parts.append(f"{len(folds)} fold{'s' if len(folds) > 1 else ''} of the official split")
    parts.append(f"{len(seeds)} evaluation seed{'s' if len(seeds) > 1 else ''}")
    return " x ".join(parts)


def render_tables(plan: CTPlan, runs: Dict[Tuple[str, Row], RowRuns], organs: List[str]) -> Tuple[str, str, str]:
    md, csv, tex = [], ["task,row,column,mean,sd,runs"], []
    for task in plan.suite["tasks"]:
        rows = [row for row in rows_of(plan, task) if (task["name"], row) in runs]
        if not rows:
            continue
        cells = {row: table_cells(runs[(task["name"], row)], organs) for row in rows}
        columns = organs + ["mean"]
        best = {column: _best(cells, column) for column in columns}
        md += [
            f"### {task['name']}: test Dice per organ ({task['dataset']['name']})",
            "",
            f"Mean ± sd over the runs ({_runs_phrase(plan, task)}) of the test Dice: per organ over the test CTs; Mean = over the 13 organs per CT, "
            "then over CTs. Official convention: an organ absent from a CT scores 1 if predicted empty, about 0 otherwise. Best per column in bold (none where all rows are equal).",
            "",
            "| Row | " + " | ".join(columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        for row in rows:
            md.append(
                f"| {row_label(row)} | "
                + " | ".join(
                    _text(cells[row][c], not math.isnan(cells[row][c][0]) and cells[row][c][0] == best[c])
                    for c in columns
                )
                + " |"
            )
            csv += [
                f"{task['name']},{row_label(row)},{c},{_number(cells[row][c][0])},{_number(cells[row][c][1])},{len(runs[(task['name'], row)].values)}"
                for c in columns
            ]
        md.append("")
        tex += [
            "\\begin{table}",
            f"\\caption{{{_tex(task['name'])}: test Dice per organ, mean $\\pm$ sd over runs; best in bold.}}",
            "\\begin{tabular}{l" + "r" * len(columns) + "}",
            "\\hline",
            "Row & " + " & ".join(_tex(c) for c in columns) + " \\\\",
            "\\hline",
        ]
        for row in rows:
            entries = []
            for c in columns:
                mean, sd = cells[row][c]
                text = "--" if math.isnan(mean) else f"{mean:.3f}" + ("" if math.isnan(sd) else f"$\\pm${sd:.3f}")
                entries.append(f"\\textbf{{{text}}}" if not math.isnan(mean) and mean == best[c] else text)
            tex.append(f"{_tex(row_label(row))} & " + " & ".join(entries) + " \\\\")
        tex += ["\\hline", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(md) + "\n", "\n".join(csv) + "\n", "\n".join(tex) + "\n"


def _tex(text: str) -> str:
    return text.replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"


@dataclasses.dataclass
class RankingTest:
    task: str
    first: Row
    second: Row
    relation: str  # ">" or ">="
    n_cts: int
    difference: float  # mean over paired CTs of first - second
    statistic: float
    p: float
    p_adjusted: float = math.nan
    verdict: str = ""


def ranking_pairs(plan: CTPlan, task: Dict) -> List[Tuple[Row, Row, str]]:
    """The official README's ranking as (first, second, relation) pairs, for the rows the task has."""
    pairs = []
    scratch = (RANDOM_INIT, "scratch", "linear")
    for method in plan.suite["methods"]:
        linear, nonlinear, tuned = (
            (method, "probe", "linear"),
            (method, "probe", "nonlinear"),
            (method, "finetune", "linear"),
        )
        pairs += [
            (tuned, scratch, ">="),
            (scratch, nonlinear, ">"),
            (nonlinear, linear, ">"),
            (linear, (RANDOM_INIT, "random_probe", "linear"), ">"),
            (nonlinear, (RANDOM_INIT, "random_probe", "nonlinear"), ">"),
        ]
    available = set(rows_of(plan, task))
    return [(a, b, relation) for a, b, relation in pairs if a in available and b in available]


def ranking_tests(plan: CTPlan, runs: Dict[Tuple[str, Row], RowRuns]) -> List[RankingTest]:
    settings = plan.suite.get("statistics") or {}
    alpha, adjust = float(settings.get("alpha", 0.05)), settings.get("adjust", "holm")
    tests: List[RankingTest] = []
    for task in plan.suite["tasks"]:
        family = []
        for first, second, relation in ranking_pairs(plan, task):
            a, b = runs.get((task["name"], first)), runs.get((task["name"], second))
            if a is None or b is None or not a.per_ct or not b.per_ct:
                continue
            means_a, means_b = a.ct_means(), b.ct_means()
            cases = sorted(set(means_a) & set(means_b))
            if not cases:
                continue
            x, y = [means_a[c] for c in cases], [means_b[c] for c in cases]
            result = stats.wilcoxon_signed_rank(x, y)
            family.append(
                RankingTest(
                    task["name"],
                    first,
                    second,
                    relation,
                    len(cases),
                    float(np.mean(np.subtract(x, y))),
                    result["statistic"],
                    result["p"],
                )
            )
        for test, adjusted in zip(family, stats.adjust_p_values([t.p for t in family], adjust)):
            test.p_adjusted = float(adjusted)
            significant = adjusted < alpha
            if test.relation == ">=":
                test.verdict = (
                    "holds" if test.difference >= 0 or not significant else "does not hold (significantly lower)"
                )
            elif test.difference > 0:
                test.verdict = "holds" if significant else "direction holds, not significant"
            else:
                test.verdict = "does not hold" + (" (significantly reversed)" if significant else "")
        tests += family
    return tests


def render_statistics(plan: CTPlan, tests: List[RankingTest]) -> Tuple[str, str]:
    settings = plan.suite.get("statistics") or {}
    alpha, adjust = float(settings.get("alpha", 0.05)), settings.get("adjust", "holm")
    if not tests:
        return "", ""
    md = [
        "### The official ranking, tested over test CTs",
        "",
        "Per test CT its mean Dice over the 13 organs, averaged over the row's runs that tested it; paired two-sided Wilcoxon signed-rank test "
        f"per comparison, p adjusted ({'Holm' if adjust == 'holm' else 'Benjamini-Hochberg'}) across each task's comparisons, alpha {alpha:g}. "
        "The unit is the test CT: conditional on these pretraining runs. '≥' holds unless the first row is significantly lower; '>' holds when it is "
        "significantly higher.",
        "",
        "| Task | Comparison | CTs | mean difference (Dice) | W | p | p adjusted | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    csv = ["task,first,relation,second,n_cts,difference,statistic,p,p_adjusted,verdict"]
    for t in tests:
        md.append(
            f"| {t.task} | {row_label(t.first)} {'≥' if t.relation == '>=' else '>'} {row_label(t.second)} | {t.n_cts} | {t.difference:+.3f} | {t.statistic:g} | "
            f"{t.p:.3g} | {t.p_adjusted:.3g} | {t.verdict} |"
        )
        csv.append(
            f"{t.task},{row_label(t.first)},{t.relation},{row_label(t.second)},{t.n_cts},{t.difference:.6f},{t.statistic:g},{t.p:.6g},{t.p_adjusted:.6g},{t.verdict}"
        )
    return "\n".join(md) + "\n", "\n".join(csv) + "\n"


def render_pretraining(plan: CTPlan, pretraining: Dict[str, Dict]) -> str:

    rows = [(job, pretraining[job.key]) for job in plan.pretrain_jobs if job.key in pretraining]
    if not rows:
        return ""
    lines = [
        "### Pretraining",
        "",
        "Mean InfoNCE loss per epoch (first → last) and wall time of each pretraining.",
        "",
        "| Method | corpus | seed | epochs | steps | loss: first → last epoch | wall time (min) |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for job, row in rows:
        epochs = [r for r in row["history"] if r["epoch"] >= 0]
        losses = f"{epochs[0].get('loss', math.nan):.3f} → {epochs[-1].get('loss', math.nan):.3f}" if epochs else "–"
        lines.append(
            f"| {method_label(job.method)} | {job.corpus} | {job.seed} | {len(epochs)} | "
            f"{epochs[-1]['step'] if epochs else 0} | {losses} | {row['wall_time_s'] / 60:.1f} |"
        )
    return "\n".join(lines) + "\n"


def organ_figure(plan: CTPlan, runs: Dict[Tuple[str, Row], RowRuns], organs: List[str], path: Path) -> Optional[Path]:
    """Per-organ Dice of every row of the first task with results, bars = mean, whiskers = sd over runs (seaborn)."""
    import pandas as pd
    import seaborn as sns

    task = next((t for t in plan.suite["tasks"] if any((t["name"], row) in runs for row in rows_of(plan, t))), None)
    if task is None:
        return None
    frame = pd.DataFrame(
        [
            {"organ": organ, "Dice": value, "row": row_label(row)}
            for row in rows_of(plan, task)
            if (task["name"], row) in runs
            for run, values in sorted(runs[(task["name"], row)].organs.items())
            for organ in organs
            for value in [values.get(organ)]
            if value is not None
        ]
    )
    plt = figures._pyplot()
    fig, ax = plt.subplots(figsize=(15, 4.8))
    sns.barplot(data=frame, x="organ", y="Dice", hue="row", errorbar="sd", ax=ax)
    ax.set_ylim(0, 1)
    ax.set_xlabel("")
    ax.set_title(f"{task['name']}: test Dice per organ (mean over test CTs; bars: mean over runs, whiskers: sd)")
    ax.tick_params(axis="x", rotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    figures._save(fig, path)
    plt.close(fig)
    return path


def write_ct_report_files(
    plan: CTPlan, records: Iterable[Dict], reports_dir: Path, pretraining: Optional[Dict[str, Dict]]
) -> List[Path]:
    """Every CT report file into ``reports_dir`` (medssl.report.folder.replace_folder swaps the folder in)."""

    store = records if isinstance(records, ResultStore) else None
    runs = collect(plan, list(records), store)
    organs = list(ORGANS)
    table_md, table_csv, table_tex = render_tables(plan, runs, organs)
    statistics_md, statistics_csv = render_statistics(plan, ranking_tests(plan, runs))
    outputs = {
        "ct_table.md": table_md,
        "ct_table.csv": table_csv,
        "ct_table.tex": table_tex,
        "ct_statistics.md": statistics_md,
        "ct_statistics.csv": statistics_csv,
        "pretraining.md": render_pretraining(plan, pretraining or {}),
    }
    written = []
    for name, text in outputs.items():
        if text.strip():
            (reports_dir / name).write_text(text, encoding="utf-8")
            written.append(reports_dir / name)
    figure = organ_figure(plan, runs, organs, reports_dir / "ct_organs.png")
    if figure is not None:
        written.append(figure)
    written.append(
        figures.write_html(
            plan,
            reports_dir,
            written,
            order=("ct_table.md", "ct_statistics.md", "pretraining.md"),
            figure_files=("ct_organs.png",),
        )
    )
    return written


def write_ct_reports(plan: CTPlan, store: ResultStore, reports_dir: Path) -> List[Path]:

    pretraining = store.pretraining_records()
    return replace_folder(
        reports_dir, lambda folder: write_ct_report_files(plan, store, folder, pretraining), CT_REPORT_FILES
    )
