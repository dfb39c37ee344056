"""Statistics for method comparisons (conventions and reference values: ../shared/specs/stats.md).

* **DeLong's test** for correlated ROC AUCs on one test set (DeLong, DeLong & Clarke-Pearson, Biometrics 1988), with
  the O(N log N) midrank algorithm of Sun & Xu (IEEE SPL 2014), in float64: AUC, placements V10/V01, covariance
  S = S10/m + S01/n. As pROC: a zero difference with zero variance gives z = 0, p = 1 (not NaN); the CI of a single
  AUC is clipped to [0, 1].
* **Paired t-test over seeds** (scipy ``ttest_rel``, with the CI of the mean difference): the reference case T1 of
  stats.md; the reports do not call it (runs of two methods are not paired, below).
* **Welch's two-sample t-test over replicates, plus the test-image variance** (:func:`two_sample_run_test`): the
  test behind the tables' marks. The replicates are pretraining runs (evaluation seeds averaged within each), or a
  fixed encoder's evaluation seeds; each row keeps its own variance (Welch 1947; the default that holds its size
  when variances differ: Ruxton 2006, Delacre, Lakens & Leys 2017), and the variance of the difference over
  resampled test images is added, so a claim must hold for other pretraining runs and other test images: the
  analytic form of a two-level bootstrap that resamples runs, then images (Saravanan, Berman & Sober, NBDT 2020),
  with training seeds as the unit of comparison as Bouthillier et al. (MLSys 2021) argue for ML benchmarks.
  :func:`pretraining_run_test` is its one-sample form, for a cell's own interval.
* **Wilcoxon signed-rank** on per-image Dice (bounded, skewed, many ties), zeros dropped as R's ``wilcox.test``
  (challengeR's choice); exact when scipy can be exact, normal approximation otherwise.
* **Holm** (family-wise) and **Benjamini-Hochberg** (false discovery rate) adjustment (statsmodels; its default
  is Holm-Sidak, so the method is always named).
* **Bootstrap** over test images with weights instead of index copies: one resample is a vector of multiplicities,
  and the AUC of every class under every resample comes from one sort per class
  (:func:`weighted_auc_matrix`), so 2,000 resamples of a 400-image, 14-class test set take milliseconds. Resamples
  are stratified (positives and negatives of a single AUC separately; images by their rarest finding for a macro
  AUC) and seeded; the same resamples serve both models of a paired comparison. Percentile intervals.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

DEFAULT_RESAMPLES = 2000


# --------------------------------------------------------------------------------------------------------- DeLong
def _midranks(values: np.ndarray) -> np.ndarray:
    return scipy_stats.rankdata(values, method="average", axis=-1).astype(np.float64)


def delong_placements(labels: np.ndarray, scores: np.ndarray):
    """AUCs and structural components of k score vectors (k x N) against binary ``labels`` (N).

    Returns ``(auc [k], v10 [k, m], v01 [k, n])`` with m positives and n negatives (Sun & Xu 2014, eq. 6-8).
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    positives, negatives = scores[:, labels], scores[:, ~labels]
    m, n = positives.shape[1], negatives.shape[1]
    if m == 0 or n == 0:
        raise ValueError(f"an AUC needs positives and negatives, got {m} positives and {n} negatives")
    combined = _midranks(np.concatenate([positives, negatives], axis=1))
    rank_pos, rank_neg = combined[:, :m], combined[:, m:]
    auc = rank_pos.sum(axis=1) / (m * n) - (m + 1) / (2.0 * n)
    v10 = (rank_pos - _midranks(positives)) / n
    v01 = 1.0 - (rank_neg - _midranks(negatives)) / m
    return auc, v10, v01


def delong_covariance(labels: np.ndarray, scores: np.ndarray):
    """``(auc [k], S [k, k])``: DeLong's covariance of the k AUCs, S = S10/m + S01/n."""
    auc, v10, v01 = delong_placements(labels, scores)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10, ddof=1)) if m > 1 else np.zeros((len(auc), len(auc)))
    s01 = np.atleast_2d(np.cov(v01, ddof=1)) if n > 1 else np.zeros((len(auc), len(auc)))
    return auc, s10 / m + s01 / n


def delong_test(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, confidence: float = 0.95
) -> Dict[str, float]:
    """Paired DeLong test of AUC(a) - AUC(b) on the same images: two-sided p and the CI of the difference."""
    auc, cov = delong_covariance(labels, np.stack([scores_a, scores_b]))
    difference = float(auc[0] - auc[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    sd = math.sqrt(max(variance, 0.0))
    if sd == 0.0:
        z = 0.0 if difference == 0.0 else math.copysign(math.inf, difference)
    else:
        z = difference / sd
    quantile = scipy_stats.norm.ppf(0.5 + confidence / 2)
    return {
        "auc_a": float(auc[0]),
        "auc_b": float(auc[1]),
        "difference": difference,
        "z": z,
        "p": float(2 * scipy_stats.norm.sf(abs(z))),
        "ci_low": difference - quantile * sd,
        "ci_high": difference + quantile * sd,
    }


def delong_ci(labels: np.ndarray, scores: np.ndarray, confidence: float = 0.95) -> Dict[str, float]:
    """AUC with DeLong's confidence interval, clipped to [0, 1] (pROC ``ci.auc(method="delong")``)."""
    auc, cov = delong_covariance(labels, scores)
    half = scipy_stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(max(float(cov[0, 0]), 0.0))
    return {"auc": float(auc[0]), "ci_low": max(0.0, float(auc[0]) - half), "ci_high": min(1.0, float(auc[0]) + half)}


# ------------------------------------------------------------------------------------------- tests over runs/images
def paired_t_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Dict[str, float]:
    """Paired t-test of mean(a - b), e.g. per-seed scores of two methods; NaN p with fewer than two pairs."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same length, got {a.shape} and {b.shape}")
    difference = float(np.mean(a - b)) if len(a) else math.nan
    if len(a) < 2:
        return {
            "difference": difference,
            "t": math.nan,
            "df": len(a) - 1,
            "p": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
        }
    if np.all(a - b == a[0] - b[0]):  # constant differences: the t statistic is undefined
        p = 1.0 if difference == 0 else 0.0
        return {
            "difference": difference,
            "t": math.nan,
            "df": len(a) - 1,
            "p": p,
            "ci_low": difference,
            "ci_high": difference,
        }
    result = scipy_stats.ttest_rel(a, b)
    interval = result.confidence_interval(confidence)
    return {
        "difference": difference,
        "t": float(result.statistic),
        "df": int(result.df),
        "p": float(result.pvalue),
        "ci_low": float(interval.low),
        "ci_high": float(interval.high),
    }


def pretraining_run_test(
    run_values: Sequence[float], image_resamples: Optional[np.ndarray] = None, confidence: float = 0.95
) -> Dict[str, float]:
    """One-sample t-test and CI of mean(run_values), each value one replicate of a table cell (a pretraining run,
    evaluation seeds averaged within it; or an evaluation seed of fixed weights): the cells' confidence intervals.

    Variance of the mean: s^2 / n over the n replicates + the variance of the same mean under resampled test images
    (``image_resamples``; None = the test set taken as fixed); Student's t with n - 1 degrees of freedom, exact
    without the image term and conservative with it. Welch-Satterthwaite's larger df for that sum was not: with 2-3
    runs a small s^2 by chance both shrinks se and raises df (simulated type-I error 0.12 with 2 runs, 0.07 with 3;
    issue 17). Fewer than two replicates: no test (NaN p): one pretraining run says nothing about the next.
    """
    values = np.asarray(run_values, dtype=np.float64)
    n = len(values)
    estimate = float(values.mean()) if n else math.nan
    out = {
        "estimate": estimate,
        "n": n,
        "se": math.nan,
        "df": float(n - 1) if n >= 2 else math.nan,
        "p": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
    }
    if n < 2:
        return out
    variance = float(values.var(ddof=1)) / n + image_variance(image_resamples)
    return {**out, **_t_result(estimate, variance, n - 1, confidence)}


def _t_result(estimate: float, variance: float, df: float, confidence: float) -> Dict[str, float]:
    """Two-sided p and CI of ``estimate`` with standard error sqrt(variance) against Student's t with ``df``."""
    if variance == 0.0:
        return {"se": 0.0, "p": 1.0 if estimate == 0.0 else 0.0, "ci_low": estimate, "ci_high": estimate}
    se = math.sqrt(variance)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, df)) * se
    return {
        "se": se,
        "p": float(2 * scipy_stats.t.sf(abs(estimate) / se, df)),
        "ci_low": estimate - half,
        "ci_high": estimate + half,
    }


def image_variance(image_resamples: Optional[np.ndarray]) -> float:
    """Variance of a quantity over test-image resamples (0 when none are given: the test set taken as fixed)."""
    if image_resamples is None:
        return 0.0
    resamples = np.asarray(image_resamples, dtype=np.float64)
    resamples = resamples[np.isfinite(resamples)]
    return float(resamples.var(ddof=1)) if len(resamples) > 1 else 0.0


def welch_df(part_a: float, n_a: int, part_b: float, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom of ``part_a + part_b``, each part a variance of a mean estimated from
    ``n`` replicates (n - 1 df). Lies between min(n_a, n_b) - 1 and n_a + n_b - 2; where both parts are zero, the
    latter (nothing to weigh)."""
    denominator = part_a**2 / (n_a - 1) + part_b**2 / (n_b - 1)
    return float((part_a + part_b) ** 2 / denominator) if denominator > 0 else float(n_a + n_b - 2)


def two_sample_run_test(
    a: Sequence[float], b: Sequence[float], image_resamples: Optional[np.ndarray] = None, confidence: float = 0.95
) -> Dict[str, float]:
    """Welch's two-sample t-test of mean(a) - mean(b), plus the test-image variance of the same difference.

    ``a`` and ``b`` are the replicates of two table rows: a trained method's pretraining runs (each the mean over its
    evaluation seeds), or a fixed-weight encoder's evaluation seeds. They are not paired: runs of two methods with the
    same pretraining seed share nothing that survives pretraining (docs/statistics.md measures it). Variance of the
    difference: s_a^2 / n_a + s_b^2 / n_b (each row its own spread: a method with three times another's sd keeps the
    test's size) + the variance of the difference over resampled test images (``image_resamples``: the difference
    under each resample, the same images for both rows; None = the test set taken as fixed). Degrees of freedom:
    Welch-Satterthwaite over the two replicate parts alone; the image term, estimated from thousands of resamples,
    is not given df of its own, which keeps the reference distribution's tails at least as heavy as they are.
    Hsu's conservative min(n_a, n_b) - 1 was measured and not taken: against a fixed-weight row (5 runs vs 3
    evaluation seeds, no image term) Welch's size is 0.058 at alpha 0.05 and Hsu's 0.013, but Hsu's df cut the
    power at 4 sds from 0.39 to 0.15 with 3 runs and from 0.22 to 0 with 2 (benchmarks/pretraining_test_power.py).
    Fewer than two replicates on either side: no test (NaN p).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n_a, n_b = len(a), len(b)
    estimate = float(a.mean() - b.mean()) if n_a and n_b else math.nan
    out = {
        "estimate": estimate,
        "n_a": n_a,
        "n_b": n_b,
        "se": math.nan,
        "df": math.nan,
        "p": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
    }
    if n_a < 2 or n_b < 2:
        return out
    part_a, part_b = float(a.var(ddof=1)) / n_a, float(b.var(ddof=1)) / n_b
    df = welch_df(part_a, n_a, part_b, n_b)
    return {**out, "df": df, **_t_result(estimate, part_a + part_b + image_variance(image_resamples), df, confidence)}


def variance_components(values_by_run: Dict[int, Sequence[float]]) -> Dict[str, float]:
    """Method-of-moments estimates of the two random-effect sds of a cell (one-way random-effects ANOVA, unbalanced
    groups averaged): ``pretraining`` = sd between pretraining runs of what one evaluation would give, ``evaluation`` =
    sd between evaluation seeds of one encoder (pooled within runs). NaN where the design cannot separate them."""
    groups = [np.asarray(v, dtype=np.float64) for v in values_by_run.values() if len(v)]
    within = [g.var(ddof=1) for g in groups if len(g) > 1]
    if not within:  # one evaluation per run: the runs' spread holds both components, inseparably
        return {"pretraining": math.nan, "evaluation": math.nan}
    evaluation = float(np.mean(within))
    if len(groups) < 2:
        return {"pretraining": math.nan, "evaluation": math.sqrt(evaluation)}
    between = float(np.var([g.mean() for g in groups], ddof=1)) - evaluation * float(
        np.mean([1.0 / len(g) for g in groups])
    )
    return {"pretraining": math.sqrt(max(between, 0.0)), "evaluation": math.sqrt(evaluation)}


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided") -> Dict[str, float]:
    """Paired Wilcoxon signed-rank test of a - b (per-image Dice of two models); zero differences are dropped.

    p = 1 when every difference is zero (nothing to rank), instead of scipy's error.
    """
    difference = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    nonzero = difference[difference != 0]
    if len(nonzero) == 0:
        return {
            "statistic": 0.0,
            "p": 1.0,
            "n_nonzero": 0,
            "median_difference": float(np.median(difference)) if len(difference) else math.nan,
        }
    result = scipy_stats.wilcoxon(nonzero, zero_method="wilcox", alternative=alternative, method="auto")
    return {
        "statistic": float(result.statistic),
        "p": float(result.pvalue),
        "n_nonzero": int(len(nonzero)),
        "median_difference": float(np.median(difference)),
    }


def adjust_p_values(p_values: Sequence[float], method: str = "holm") -> np.ndarray:
    """Holm (``holm``) or Benjamini-Hochberg (``bh``) adjusted p-values; NaNs stay NaN and are not counted."""
    names = {"holm": "holm", "bh": "fdr_bh"}
    if method not in names:
        raise ValueError(f"unknown p-value adjustment {method!r}; use one of {sorted(names)}")
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        adjusted[finite] = multipletests(p[finite], method=names[method])[1]
    return adjusted


# -------------------------------------------------------------------------------------------------------- bootstrap
def bootstrap_weights(
    n_items: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, strata: Optional[np.ndarray] = None
) -> np.ndarray:
    """Multiplicities (n_resamples x n_items) of resampling with replacement, within each stratum if given."""
    rng = np.random.default_rng(seed)
    strata = np.zeros(n_items, dtype=np.int64) if strata is None else np.asarray(strata)
    weights = np.zeros((n_resamples, n_items), dtype=np.float64)
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        draws = rng.integers(0, len(members), size=(n_resamples, len(members)))
        rows = np.repeat(np.arange(n_resamples), len(members))
        np.add.at(weights, (rows, members[draws.ravel()]), 1.0)
    return weights


def weighted_auc_matrix(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of each class (columns of ``labels``/``scores``, N x K) under each weighting (B x N): B x K.

    AUC_w = sum_{i pos, j neg} w_i w_j psi(s_i, s_j) / (W_pos W_neg), ties 1/2; NaN where a class has no weighted
    positive or negative. With all weights 1 it equals sklearn's ``roc_auc_score``.
    """
    labels = np.asarray(labels).reshape(len(labels), -1).astype(bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    result = np.full((weights.shape[0], labels.shape[1]), np.nan)
    for k in range(labels.shape[1]):
        order = np.argsort(scores[:, k], kind="stable")
        sorted_scores, positive = scores[order, k], labels[order, k]
        w = weights[:, order]
        w_pos, w_neg = w * positive, w * ~positive
        # Negatives strictly below each score, plus half of those tied with it (ties are contiguous once sorted).
        starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_scores)) + 1])
        group = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(sorted_scores))))
        neg_per_group = np.add.reduceat(w_neg, starts, axis=1)
        below = np.cumsum(neg_per_group, axis=1) - neg_per_group
        wins = below[:, group] + 0.5 * neg_per_group[:, group]
        total_pos, total_neg = w_pos.sum(axis=1), w_neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (w_pos * wins).sum(axis=1) / (total_pos * total_neg)
        auc[(total_pos == 0) | (total_neg == 0)] = np.nan
        result[:, k] = auc
    return result


def macro_auc_strata(labels: np.ndarray) -> np.ndarray:
    """Stratum of each image for a macro-AUC bootstrap: its rarest finding (or -1 for none), so every resample keeps
    about the test set's positives of each class."""
    labels = np.asarray(labels).reshape(len(labels), -1).astype(bool)
    prevalence = labels.sum(axis=0)
    rarity = np.where(labels, prevalence[None, :], np.iinfo(np.int64).max)
    return np.where(labels.any(axis=1), np.argmin(rarity, axis=1), -1)


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple:
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return (math.nan, math.nan)
    low, high = np.quantile(samples, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return (float(low), float(high))


def bootstrap_p_value(differences: np.ndarray, observed: float) -> float:
    """Two-sided p of a paired bootstrap test as pROC's ``roc.test(method="bootstrap")``: D = observed difference /
    sd of the resampled differences, p = 2 Phi(-|D|). Unlike counting resamples beyond zero it is not floored at
    about 1/B, which matters once p-values are Holm-adjusted across a whole table."""
    differences = np.asarray(differences, dtype=np.float64)
    differences = differences[np.isfinite(differences)]
    if len(differences) < 2:
        return math.nan
    sd = float(differences.std(ddof=1))
    if sd == 0.0:
        return 1.0 if observed == 0 else 0.0
    return float(2 * scipy_stats.norm.sf(abs(observed) / sd))


def bootstrap_ci(
    statistic: Callable[[np.ndarray], np.ndarray],
    n_items: int,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    strata: Optional[np.ndarray] = None,
    confidence: float = 0.95,
) -> Dict[str, float]:
    """Percentile CI of ``statistic(weights)``, a function of a (B x N) multiplicity matrix returning B values
    (row of ones = the observed statistic)."""
    observed = float(np.asarray(statistic(np.ones((1, n_items))))[0])
    samples = np.asarray(statistic(bootstrap_weights(n_items, n_resamples, seed, strata)))
    low, high = percentile_interval(samples, confidence)
    return {"estimate": observed, "ci_low": low, "ci_high": high, "n_resamples": int(n_resamples)}


def macro_from_class_aucs(class_aucs: np.ndarray) -> np.ndarray:
    """Macro AUC of each row of a (B x K) class-AUC matrix over the classes defined (finite) in that row."""
    finite = np.isfinite(class_aucs)
    counts = finite.sum(axis=1)
    return np.where(counts > 0, np.where(finite, class_aucs, 0.0).sum(axis=1) / np.maximum(counts, 1), np.nan)
