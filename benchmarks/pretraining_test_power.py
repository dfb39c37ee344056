"""Type-I error and power of the tables' test (the pretraining run as unit) by simulation, next to the test over
test images alone that the marks used before (conditional on one set of pretraining runs).

Each simulated table cell compares methods A and B on one test set of ``n_images`` images. The per-image score of
method m, pretraining run s, evaluation seed e on image i is

    y = mu_m + a_ms + c_mse + w_mi + v_msei,

a_ms ~ N(0, sd_pretraining) the pretraining run's luck, c_mse ~ N(0, sd_evaluation) the evaluation seed's (label
subset, head initialisation), w_mi ~ N(0, sd_image) what method m does well or badly on image i whatever the run
(the test set's sampling variance of a difference), v ~ N(0, sd_noise) the run's own per-image noise. A run's metric
is its mean score (as mean Dice); the image bootstrap resamples the images with the same multiplicities for both
methods (``medssl.stats.bootstrap_weights``) and the comparison is ``medssl.compare.compare_runs``, the reports' own
code. A rejection is p < alpha. Under mu_A = mu_B the rate is the type-I error; with mu_A - mu_B = k sd_pretraining,
the power.

    python benchmarks/pretraining_test_power.py --readme   # prints the table and pastes it into README "Statistics"
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medssl import stats  # noqa: E402
from medssl.compare import CellRuns, compare_runs  # noqa: E402

SETTINGS = {"n_evaluation": 3, "sd_pretraining": 0.03, "sd_evaluation": 0.005, "sd_image": 0.1, "sd_noise": 0.1, "n_images": 200, "resamples": 200}


def _method_runs(rng: np.random.Generator, mu: float, n_pretraining: int, settings: Dict, weights: np.ndarray) -> CellRuns:
    n_images, n_evaluation = settings["n_images"], settings["n_evaluation"]
    stable = rng.normal(0.0, settings["sd_image"], n_images)
    runs = CellRuns()
    for s in range(n_pretraining):
        pretraining_luck = rng.normal(0.0, settings["sd_pretraining"])
        for e in range(n_evaluation):
            scores = mu + pretraining_luck + rng.normal(0.0, settings["sd_evaluation"]) + stable + rng.normal(0.0, settings["sd_noise"], n_images)
            runs.values[(s, e)] = float(scores.mean())
            runs.bootstrap[(s, e)] = weights @ scores / n_images
    return runs


def rejection_rates(n_tables: int, n_pretraining: int, difference: float, alpha: float = 0.05, seed: int = 0, **overrides) -> Dict[str, float]:
    """Share of ``n_tables`` simulated comparisons whose p < alpha: ``pretraining`` (the tables' test) and
    ``images`` (over test images only, runs pooled: conditional on the pretraining runs drawn)."""
    settings = {**SETTINGS, **overrides}
    weights = stats.bootstrap_weights(settings["n_images"], settings["resamples"], seed)
    rng = np.random.default_rng(seed)
    rejected = {"pretraining": 0, "images": 0}
    for _ in range(n_tables):
        a = _method_runs(rng, difference, n_pretraining, settings, weights)
        b = _method_runs(rng, 0.0, n_pretraining, settings, weights)
        result = compare_runs(a, b)
        rejected["pretraining"] += bool(result["p_pretraining"] < alpha)
        rejected["images"] += bool(result["p_images"] < alpha)
    return {name: count / n_tables for name, count in rejected.items()}


def power_table(n_tables: int, pretraining_runs: Sequence[int], multiples: Sequence[float], alpha: float = 0.05) -> str:
    """Markdown: rejection rate of both tests by number of pretraining runs and true difference (in sd_pretraining)."""
    sd = SETTINGS["sd_pretraining"]
    header = "| pretraining runs | " + " | ".join(f"{k:g} sd" if k else "0 (type-I error)" for k in multiples) + " |"
    lines = [f"Rejection rate at alpha {alpha:g} (unadjusted) over {n_tables} simulated comparisons per cell; true difference in units of the "
             f"sd between pretraining runs ({100 * sd:g} points); {SETTINGS['n_evaluation']} evaluation seeds per run (sd "
             f"{100 * SETTINGS['sd_evaluation']:g}), {SETTINGS['n_images']} test images. Each cell: the tables' test (pretraining run "
             f"as unit) / the test over test images alone.", "", header, "|---:|" + "---:|" * len(multiples)]
    for n in pretraining_runs:
        cells = []
        for k in multiples:
            rates = rejection_rates(n_tables, n, k * sd, alpha, seed=n)
            cells.append(f"{rates['pretraining']:.3f} / {rates['images']:.3f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=4000, help="simulated comparisons per cell (default: 4000)")
    parser.add_argument("--readme", action="store_true", help="also paste the table into README.md (pretraining-test-power markers)")
    args = parser.parse_args(argv)
    table = power_table(args.tables, (2, 3, 5, 10), (0, 2, 3, 4, 6))
    print(table)
    if args.readme:
        from readme_results import paste

        command = f"`python benchmarks/pretraining_test_power.py --tables {args.tables} --readme`:"
        return 0 if paste("pretraining-test-power", f"{command}\n\n{table.strip()}") else 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
