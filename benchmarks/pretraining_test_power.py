"""Size and power of the tables' test by simulation, next to the alternatives that were rejected, the measured case
against pairing runs by pretraining seed, and the rate of false † marks.

Each simulated table cell compares rows on one test set of ``n_images`` images. The per-image score of method m,
pretraining run s, evaluation seed e on image i is

    y = mu_m + a_ms + c_mse + w_mi + v_msei,

a_ms ~ N(0, sd_pretraining) the pretraining run's luck, c_mse ~ N(0, sd_evaluation) the evaluation seed's (label
subset, head initialisation), w_mi ~ N(0, sd_image) what method m does well or badly on image i whatever the run
(the test set's sampling variance of a difference), v ~ N(0, sd_noise) the run's own per-image noise. A fixed-weight
row (an encoder brought from a file) has no a_ms: its replicates are its evaluation seeds. A run's metric is its
mean score (as mean Dice); the image bootstrap resamples the images with the same multiplicities for every row
(``medssl.report.stats.bootstrap_weights``) and the comparison is ``medssl.report.compare.compare_runs``, the reports' own code.
A rejection is p < alpha before any multiplicity adjustment. Under mu_A = mu_B the rate is the type-I error; with
mu_A - mu_B = k sd (sd of one replicate of the first row: sd_pretraining for a trained row), the power.

    python benchmarks/pretraining_test_power.py --readme   # prints the tables and pastes them into docs/statistics.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
from scipy import stats as scipy_stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medssl.plan.jobs import FIXED_RUN  # noqa: E402
from medssl.report import stats  # noqa: E402
from medssl.report.compare import CellRuns, compare_runs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "n_evaluation": 3,
    "sd_pretraining": 0.03,
    "sd_evaluation": 0.005,
    "sd_image": 0.1,
    "sd_noise": 0.1,
    "n_images": 200,
    "resamples": 200,
}
# Against a fixed-weight row the evaluation seeds carry the randomness (the review's case of issue 30: pretraining sd
# 0.5, evaluation sd 2 points): there the fixed row's own spread matters most.
FIXED_SETTINGS = {"sd_pretraining": 0.005, "sd_evaluation": 0.02}
NO_IMAGE_TERM = {"sd_image": 0.0, "sd_noise": 0.001}


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A pair of rows: ``sd_scale`` multiplies the first row's pretraining sd; ``first_fixed``/``second_fixed`` make a
    row a fixed-weight encoder; ``overrides`` replace SETTINGS."""

    name: str
    sd_scale: float = 1.0
    first_fixed: bool = False
    second_fixed: bool = False
    overrides: tuple = ()

    def settings(self) -> Dict:
        return {**SETTINGS, **dict(self.overrides)}

    def unit(self) -> float:
        """The sd of one replicate of the first row: the difference's unit in the power columns."""
        s = self.settings()
        if self.first_fixed:
            return s["sd_evaluation"]
        return math.sqrt((self.sd_scale * s["sd_pretraining"]) ** 2 + s["sd_evaluation"] ** 2 / s["n_evaluation"])


SCENARIOS = {
    "equal": Scenario("trained vs trained, equal sd"),
    "3x": Scenario("trained vs trained, first at 3x sd", sd_scale=3.0),
    "10x": Scenario("trained vs trained, first at 10x sd", sd_scale=10.0),
    "fixed": Scenario("trained vs fixed weights", second_fixed=True, overrides=tuple(FIXED_SETTINGS.items())),
    "two fixed": Scenario(
        "fixed vs fixed weights", first_fixed=True, second_fixed=True, overrides=tuple(FIXED_SETTINGS.items())
    ),
    "fixed, no image term": Scenario(
        "trained vs fixed weights, no image term",
        second_fixed=True,
        overrides=tuple({**FIXED_SETTINGS, **NO_IMAGE_TERM}.items()),
    ),
    "equal, no image term": Scenario(
        "trained vs trained, equal sd, no image term", overrides=tuple(NO_IMAGE_TERM.items())
    ),
    "3x, no image term": Scenario(
        "trained vs trained, first at 3x sd, no image term", sd_scale=3.0, overrides=tuple(NO_IMAGE_TERM.items())
    ),
}


def simulated_row(
    rng: np.random.Generator,
    mu: float,
    n_replicates: int,
    settings: Dict,
    weights: np.ndarray,
    sd_scale: float = 1.0,
    fixed: bool = False,
) -> CellRuns:
    """One row's cell: ``n_replicates`` pretraining runs of ``n_evaluation`` evaluation seeds each, or (``fixed``)
    one encoder evaluated with ``n_replicates`` evaluation seeds."""
    n_images = settings["n_images"]
    stable = rng.normal(0.0, settings["sd_image"], n_images)
    runs = CellRuns()
    layout = (
        [(FIXED_RUN, e) for e in range(n_replicates)]
        if fixed
        else [(s, e) for s in range(n_replicates) for e in range(settings["n_evaluation"])]
    )
    luck = {
        s: 0.0 if fixed else rng.normal(0.0, sd_scale * settings["sd_pretraining"]) for s in {run[0] for run in layout}
    }
    for run in layout:
        scores = (
            mu
            + luck[run[0]]
            + rng.normal(0.0, settings["sd_evaluation"])
            + stable
            + rng.normal(0.0, settings["sd_noise"], n_images)
        )
        runs.values[run] = float(scores.mean())
        runs.bootstrap[run] = weights @ scores / n_images
    return runs


def _pair(rng, scenario: Scenario, n_replicates: int, multiple: float, weights) -> tuple:
    """The two rows of one simulated cell. A fixed row beside a trained one is evaluated with the suite's
    ``n_evaluation`` seeds; two fixed rows with ``n_replicates`` seeds each."""
    settings = scenario.settings()
    seeds_of_fixed = n_replicates if scenario.first_fixed and scenario.second_fixed else settings["n_evaluation"]
    sizes = [seeds_of_fixed if fixed else n_replicates for fixed in (scenario.first_fixed, scenario.second_fixed)]
    first = simulated_row(
        rng, multiple * scenario.unit(), sizes[0], settings, weights, scenario.sd_scale, scenario.first_fixed
    )
    second = simulated_row(rng, 0.0, sizes[1], settings, weights, 1.0, scenario.second_fixed)
    return first, second


def rejection_rate(
    n_tables: int,
    scenario: Scenario,
    n_replicates: int,
    multiple: float,
    alpha: float = 0.05,
    seed: int = 0,
    test: Callable[[CellRuns, CellRuns], float] = lambda a, b: compare_runs(a, b)["p"],
) -> float:
    """Share of ``n_tables`` simulated pairs of rows whose ``test`` p-value is below ``alpha`` (default: the tables'
    test); the first row is ``multiple`` replicate sds above the second."""
    settings = scenario.settings()
    weights = stats.bootstrap_weights(settings["n_images"], settings["resamples"], seed)
    rng = np.random.default_rng([seed, n_replicates])
    return (
        sum(bool(test(*_pair(rng, scenario, n_replicates, multiple, weights)) < alpha) for _ in range(n_tables))
        / n_tables
    )


# ------------------------------------------------------------------------------ the alternatives, for the record
def paired_by_seed_p(a: CellRuns, b: CellRuns) -> float:
    """The marks' test before issue 30: per pretraining seed the difference of the two rows, a one-sample t over
    those differences with runs - 1 df, plus the image variance."""
    seeds = sorted({r[0] for r in a.values} & {r[0] for r in b.values})
    differences = [np.mean([a.values[r] - b.values[r] for r in a.values if r[0] == s]) for s in seeds]
    all_seeds = a.evaluation_seeds()
    return stats.pretraining_run_test(differences, a.resampled_mean(all_seeds) - b.resampled_mean(all_seeds))["p"]


def _welch_statistic(a: CellRuns, b: CellRuns) -> tuple:
    """(difference, standard error, n_a, n_b) of the tables' test, for the alternatives that differ in df only."""
    seeds = a.evaluation_seeds() & b.evaluation_seeds()
    x, y = np.array(a.replicate_values(seeds)), np.array(b.replicate_values(seeds))
    image = stats.image_variance(a.resampled_mean(seeds) - b.resampled_mean(seeds))
    return x.mean() - y.mean(), math.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y) + image), len(x), len(y)


def student_p(a: CellRuns, b: CellRuns) -> float:
    """Student's two-sample t: the tables' standard error, n_a + n_b - 2 df (equal to Welch's where the two rows'
    replicate variances agree, and too many df where they do not)."""
    difference, se, n_a, n_b = _welch_statistic(a, b)
    return float(2 * scipy_stats.t.sf(abs(difference) / se, n_a + n_b - 2))


def hsu_p(a: CellRuns, b: CellRuns) -> float:
    """Welch's statistic against Hsu's conservative min(n_a, n_b) - 1 df (conservative at any variance ratio)."""
    difference, se, n_a, n_b = _welch_statistic(a, b)
    return float(2 * scipy_stats.t.sf(abs(difference) / se, min(n_a, n_b) - 1))


def pooled_rate(
    n_tables: int, n_replicates: int, sd_scale: float, n_methods: int = 4, alpha: float = 0.05, seed: int = 0
) -> float:
    """Type-I error of a between-run variance pooled over a column's ``n_methods`` (ANOVA error term, df = runs -
    methods), the first method's sd ``sd_scale`` times the others', for its comparison with the second."""
    settings = SETTINGS
    weights = stats.bootstrap_weights(settings["n_images"], settings["resamples"], seed)
    rng = np.random.default_rng([seed, n_replicates, n_methods])
    rejected = 0
    for _ in range(n_tables):
        rows = [
            simulated_row(rng, 0.0, n_replicates, settings, weights, sd_scale if m == 0 else 1.0)
            for m in range(n_methods)
        ]
        seeds = rows[0].evaluation_seeds()
        replicates = [np.array(r.replicate_values(seeds)) for r in rows]
        pooled = np.mean([v.var(ddof=1) for v in replicates])
        image = stats.image_variance(rows[0].resampled_mean(seeds) - rows[1].resampled_mean(seeds))
        se = math.sqrt(pooled * 2 / n_replicates + image)
        rejected += bool(
            2 * scipy_stats.t.sf(abs(replicates[0].mean() - replicates[1].mean()) / se, n_methods * (n_replicates - 1))
            < alpha
        )
    return rejected / n_tables


def dagger_rate(
    n_tables: int, n_replicates: int, rule: str, n_baselines: int = 6, alpha: float = 0.05, seed: int = 0
) -> float:
    """Rate of a † on the reference's row when the reference and ``n_baselines`` baselines are all equal, before any
    adjustment. ``best by test mean``: the rule before issue 30 (the baseline with the highest test mean, one test
    against it, either direction); ``every baseline``: the tables' rule (the reference significantly above each)."""
    settings = SETTINGS
    weights = stats.bootstrap_weights(settings["n_images"], settings["resamples"], seed)
    rng = np.random.default_rng([seed, n_replicates, n_baselines])
    marked = 0
    for _ in range(n_tables):
        reference = simulated_row(rng, 0.0, n_replicates, settings, weights)
        rows = [simulated_row(rng, 0.0, n_replicates, settings, weights) for _ in range(n_baselines)]
        if rule == "best by test mean":
            best = max(rows, key=lambda r: r.mean)
            marked += bool(compare_runs(reference, best)["p"] < alpha)
        else:
            results = [compare_runs(reference, r) for r in rows]
            marked += all(r["p"] < alpha and r["difference"] > 0 for r in results)
    return marked / n_tables


# -------------------------------------------------------------------------------- pairing by seed, from records
def seed_effect(records_path: Path) -> Dict[str, float]:
    """Two-way ANOVA (method x pretraining seed, one run mean per pair) of each column of a multi-seed suite's
    records: F of the seed effect shared by the methods (what pairing by seed would remove) against the residual,
    summed over columns. F near 1: pairing buys nothing and costs (methods - 1) x (runs - 1) df of error."""
    cells: Dict[tuple, List[float]] = {}
    for line in records_path.read_text().splitlines():
        r = json.loads(line)
        seed = r["pretrain_config"]["seed"]
        cells.setdefault((r["protocol"], r["task"], r["fraction"], r["method"], seed), []).append(100 * r["value"])
    ss_seed = ss_error = df_seed = df_error = 0.0
    for column in sorted({k[:3] for k in cells}):
        methods = sorted({k[3] for k in cells if k[:3] == column})
        seeds = sorted({k[4] for k in cells if k[:3] == column})
        if not all((*column, m, s) in cells for m in methods for s in seeds):
            continue
        grid = np.array([[np.mean(cells[(*column, m, s)]) for s in seeds] for m in methods])
        residual = grid - grid.mean(axis=1, keepdims=True) - grid.mean(axis=0, keepdims=True) + grid.mean()
        ss_seed += len(methods) * float(((grid.mean(axis=0) - grid.mean()) ** 2).sum())
        ss_error += float((residual**2).sum())
        df_seed, df_error = df_seed + len(seeds) - 1, df_error + (len(methods) - 1) * (len(seeds) - 1)
    f = (ss_seed / df_seed) / (ss_error / df_error)
    return {"F": f, "df_seed": df_seed, "df_error": df_error, "p": float(scipy_stats.f.sf(f, df_seed, df_error))}


# ----------------------------------------------------------------------------------------------------- tables
def _rate_text(rate: float) -> str:
    return f"{rate:.3f}"


def power_table(
    n_tables: int, replicates: Sequence[int], multiples: Sequence[float], scenarios: Sequence[str], alpha: float = 0.05
) -> str:
    header = "| rows | runs | " + " | ".join(f"{k:g} sd" if k else "0 (type-I error)" for k in multiples) + " |"
    lines = [
        f"Rejection rate of the tables' test at alpha {alpha:g} (unadjusted) over {n_tables} simulated comparisons per cell "
        f"(Monte-Carlo sd at 0.05: {math.sqrt(alpha * (1 - alpha) / n_tables):.4f}); true difference in sds of one replicate of the "
        f"first row; {SETTINGS['n_evaluation']} evaluation seeds per run, {SETTINGS['n_images']} test images, "
        f"sd between pretraining runs {100 * SETTINGS['sd_pretraining']:g} points, between evaluation seeds "
        f"{100 * SETTINGS['sd_evaluation']:g} (against fixed weights {100 * FIXED_SETTINGS['sd_pretraining']:g} and "
        f"{100 * FIXED_SETTINGS['sd_evaluation']:g}; a fixed row is evaluated with the suite's evaluation seeds, two fixed rows with 'runs' seeds each).",
        "",
        header,
        "|---|---:|" + "---:|" * len(multiples),
    ]
    for name in scenarios:
        scenario = SCENARIOS[name]
        for n in replicates:
            rates = [rejection_rate(n_tables, scenario, n, k, alpha, seed=7) for k in multiples]
            lines.append(f"| {scenario.name} | {n} | " + " | ".join(_rate_text(r) for r in rates) + " |")
    return "\n".join(lines) + "\n"


def alternatives_table(n_tables: int, replicates: Sequence[int], alpha: float = 0.05) -> str:
    """Type-I error and power of the rejected alternatives next to the tables' test."""
    rows = [
        (
            "Welch over runs (the tables' test)",
            lambda s, n, k: rejection_rate(n_tables, SCENARIOS[s], n, k, alpha, seed=11),
        ),
        (
            "paired by pretraining seed, runs - 1 df (before issue 30)",
            lambda s, n, k: rejection_rate(n_tables, SCENARIOS[s], n, k, alpha, seed=11, test=paired_by_seed_p),
        ),
        (
            "Student, runs_a + runs_b - 2 df",
            lambda s, n, k: rejection_rate(n_tables, SCENARIOS[s], n, k, alpha, seed=11, test=student_p),
        ),
        (
            "variance pooled over the column's 4 methods",
            lambda s, n, k: (
                pooled_rate(n_tables, n, SCENARIOS[s].sd_scale, alpha=alpha, seed=11) if k == 0 else math.nan
            ),
        ),
    ]
    columns = [("equal", 0.0), ("3x", 0.0), ("10x", 0.0), ("equal", 4.0)]
    header = (
        "| test | runs | type-I, equal sd | type-I, one at 3x sd | type-I, one at 10x sd | power at 4 sd, equal sd |"
    )
    lines = [
        f"The alternatives, same simulation ({n_tables} comparisons per cell, unadjusted alpha {alpha:g}):",
        "",
        header,
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, rate in rows:
        for n in replicates:
            values = [rate(s, n, k) for s, k in columns]
            lines.append(
                f"| {label} | {n} | " + " | ".join("–" if math.isnan(v) else _rate_text(v) for v in values) + " |"
            )
    return "\n".join(lines) + "\n"


def fixed_alternatives_table(n_tables: int, replicates: Sequence[int], alpha: float = 0.05) -> str:
    """Against a fixed-weight row: Welch-Satterthwaite's df (the tables') or Hsu's conservative min(n) - 1."""
    columns = [("fixed", 0.0), ("fixed, no image term", 0.0), ("fixed", 4.0)]
    lines = [
        f"Against fixed weights, Welch-Satterthwaite df or Hsu's conservative min(n) - 1 ({n_tables} comparisons per cell):",
        "",
        "| df | runs | type-I | type-I, no image term | power at 4 sd |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, test in (
        ("Welch-Satterthwaite (the tables' test)", lambda a, b: compare_runs(a, b)["p"]),
        ("Hsu, min(n) - 1", hsu_p),
    ):
        for n in replicates:
            rates = [rejection_rate(n_tables, SCENARIOS[s], n, k, alpha, seed=13, test=test) for s, k in columns]
            lines.append(f"| {label} | {n} | " + " | ".join(_rate_text(r) for r in rates) + " |")
    return "\n".join(lines) + "\n"


def dagger_table(n_tables: int, replicates: Sequence[int], alpha: float = 0.05) -> str:
    lines = [
        f"† on the reference's row when the reference and six baselines are equal, before adjustment ({n_tables} simulated columns):",
        "",
        "| rule | " + " | ".join(f"{n} runs" for n in replicates) + " |",
        "|---|" + "---:|" * len(replicates),
    ]
    for rule in ("best by test mean", "every baseline"):
        lines.append(
            f"| {rule} | "
            + " | ".join(_rate_text(dagger_rate(n_tables, n, rule, alpha=alpha)) for n in replicates)
            + " |"
        )
    return "\n".join(lines) + "\n"


def seed_effect_text(records_path: Path) -> str:
    result = seed_effect(records_path)
    return (
        f"Pairing by pretraining seed, measured on `{records_path.relative_to(ROOT)}` (two-way ANOVA method x seed of each "
        f"column's run means, summed over columns): seed effect shared by the methods F = {result['F']:.2f} on "
        f"{result['df_seed']:.0f} and {result['df_error']:.0f} df (p = {result['p']:.2f}).\n"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=4000, help="simulated comparisons per cell (default: 4000)")
    parser.add_argument(
        "--records",
        type=Path,
        default=ROOT / "results" / "quick-seeds" / "records.jsonl",
        help="a multi-seed suite's records for the seed-pairing check",
    )
    parser.add_argument(
        "--readme", action="store_true", help="also paste the tables into README.md (pretraining-test-power markers)"
    )
    args = parser.parse_args(argv)
    runs = (2, 3, 5)
    text = "\n".join(
        [
            power_table(args.tables, runs, (0, 2, 3, 4, 6), ("equal", "3x", "fixed")),
            f"Type-I error in further cases, same settings, {5 * args.tables} simulated comparisons per cell (Monte-Carlo sd at 0.05: "
            f"{math.sqrt(0.05 * 0.95 / (5 * args.tables)):.4f}):\n\n"
            + power_table(
                5 * args.tables,
                runs,
                (0,),
                ("10x", "two fixed", "fixed, no image term", "equal, no image term", "3x, no image term"),
            ).split("\n", 2)[2],
            alternatives_table(args.tables, runs),
            fixed_alternatives_table(args.tables, runs),
            dagger_table(args.tables, runs),
            seed_effect_text(args.records),
        ]
    )
    print(text)
    if args.readme:
        from readme_results import paste

        command = f"`python benchmarks/pretraining_test_power.py --tables {args.tables} --readme`:"
        return 0 if paste("pretraining-test-power", f"{command}\n\n{text.strip()}") else 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
