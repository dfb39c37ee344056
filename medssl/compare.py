"""Paired comparisons behind the reports' significance marks, confidence intervals and statistics tables.

For every table cell (protocol, task, label fraction) every method is compared with the suite's reference method
(``statistics.reference``, default CoBooM) and with the cell's best baseline (highest mean among the methods that
are neither the reference nor one of its ablations). Runs of the two methods are paired by (pretraining seed,
evaluation seed): same label subset, same test images.

* **The primary test takes the pretraining run as its unit** (:func:`medssl.stats.pretraining_run_test`): per
  pretraining seed, the difference of the two methods averaged over the evaluation seeds both have; their mean is
  tested with the variance between pretraining runs plus the test-image bootstrap variance of the same mean
  (macro AUC from the stored scores, mean Dice from the per-image Dice). It sets the marks, adjusted across each
  table (Holm by default, Benjamini-Hochberg as an option) within each family (vs reference, vs best baseline).
  With fewer than two paired pretraining runs there is no test and no mark: the encoders' own randomness, several
  points on the quick suite (README "Reproducibility"), would be untested.
* **Conditional on these pretraining runs**, for statistics.md only: for AUC a paired bootstrap over test images of
  the cell's mean macro AUC (stratified by each image's rarest finding, whole patients when patient ids are
  stored); for per-image Dice a paired Wilcoxon signed-rank test of the per-image Dice averaged over runs.

A cell's value is the mean over its pretraining runs of each run's mean over evaluation seeds. Per-class DeLong
tests of every run pair go to a long CSV. The bootstrap of each record is cached next to the records
(``results/<suite>/bootstrap/``): it is derived from the stored predictions only, so deleting it changes nothing.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import stats as scipy_stats

from medssl import stats
from medssl.config import stable_hash, statistics_settings
from medssl.plan import FIXED_RUN, Plan
from medssl.records import ResultStore

RESAMPLE_CHUNK = 250  # resamples evaluated at once: bounds memory on large test sets
RunKey = Tuple[int, int]  # (pretraining seed, evaluation seed)
CellKey = Tuple[str, str, str, float]  # (method, task, protocol, fraction)


@dataclasses.dataclass
class CellRuns:
    """The finished runs of one method in one table cell."""
    values: Dict[RunKey, float] = dataclasses.field(default_factory=dict)
    keys: Dict[RunKey, str] = dataclasses.field(default_factory=dict)
    bootstrap: Dict[RunKey, np.ndarray] = dataclasses.field(default_factory=dict)  # metric under each resample
    per_image: Dict[RunKey, np.ndarray] = dataclasses.field(default_factory=dict)  # per-image Dice

    def by_pretraining(self, runs: Optional[List[RunKey]] = None) -> Dict[int, List[RunKey]]:
        """The runs (default: all) grouped by pretraining seed, in seed order."""
        groups: Dict[int, List[RunKey]] = {}
        for run in sorted(self.values if runs is None else runs):
            groups.setdefault(run[0], []).append(run)
        return groups

    def run_means(self) -> Dict[int, float]:
        """Each pretraining run's metric: the mean over its evaluation seeds."""
        return {seed: float(np.mean([self.values[r] for r in runs])) for seed, runs in self.by_pretraining().items()}

    @property
    def mean(self) -> float:
        """The cell's value: mean over pretraining runs of each run's mean over evaluation seeds."""
        return float(np.mean(list(self.run_means().values()))) if self.values else math.nan

    def replicates(self, replicated_pretraining: bool) -> List[float]:
        """What the cell's sd is over: its pretraining runs' means, or (a suite with one pretraining seed, or an
        external encoder, which has no pretraining run) its evaluations."""
        if not replicated_pretraining or self.fixed:
            return [self.values[r] for r in sorted(self.values)]
        return [mean for _, mean in sorted(self.run_means().items())]

    @property
    def n_pretraining(self) -> int:
        return 0 if self.fixed else len({run[0] for run in self.values})

    @property
    def fixed(self) -> bool:
        """An external encoder's cell: fixed weights, no pretraining seed (``plan.FIXED_RUN``)."""
        return bool(self.values) and all(run[0] == FIXED_RUN for run in self.values)

    def paired_with(self, pretraining_seeds: List[int]) -> "CellRuns":
        """A fixed encoder's runs repeated under each of ``pretraining_seeds``, so that each pretraining run of a
        trained method is compared with the same fixed evaluations (evaluation seed by evaluation seed)."""
        out = CellRuns()
        for field in ("values", "keys", "bootstrap", "per_image"):
            source = getattr(self, field)
            getattr(out, field).update({(seed, run[1]): item for seed in pretraining_seeds for run, item in source.items()})
        return out


@dataclasses.dataclass
class Comparison:
    protocol: str
    task: str
    fraction: float
    method: str
    versus: str
    family: str  # "reference" or "best baseline"
    n_pretraining: int  # paired pretraining runs, the primary test's replicates
    n_runs: int  # paired (pretraining seed, evaluation seed) runs
    difference: float  # mean over paired pretraining runs of method - versus, metric points (x100)
    ci_low: float  # CI of the difference from the primary test, points
    ci_high: float
    df: float  # the primary test's degrees of freedom
    p_pretraining: float  # the primary test (NaN with fewer than two paired pretraining runs)
    p_images: float  # conditional on these pretraining runs: over test images only
    image_test: str  # "bootstrap", "wilcoxon" or "" when no per-image data are stored
    p_adjusted: float = math.nan
    significant: bool = False


class BootstrapCache:
    """Resampled metric of each record, computed once from its stored predictions (results/<suite>/bootstrap/)."""

    def __init__(self, store: ResultStore, settings: Dict):
        self.store, self.settings = store, settings
        self.directory = store.directory / "bootstrap"
        self._weights: Dict[str, np.ndarray] = {}

    def _resample_weights(self, task: str, predictions: Dict[str, np.ndarray]) -> Tuple[str, np.ndarray]:
        labels = predictions["labels"]
        groups = predictions.get("patient_ids", np.arange(len(labels)))
        ident = stable_hash([task, np.asarray(predictions["test_indices"]).tolist(), np.asarray(groups).tolist(),
                             self.settings["resamples"], self.settings["seed"]], 16)
        if ident not in self._weights:
            unit_of_item = np.unique(groups, return_inverse=True)[1]
            n_units = int(unit_of_item.max()) + 1
            unit_labels = np.zeros((n_units, labels.shape[1]), dtype=bool)
            np.logical_or.at(unit_labels, unit_of_item, labels.astype(bool))
            seed = int(stable_hash([task, self.settings["seed"]], 8), 16)
            unit_weights = stats.bootstrap_weights(n_units, int(self.settings["resamples"]), seed, stats.macro_auc_strata(unit_labels))
            # multiplicities as small integers: 2,000 resamples of NIH's 25,596 test images take 100 MB, not 400
            self._weights[ident] = unit_weights[:, unit_of_item].astype(np.uint16)
        return ident, self._weights[ident]

    @staticmethod
    def _metric(metric: str, predictions: Dict[str, np.ndarray], weights: np.ndarray) -> np.ndarray:
        if metric == "macro_auc":
            return stats.macro_from_class_aucs(stats.weighted_auc_matrix(predictions["labels"], predictions["scores"], weights))
        return weights @ predictions["per_image_dice"].astype(np.float64) / weights.sum(axis=1)

    def resampled(self, key: str, task: str, metric: str) -> Optional[np.ndarray]:
        """The record's metric under each resample of its test images: macro AUC from its scores, or the mean of its
        per-image Dice; None when its predictions lack what that needs."""
        predictions = self.store.load_predictions(key) if (self.store.predictions_dir / f"{key}.npz").exists() else None
        needed = {"macro_auc": "scores", "mean_dice": "per_image_dice"}.get(metric)
        if predictions is None or needed not in predictions or "labels" not in predictions:
            return None
        ident, weights = self._resample_weights(task, predictions)
        path = self.directory / f"{key}-{ident}.npy"
        if path.exists():
            return np.load(path)
        values = np.concatenate([self._metric(metric, predictions, weights[start : start + RESAMPLE_CHUNK].astype(np.float64))
                                 for start in range(0, len(weights), RESAMPLE_CHUNK)])
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, values)
        os.replace(tmp, path)
        return values


def collect_runs(plan: Plan, records, store: Optional[ResultStore] = None) -> Dict[CellKey, CellRuns]:
    """Every finished evaluation of the plan, by cell, with its resampled metric when predictions are stored."""
    by_key = {r["key"]: r for r in records}
    cache = BootstrapCache(store, statistics_settings(plan.suite)) if store is not None else None
    cells: Dict[CellKey, CellRuns] = {}
    for job in plan.eval_jobs:
        record = by_key.get(job.key)
        if record is None:
            continue
        runs = cells.setdefault((job.pretrain.method, job.task["name"], job.protocol, job.fraction), CellRuns())
        run = job.run
        runs.values[run], runs.keys[run] = float(record["value"]), job.key
        if cache is None:
            continue
        resampled = cache.resampled(job.key, job.task["name"], record.get("metric"))
        if resampled is not None:
            runs.bootstrap[run] = resampled
        if record.get("metric") == "mean_dice" and (store.predictions_dir / f"{job.key}.npz").exists():
            runs.per_image[run] = store.load_predictions(job.key)["per_image_dice"]
    return cells


def over_pretraining(plan: Plan) -> bool:
    """Whether the suite replicates pretraining (two or more seeds): then a cell's sd is over pretraining runs, not
    over the evaluation seeds of its single run."""
    return len(plan.suite["pretrain"]["seeds"]) > 1


def _image_resamples(runs: CellRuns, paired: List[RunKey], other: Optional[CellRuns] = None) -> Optional[np.ndarray]:
    """The cell's quantity (its mean, or its difference from ``other``) under each test-image resample: evaluation
    seeds averaged within a pretraining run, then runs averaged, as the cell itself. None unless every run has one."""
    sides = [runs] + ([other] if other is not None else [])
    if not all(r in side.bootstrap for side in sides for r in paired):
        return None
    baseline = {r: other.bootstrap[r] if other is not None else 0.0 for r in paired}
    return np.mean([np.mean([runs.bootstrap[r] - baseline[r] for r in group], axis=0) for group in runs.by_pretraining(paired).values()], axis=0)


def cell_interval(runs: CellRuns, confidence: float = 0.95) -> Tuple[float, float]:
    """CI of the cell's value. With two or more pretraining runs the primary test's interval (runs and test images);
    with one, conditional on it: the image bootstrap when stored, else a t interval over its evaluation seeds."""
    paired = sorted(runs.values)
    image_resamples = _image_resamples(runs, paired)
    if runs.n_pretraining >= 2:
        test = stats.pretraining_run_test(list(runs.run_means().values()), image_resamples, confidence)
        return (test["ci_low"], test["ci_high"])
    if image_resamples is not None:
        return stats.percentile_interval(image_resamples, confidence)
    values = np.array(list(runs.values.values()))
    if len(values) < 2:
        return (math.nan, math.nan)
    half = scipy_stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return (float(values.mean() - half), float(values.mean() + half))


def compare_runs(a: CellRuns, b: CellRuns, confidence: float = 0.95) -> Dict[str, float]:
    """Tests of a - b over the runs both have (see the module docstring); metric points in the differences. An
    external encoder (fixed weights) is paired with each pretraining run of a trained method: the test's replicates
    are then that method's runs alone; two external encoders have no pretraining run to test over."""
    if a.fixed != b.fixed:
        a, b = (a.paired_with(sorted({r[0] for r in b.values})), b) if a.fixed else (a, b.paired_with(sorted({r[0] for r in a.values})))
    paired = sorted(set(a.values) & set(b.values))
    groups = a.by_pretraining(paired)
    out = {"n_pretraining": len(groups), "n_runs": len(paired), "difference": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "df": math.nan, "p_pretraining": math.nan, "p_images": math.nan, "image_test": ""}
    if not paired:
        return out
    per_run = [float(np.mean([a.values[r] - b.values[r] for r in group])) for group in groups.values()]
    image_resamples = _image_resamples(a, paired, b)
    test = stats.pretraining_run_test(per_run, image_resamples, confidence)
    out.update(difference=100 * test["estimate"], df=test["df"], p_pretraining=test["p"], ci_low=100 * test["ci_low"], ci_high=100 * test["ci_high"])
    if image_resamples is not None:
        out.update(p_images=stats.bootstrap_p_value(image_resamples, test["estimate"]), image_test="bootstrap")
    if all(r in a.per_image and r in b.per_image for r in paired):  # per-image Dice: the rank test, not the bootstrap
        conditional = stats.wilcoxon_signed_rank(np.mean([a.per_image[r] for r in paired], axis=0), np.mean([b.per_image[r] for r in paired], axis=0))
        out.update(p_images=conditional["p"], image_test="wilcoxon")
    return out


def columns(plan: Plan, protocol: str) -> List[Tuple[str, float]]:
    return [(t["name"], float(f)) for t in plan.suite["tasks"] if protocol in t["protocols"] for f in t["fractions"]]


def best_baseline(plan: Plan, cells: Dict[CellKey, CellRuns], task: str, protocol: str, fraction: float) -> Optional[str]:
    settings = statistics_settings(plan.suite)
    excluded = {settings["reference"], *settings["variants"]}
    means = {m: cells[(m, task, protocol, fraction)].mean for m in plan.suite["methods"]
             if m not in excluded and (m, task, protocol, fraction) in cells}
    return max(means, key=lambda m: (means[m], -plan.suite["methods"].index(m))) if means else None


def _column_comparisons(plan: Plan, cells: Dict[CellKey, CellRuns], protocol: str, task: str, fraction: float, versus: Optional[str], family: str, confidence: float) -> List[Comparison]:
    """Every other method of the suite against ``versus`` in one table cell (unadjusted)."""
    other = cells.get((versus, task, protocol, fraction)) if versus else None
    if other is None:
        return []
    out: List[Comparison] = []
    for method in plan.suite["methods"]:
        mine = cells.get((method, task, protocol, fraction))
        if method == versus or mine is None:
            continue
        result = compare_runs(mine, other, confidence)
        if result["n_runs"]:
            out.append(Comparison(protocol, task, fraction, method, versus, family, **result))
    return out


def _adjust(members: List[Comparison], settings: Dict) -> None:
    """Adjust the primary p-values of one family (``statistics.adjust``) and set ``significant``; an untestable
    comparison (one pretraining run) is neither counted nor marked."""
    adjusted = stats.adjust_p_values([c.p_pretraining for c in members], settings["adjust"])
    for comparison, p in zip(members, adjusted):
        comparison.p_adjusted = float(p)
        comparison.significant = bool(np.isfinite(p) and p < settings["alpha"])


def comparisons(plan: Plan, cells: Dict[CellKey, CellRuns], protocol: str) -> List[Comparison]:
    """Both families of comparisons of one table, with adjusted primary p-values and significance."""
    settings = statistics_settings(plan.suite)
    out: List[Comparison] = []
    for task, fraction in columns(plan, protocol):
        best = best_baseline(plan, cells, task, protocol, fraction)
        for family, versus in (("reference", settings["reference"]), ("best baseline", best)):
            out += _column_comparisons(plan, cells, protocol, task, fraction, versus, family, settings["confidence"])
    for family in ("reference", "best baseline"):
        _adjust([c for c in out if c.family == family], settings)
    return out


def comparisons_versus(plan: Plan, cells: Dict[CellKey, CellRuns], protocol: str, versus: str, family: str) -> List[Comparison]:
    """Every method against one fixed row (e.g. the random-init encoder) in every column of a table, with the
    suite's tests and their p-values adjusted across that table as one family."""
    settings = statistics_settings(plan.suite)
    out = [c for task, fraction in columns(plan, protocol) for c in _column_comparisons(plan, cells, protocol, task, fraction, versus, family, settings["confidence"])]
    _adjust(out, settings)
    return out


def per_class_delong(plan: Plan, records, store: ResultStore) -> List[Dict]:
    """DeLong test of every class, for every run the reference shares with another method (long format)."""
    settings = statistics_settings(plan.suite)
    by_key = {r["key"]: r for r in records}
    jobs = {}
    for job in plan.eval_jobs:
        if job.key in by_key and by_key[job.key].get("metric") == "macro_auc" and (store.predictions_dir / f"{job.key}.npz").exists():
            jobs[(job.pretrain.method, job.task["name"], job.protocol, job.fraction, *job.run)] = job.key
    reference_seeds = sorted({k[4] for k in jobs if k[0] == settings["reference"]})
    pairs = []
    for (method, task, protocol, fraction, pretrain_seed, seed), key in sorted(jobs.items()):
        # an external encoder (no pretraining seed) is compared with each pretraining run of the reference
        for reference_seed in (reference_seeds if pretrain_seed == FIXED_RUN else [pretrain_seed]):
            reference_key = jobs.get((settings["reference"], task, protocol, fraction, reference_seed, seed))
            if method != settings["reference"] and reference_key is not None:
                pairs.append((method, task, protocol, fraction, reference_seed, seed, key, reference_key))
    rows: List[Dict] = []
    for method, task, protocol, fraction, pretrain_seed, seed, key, reference_key in pairs:
        mine, theirs = store.load_predictions(key), store.load_predictions(reference_key)
        if "labels" not in mine or not np.array_equal(mine["test_indices"], theirs["test_indices"]):
            continue
        class_names = [str(name) for name in mine["class_names"]] if "class_names" in mine else [str(k) for k in range(mine["labels"].shape[1])]
        block = []
        for k in range(mine["labels"].shape[1]):
            column = mine["labels"][:, k]
            if column.min() == column.max():
                continue
            test = stats.delong_test(column, theirs["scores"][:, k], mine["scores"][:, k])
            block.append({"protocol": protocol, "task": task, "fraction": fraction, "pretrain_seed": pretrain_seed, "seed": seed,
                          "method": settings["reference"], "versus": method, "class": class_names[k],
                          "auc_method": test["auc_a"], "auc_versus": test["auc_b"], "difference": test["difference"], "z": test["z"], "p": test["p"]})
        for row, p in zip(block, stats.adjust_p_values([r["p"] for r in block], "bh")):
            row["p_bh_over_classes"] = float(p)
        rows += block
    return rows


def cell_variance_components(runs: CellRuns) -> Dict[str, float]:
    """The cell's sd between pretraining runs and between evaluation seeds of one encoder (metric units)."""
    return stats.variance_components({seed: [runs.values[r] for r in group] for seed, group in runs.by_pretraining().items()})


def cell_intervals(plan: Plan, cells: Dict[CellKey, CellRuns]) -> Dict[CellKey, Tuple[float, float]]:
    confidence = statistics_settings(plan.suite)["confidence"]
    return {key: cell_interval(runs, confidence) for key, runs in cells.items()}

