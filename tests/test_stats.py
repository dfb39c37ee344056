"""Statistics against the reference values of ../shared/specs/stats.md (cases D1, T1-T3, the four-image Dice case)."""

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score

from medssl.evaluate.segment2d import segmentation_metrics
from medssl.report import stats

D1_LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
D1_S1 = np.array([0.9, 0.8, 0.7, 0.4, 0.6, 0.4, 0.3, 0.2, 0.1, 0.1])
D1_S2 = np.array([0.7, 0.9, 0.4, 0.5, 0.8, 0.2, 0.5, 0.3, 0.2, 0.1])


def test_delong_matches_the_exact_case_d1():
    auc, v10, v01 = stats.delong_placements(D1_LABELS, np.stack([D1_S1, D1_S2]))
    assert auc.tolist() == pytest.approx([15 / 16, 13 / 16], abs=1e-15)
    assert v10[0].tolist() == pytest.approx([1, 1, 1, 0.75], abs=1e-15)
    assert v01[0].tolist() == pytest.approx([0.75, 0.875, 1, 1, 1, 1], abs=1e-15)
    _, cov = stats.delong_covariance(D1_LABELS, np.stack([D1_S1, D1_S2]))
    for (r, s), exact in {(0, 0): Fraction(11, 1920), (1, 1): Fraction(371, 17280), (0, 1): Fraction(1, 192)}.items():
        assert cov[r, s] == pytest.approx(float(exact), abs=1e-15)
    test = stats.delong_test(D1_LABELS, D1_S1, D1_S2)
    assert test["z"] == pytest.approx(math.sqrt(27 / 29), abs=1e-12)
    assert test["p"] == pytest.approx(0.3345942595854855, abs=1e-12)
    sd = math.sqrt(29 / 1728)
    assert test["ci_low"] == pytest.approx(0.125 - 1.959963984540054 * sd, abs=1e-9)


def test_delong_auc_equals_sklearn_with_ties_and_conventions():
    rng = np.random.default_rng(3)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random((3, 300)) + 0.4 * labels, 1)  # rounding makes many ties
    auc, _ = stats.delong_covariance(labels, scores)
    assert auc == pytest.approx([roc_auc_score(labels, s) for s in scores], abs=1e-12)
    same = stats.delong_test(labels, scores[0], scores[0])
    assert same["z"] == 0 and same["p"] == 1  # pROC: zero difference with zero variance is p = 1, not NaN
    perfect = stats.delong_ci(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.2, 0.1]))
    assert perfect == {"auc": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    wide = stats.delong_ci(D1_LABELS, D1_S1)
    assert wide["ci_high"] == 1.0 and wide["ci_low"] < 15 / 16  # clipped to [0, 1]
    with pytest.raises(ValueError, match="positives and negatives"):
        stats.delong_placements(np.zeros(5), np.ones(5))


def test_delong_variance_matches_monte_carlo():
    # The spec's Monte-Carlo check: 7 positives ~N(0.5, 1), 14 negatives ~N(-0.5, 1).
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(7), np.zeros(14)]
    aucs, variances = [], []
    for _ in range(4000):
        scores = np.r_[rng.normal(0.5, 1, 7), rng.normal(-0.5, 1, 14)]
        auc, cov = stats.delong_covariance(labels, scores)
        aucs.append(auc[0])
        variances.append(cov[0, 0])
    assert np.mean(variances) == pytest.approx(np.var(aucs), rel=0.1)


def test_paired_t_test_case_t1():
    a = [0.612, 0.605, 0.618, 0.609, 0.615]
    b = [0.598, 0.601, 0.603, 0.596, 0.607]
    result = stats.paired_t_test(a, b)
    assert result["t"] == pytest.approx(5.184165895963049, abs=1e-9)
    assert result["df"] == 4 and result["p"] == pytest.approx(0.006587412545490016, abs=1e-12)
    assert result["difference"] == pytest.approx(0.0108, abs=1e-12)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(
        (0.00501592446347325, 0.016584075536526768), abs=1e-12
    )
    assert math.isnan(stats.paired_t_test([0.5], [0.4])["p"])
    assert stats.paired_t_test([0.5, 0.6], [0.5, 0.6])["p"] == 1.0  # identical runs
    with pytest.raises(ValueError, match="same length"):
        stats.paired_t_test([1, 2], [1])


def test_wilcoxon_case_t2():
    d = np.array([0.12, -0.03, 0.05, 0.08, 0.02, 0.07, -0.01, 0.04, 0.09, 0.06])
    two_sided = stats.wilcoxon_signed_rank(d, np.zeros_like(d))
    assert two_sided["statistic"] == 4 and two_sided["p"] == pytest.approx(14 / 1024, abs=1e-15)
    assert stats.wilcoxon_signed_rank(d, np.zeros_like(d), alternative="greater")["p"] == pytest.approx(
        7 / 1024, abs=1e-15
    )
    # zero differences (both images empty and both predicted empty: Dice 1 and 1) are dropped, as R does
    with_zeros = stats.wilcoxon_signed_rank(np.r_[d, 0, 0], np.zeros(12))
    assert with_zeros["n_nonzero"] == 10 and with_zeros["p"] == pytest.approx(two_sided["p"])
    assert stats.wilcoxon_signed_rank([1, 1], [1, 1])["p"] == 1.0


def test_holm_and_benjamini_hochberg_case_t3():
    p = [0.01, 0.04, 0.03, 0.005]
    assert stats.adjust_p_values(p, "holm").tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-12)
    assert stats.adjust_p_values(p, "bh").tolist() == pytest.approx([0.02, 0.04, 0.04, 0.02], abs=1e-12)
    with_nan = stats.adjust_p_values([0.01, float("nan"), 0.04, 0.03, 0.005], "holm")
    assert math.isnan(with_nan[1]) and with_nan[[0, 2, 3, 4]].tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    with pytest.raises(ValueError, match="unknown p-value adjustment"):
        stats.adjust_p_values(p, "bonferroni")


def test_dice_conventions_four_image_case():
    # |GT|, |pred|, |intersection| = (0,0,0), (0,3,0), (8,8,6), (4,0,0) on 5x5 images
    truth, predicted = np.zeros((4, 5, 5)), np.zeros((4, 5, 5))
    predicted[1].flat[:3] = 1
    truth[2].flat[:8] = 1
    predicted[2].flat[2:10] = 1
    truth[3].flat[:4] = 1
    metrics = segmentation_metrics(predicted, truth)
    assert metrics["per_image_dice"].tolist() == [1.0, 0.0, 0.75, 0.0]
    assert metrics["mean_dice"] == 0.4375  # SIIM-ACR / Kaggle rule
    assert metrics["dice_positive"] == 0.375  # MONAI ignore_empty=True: mean over images with a mask
    assert metrics["dice_global"] == pytest.approx(12 / 23, abs=1e-15)
    assert metrics["false_positive_rate_empty"] == 0.5


def test_weighted_auc_equals_sklearn_on_explicit_resamples():
    rng = np.random.default_rng(1)
    labels = rng.random((120, 3)) < [0.1, 0.3, 0.5]
    scores = np.round(rng.random((120, 3)) + 0.3 * labels, 1)
    weights = stats.bootstrap_weights(120, 5, seed=2)
    assert weights.sum(axis=1).tolist() == [120] * 5
    matrix = stats.weighted_auc_matrix(labels, scores, weights)
    for b in range(5):
        rows = np.repeat(np.arange(120), weights[b].astype(int))
        for k in range(3):
            if labels[rows, k].min() == labels[rows, k].max():
                assert math.isnan(matrix[b, k])
            else:
                assert matrix[b, k] == pytest.approx(roc_auc_score(labels[rows, k], scores[rows, k]), abs=1e-12)
    assert stats.weighted_auc_matrix(labels, scores, np.ones((1, 120)))[0] == pytest.approx(
        [roc_auc_score(labels[:, k], scores[:, k]) for k in range(3)]
    )


def test_stratified_weights_keep_each_stratum_size():
    strata = np.r_[np.zeros(10, int), np.ones(30, int)]
    weights = stats.bootstrap_weights(40, 50, seed=0, strata=strata)
    assert (weights[:, :10].sum(axis=1) == 10).all() and (weights[:, 10:].sum(axis=1) == 30).all()
    assert np.array_equal(weights, stats.bootstrap_weights(40, 50, seed=0, strata=strata))  # seeded
    labels = np.array([[1, 0], [1, 1], [0, 0], [1, 0]])
    assert stats.macro_auc_strata(labels).tolist() == [0, 1, -1, 0]  # rarest finding, -1 for none


def test_bootstrap_ci_covers_the_true_auc_at_about_the_nominal_rate():
    # Binormal model: positives ~N(1, 1), negatives ~N(0, 1); true AUC = Phi(1 / sqrt 2).
    true_auc = scipy_stats.norm.cdf(1 / math.sqrt(2))
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(60), np.zeros(90)].astype(bool)
    covered = 0
    trials = 200
    for trial in range(trials):
        scores = np.r_[rng.normal(1, 1, 60), rng.normal(0, 1, 90)]
        ci = stats.bootstrap_ci(
            lambda w: stats.weighted_auc_matrix(labels, scores, w)[:, 0],
            150,
            2000,
            seed=trial,
            strata=labels.astype(int),
        )
        covered += ci["ci_low"] <= true_auc <= ci["ci_high"]
    assert 0.90 <= covered / trials <= 0.99, covered / trials


def test_bootstrap_p_value_uses_the_bootstrap_standard_error():
    differences = np.random.default_rng(0).normal(0.02, 0.01, 4000)
    p = stats.bootstrap_p_value(differences, 0.02)
    assert p == pytest.approx(2 * scipy_stats.norm.sf(2.0), rel=0.05)
    assert stats.bootstrap_p_value(np.zeros(10), 0.0) == 1.0 and math.isnan(stats.bootstrap_p_value(np.array([]), 0.1))
    assert stats.macro_from_class_aucs(np.array([[0.5, np.nan, 0.7], [np.nan, np.nan, np.nan]])).tolist()[
        0
    ] == pytest.approx(0.6)


def test_per_image_dice_comparisons_use_wilcoxon_over_seed_averaged_images():
    from medssl.report.compare import CellRuns, compare_runs

    rng = np.random.default_rng(0)
    base = rng.random(40)
    a, b = CellRuns(), CellRuns()
    for seed in (0, 1):
        a.values[(0, seed)], b.values[(0, seed)] = 0.6 + 0.01 * seed, 0.5
        a.per_image[(0, seed)] = np.clip(base + 0.1 + 0.01 * rng.standard_normal(40), 0, 1)
        b.per_image[(0, seed)] = base
    result = compare_runs(a, b)
    expected = stats.wilcoxon_signed_rank(np.mean([a.per_image[(0, s)] for s in (0, 1)], axis=0), base)["p"]
    assert result["image_test"] == "wilcoxon" and result["p_images"] == expected and result["p_images"] < 1e-6
    assert (
        result["n_method"] == 1 and result["difference"] == pytest.approx(10.5) and math.isnan(result["p"])
    )  # one run: no test
    b.values.pop((0, 1))  # only the evaluation seeds both rows have enter (same label subsets)
    assert compare_runs(a, b)["difference"] == pytest.approx(10.0)


# ----------------------------------------------------------------- the tables' test: the pretraining run as unit
def test_pretraining_run_test_is_a_t_test_over_runs_plus_the_image_variance():
    runs = np.array([0.02, 0.05, 0.03])
    plain = stats.pretraining_run_test(runs)
    reference = scipy_stats.ttest_1samp(runs, 0.0)
    assert (
        plain["p"] == pytest.approx(reference.pvalue)
        and plain["df"] == 2
        and plain["estimate"] == pytest.approx(runs.mean())
    )
    resamples = np.random.default_rng(0).normal(runs.mean(), 0.01, 4000)
    combined = stats.pretraining_run_test(runs, resamples)
    se = math.sqrt(runs.var(ddof=1) / 3 + resamples.var(ddof=1))
    assert combined["se"] == pytest.approx(se) and combined["p"] == pytest.approx(
        2 * scipy_stats.t.sf(runs.mean() / se, 2)
    )
    assert combined["p"] > plain["p"] and combined["ci_low"] < plain["ci_low"]
    one = stats.pretraining_run_test([0.2], resamples)  # one pretraining run: no test, however large the difference
    assert math.isnan(one["p"]) and math.isnan(one["ci_low"]) and one["estimate"] == 0.2
    assert stats.pretraining_run_test([0.0, 0.0])["p"] == 1.0 and stats.pretraining_run_test([0.1, 0.1])["p"] == 0.0


def test_variance_components_separate_pretraining_from_evaluation_spread():
    rng = np.random.default_rng(0)
    runs = {s: 0.7 + rng.normal(0, 0.04) + rng.normal(0, 0.01, 50) for s in range(40)}
    sds = stats.variance_components(runs)
    assert sds["pretraining"] == pytest.approx(0.04, rel=0.25) and sds["evaluation"] == pytest.approx(0.01, rel=0.05)
    assert math.isnan(
        stats.variance_components({0: [0.5], 1: [0.6]})["pretraining"]
    )  # one evaluation each: inseparable
    single = stats.variance_components({0: [0.5, 0.52, 0.54]})
    assert math.isnan(single["pretraining"]) and single["evaluation"] == pytest.approx(0.02)


# ------------------------------------------------------- size and power of the tables' test, by simulation (issue 30)
def _power():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import pretraining_test_power

    return pretraining_test_power


def _limit(n_tables: int, alpha: float = 0.05) -> float:
    """alpha plus three Monte-Carlo sds of a rejection rate over ``n_tables`` simulated comparisons."""
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / n_tables)


def test_welch_two_sample_run_test_matches_scipy_and_adds_the_image_variance():
    a, b = np.array([0.70, 0.74, 0.71]), np.array([0.60, 0.66, 0.61, 0.65])
    plain = stats.two_sample_run_test(a, b)
    reference = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert plain["p"] == pytest.approx(reference.pvalue) and plain["df"] == pytest.approx(reference.df)
    resamples = np.random.default_rng(0).normal(0.08, 0.01, 4000)
    combined = stats.two_sample_run_test(a, b, resamples)
    se = math.sqrt(a.var(ddof=1) / 3 + b.var(ddof=1) / 4 + resamples.var(ddof=1))
    assert combined["se"] == pytest.approx(se) and combined["df"] == plain["df"] and combined["p"] > plain["p"]
    assert math.isnan(stats.two_sample_run_test([0.7], b)["p"])  # one pretraining run: no test, however large the gap
    assert (
        stats.two_sample_run_test([0.5, 0.5], [0.5, 0.5])["p"] == 1.0
        and stats.two_sample_run_test([0.6, 0.6], [0.5, 0.5])["p"] == 0.0
    )


@pytest.mark.parametrize("runs", [2, 3, 5])
def test_equal_rows_are_marked_at_most_at_the_nominal_rate(runs):
    """Type-I error of the tables' test, trained vs trained and trained vs fixed weights, with and without an
    image term: at most alpha plus three Monte-Carlo sds (benchmarks/pretraining_test_power.py prints the table)."""
    power, n = _power(), 1500
    for name in ("equal", "fixed", "fixed, no image term", "equal, no image term"):
        rate = power.rejection_rate(n, power.SCENARIOS[name], runs, 0.0, seed=runs)
        assert rate <= _limit(n), (name, runs, rate)


@pytest.mark.parametrize("runs", [2, 3, 5])
def test_a_method_with_three_times_the_run_sd_keeps_the_size(runs):
    power, n = _power(), 1500
    for name in ("3x", "3x, no image term"):
        rate = power.rejection_rate(n, power.SCENARIOS[name], runs, 0.0, seed=runs)
        assert rate <= 0.075, (name, runs, rate)


def test_four_run_sds_are_found_with_three_runs():
    """Unadjusted power at a true difference of 4 between-run sds, 3 pretraining runs per method, equal variances:
    0.8 at least (0.64 with the paired test of before issue 30)."""
    power, n = _power(), 1000
    assert power.rejection_rate(n, power.SCENARIOS["equal"], 3, 4.0, seed=3) >= 0.8


def test_a_fixed_row_brings_its_own_evaluation_variance():
    """Against an encoder brought from a file, the fixed row's evaluation-seed spread is part of the standard error:
    before issue 30 it was copied under each pretraining run, cancelled out of the paired differences, and equal
    rows were marked in 15 % of the simulated tables (evaluation sd 2, pretraining sd 0.5 points, 3 runs)."""
    power, n = _power(), 1500
    scenario = power.SCENARIOS["fixed, no image term"]
    for runs in (3, 5):
        assert power.rejection_rate(n, scenario, runs, 0.0, seed=runs) <= _limit(n)


def test_the_dagger_is_not_tested_against_a_baseline_chosen_on_the_test_data():
    """Six baselines equal to the reference: testing the reference only against the baseline with the highest test
    mean marks a † in more than alpha of the columns with 5 runs; asking it to be above every baseline does not."""
    power, n = _power(), 600
    assert power.dagger_rate(n, 5, "every baseline") <= _limit(n)
    assert power.dagger_rate(n, 5, "best by test mean") > 0.05


def test_pairing_by_seed_finds_no_shared_seed_effect_in_quick_seeds():
    """The measurement behind the unpaired form (docs/statistics.md): the quick-seeds records show no effect of the
    pretraining seed shared by the methods."""
    from pathlib import Path

    result = _power().seed_effect(Path(__file__).resolve().parent.parent / "results" / "quick-seeds" / "records.jsonl")
    assert result["df_seed"] == 10 and result["df_error"] == 30 and result["p"] > 0.05
