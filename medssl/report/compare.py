"""Comparisons behind the reports' significance marks, confidence intervals and statistics tables.

In every table column (protocol, task, label fraction) every method is compared with the suite's reference method
(``statistics.reference``, default CoBooM). A row's **replicates** are its pretraining runs, each the mean over its
evaluation seeds (the evaluation seeds both rows have); an encoder brought from a file has fixed weights and no
pretraining run, so its replicates are its evaluation seeds.

* **The test behind the marks** (:func:`medssl.report.stats.two_sample_run_test`) is Welch's two-sample t-test over the two
  rows' replicates, its variance plus the test-image bootstrap variance of the same difference (macro AUC from the
  stored scores, mean Dice from the per-image Dice; the same resampled images for both rows). The runs are not paired
  by pretraining seed: two methods' runs with the same seed share nothing that survives pretraining (docs/statistics.md:
  F = 1.13 on quick-seeds). Each row keeps its own spread, so a method with three times another's
  run sd, or a fixed-weight row whose only randomness is its evaluation seeds, keeps the test's size. A trained row
  with fewer than two pretraining runs gives no test and no mark: the encoders' own randomness, several points on
  the quick suite (docs/reproducibility.md), would be untested.
* **The family is the column**: p-values are adjusted (Holm by default, Benjamini-Hochberg as an option) over the
  comparisons with the reference in one column, the claims a reader makes about one experiment (one dataset at one
  label budget), as challengeR adjusts within each task.
* **† needs no chosen baseline**: the reference's row is marked where it is above every baseline of the column (the
  suite's pretrained methods other than the reference and its ablations), each of those differences significant in
  the column's family. Choosing "the best baseline" by its test mean and testing only against it would test on the
  data that chose it.
* **Conditional on these pretraining runs**, for statistics.md only: for AUC a bootstrap over test images of the
  difference of the rows' values (stratified by each image's rarest finding, whole patients when patient ids are
  stored); for per-image Dice a paired Wilcoxon signed-rank test of the per-image Dice averaged over each row's runs.

A cell's value is the mean over its pretraining runs of each run's mean over evaluation seeds. Per-class DeLong
tests of every run pair go to a long CSV. The bootstrap of each record is cached next to the records
(``results/<suite>/bootstrap/``): it is derived from the stored predictions only, so deleting it changes nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import stats as scipy_stats

from datasets.cache import save_npy
from datasets.storage import write_atomic
from medssl.evaluate.metrics import multilabel_auc
from medssl.plan.jobs import FIXED_RUN, Plan
from medssl.record.store import ResultStore
from medssl.report import stats
from medssl.suite.config import statistics_settings
from medssl.suite.protocol import stable_hash

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
        return self.replicate_values(self.evaluation_seeds())

    @property
    def n_pretraining(self) -> int:
        return 0 if self.fixed else len({run[0] for run in self.values})

    @property
    def fixed(self) -> bool:
        """An external encoder's cell: fixed weights, no pretraining seed (``plan.FIXED_RUN``)."""
        return bool(self.values) and all(run[0] == FIXED_RUN for run in self.values)

    @property
    def unit(self) -> str:
        """What the cell's replicates are in the comparisons: pretraining runs, or a fixed encoder's evaluation seeds."""
        return "evaluation seeds" if self.fixed else "pretraining runs"

    def evaluation_seeds(self) -> set:
        return {run[1] for run in self.values}

    def _replicate_groups(self, seeds: set) -> List[List[RunKey]]:
        """The runs behind each replicate, restricted to evaluation seeds ``seeds``: one group per pretraining run
        (its evaluation seeds), or, for fixed weights, one group per evaluation seed."""
        kept = [run for run in sorted(self.values) if run[1] in seeds]
        if self.fixed:
            return [[run] for run in kept]
        return [group for group in self.by_pretraining(kept).values()]

    def replicate_values(self, seeds: set) -> List[float]:
        """The replicates' values over evaluation seeds ``seeds`` (see :meth:`_replicate_groups`)."""
        return [float(np.mean([self.values[r] for r in group])) for group in self._replicate_groups(seeds)]

    def resampled_mean(self, seeds: set) -> Optional[np.ndarray]:
        """The cell's value over evaluation seeds ``seeds`` under each test-image resample, averaged as the cell
        itself (evaluation seeds within a run, then runs); None unless every run has its resamples."""
        groups = self._replicate_groups(seeds)
        if not groups or not all(r in self.bootstrap for group in groups for r in group):
            return None
        return np.mean([np.mean([self.bootstrap[r] for r in group], axis=0) for group in groups], axis=0)

    def per_image_mean(self, seeds: set) -> Optional[np.ndarray]:
        """Per-image Dice averaged over the runs with evaluation seeds ``seeds``; None unless every run has it."""
        kept = [run for run in sorted(self.values) if run[1] in seeds]
        if not kept or not all(r in self.per_image for r in kept):
            return None
        return np.mean([self.per_image[r] for r in kept], axis=0)


@dataclasses.dataclass
class Comparison:
    """One row of statistics.md: ``method`` against ``versus`` in one table column, the test behind the marks."""

    protocol: str
    task: str
    fraction: float
    method: str
    versus: str
    family: str  # "reference", or what another row that every method is tested against stands for ("random init")
    n_method: int  # the row method's replicates behind the test
    n_versus: int
    unit_method: str  # "pretraining runs", or "evaluation seeds" of fixed weights
    unit_versus: str
    difference: float  # method - versus, metric points (x100): the difference of the two cells' values
    ci_low: float  # CI of the difference from the test, points
    ci_high: float
    df: float  # Welch-Satterthwaite degrees of freedom
    p: float  # the test behind the marks (NaN where a side has fewer than two replicates)
    p_images: float  # conditional on these pretraining runs: over test images only
    image_test: str  # "bootstrap", "wilcoxon" or "" when no per-image data are stored
    p_adjusted: float = math.nan
    significant: bool = False

    @property
    def testable(self) -> bool:
        return math.isfinite(self.p)


class BootstrapCache:
    """Resampled metric of each record, computed once from its stored predictions (results/<suite>/bootstrap/)."""

    def __init__(self, store: ResultStore, settings: Dict):
        self.store, self.settings = store, settings
        self.directory = store.directory / "bootstrap"
        self._weights: Dict[str, np.ndarray] = {}

    def _resample_weights(self, task: str, predictions: Dict[str, np.ndarray]) -> Tuple[str, np.ndarray]:
        labels = predictions["labels"]
        groups = predictions.get("patient_ids", np.arange(len(labels)))
        ident = stable_hash(
            [
                task,
                np.asarray(predictions["test_indices"]).tolist(),
                np.asarray(groups).tolist(),
                self.settings["resamples"],
                self.settings["seed"],
            ],
            16,
        )
        if ident not in self._weights:
            unit_of_item = np.unique(groups, return_inverse=True)[1]
            n_units = int(unit_of_item.max()) + 1
            unit_labels = np.zeros((n_units, labels.shape[1]), dtype=bool)
            np.logical_or.at(unit_labels, unit_of_item, labels.astype(bool))
            seed = int(stable_hash([task, self.settings["seed"]], 8), 16)
            unit_weights = stats.bootstrap_weights(
                n_units, int(self.settings["resamples"]), seed, stats.macro_auc_strata(unit_labels)
            )
            # multiplicities as small integers: 2,000 resamples of NIH's 25,596 test images take 100 MB, not 400
            self._weights[ident] = unit_weights[:, unit_of_item].astype(np.uint16)
        return ident, self._weights[ident]

    @staticmethod
    def _metric(metric: str, predictions: Dict[str, np.ndarray], weights: np.ndarray) -> np.ndarray:
        if metric == "macro_auc":
            return stats.macro_from_class_aucs(
                stats.weighted_auc_matrix(predictions["labels"], predictions["scores"], weights)
            )
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
        values = np.concatenate(
            [
                self._metric(metric, predictions, weights[start : start + RESAMPLE_CHUNK].astype(np.float64))
                for start in range(0, len(weights), RESAMPLE_CHUNK)
            ]
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: save_npy(tmp, values))
        return values


def recomputed_value(record: Dict, predictions: Dict[str, np.ndarray]) -> Optional[float]:
    """A record's metric recomputed from its stored per-image predictions (None where they cannot give it)."""
    if record.get("metric") == "macro_auc" and "scores" in predictions:
        return multilabel_auc(
            predictions["labels"], predictions["scores"], [str(c) for c in predictions["class_names"]]
        )["macro_auc"]
    if record.get("metric") == "mean_dice" and "per_image_dice" in predictions:
        return float(np.mean(predictions["per_image_dice"]))
    return None


def record_problems(plan: Plan, records: List[Dict], store: Optional[ResultStore] = None) -> List[str]:
    """What a report must not use silently (each named, for a warning): a record without a key; a key stored more
    than once (the last one is used); a record whose predictions file is missing (its cell loses the test-image
    statistics), cannot be read, or gives another value than the record says (one of them was changed)."""
    jobs = {job.key: job for job in plan.eval_jobs}
    problems = [
        f"a record without a key is skipped (fields: {', '.join(sorted(r)[:5])} ...)" for r in records if "key" not in r
    ]
    values: Dict[str, List[float]] = {}
    for record in records:
        if record.get("key") in jobs:
            values.setdefault(record["key"], []).append(record.get("value"))
    for key, stored in values.items():
        if len(stored) > 1:
            problems.append(
                f"record {key} ({jobs[key].describe()}) is stored {len(stored)} times, values {', '.join(f'{v:.4f}' for v in stored)}; the last one is used"
            )
    if store is None:
        return problems
    latest = {r["key"]: r for r in records if r.get("key") in jobs}
    for key, record in latest.items():
        path = store.predictions_dir / f"{key}.npz"
        if not path.exists():
            problems.append(
                f"record {key} ({jobs[key].describe()}): {path} is missing, so its cell has no test-image statistics"
            )
            continue
        try:
            value = recomputed_value(record, store.load_predictions(key))
        except Exception as err:  # noqa: BLE001 - a damaged file is named, never a traceback
            problems.append(
                f"record {key} ({jobs[key].describe()}): {path} cannot be read ({type(err).__name__}); its cell has no test-image statistics"
            )
            continue
        if value is not None and not math.isclose(value, float(record["value"]), rel_tol=0, abs_tol=1e-6):
            problems.append(
                f"record {key} ({jobs[key].describe()}) says {float(record['value']):.6f} but its predictions give {value:.6f}: the record or {path.name} was changed"
            )
    return problems


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
        try:
            resampled = cache.resampled(job.key, job.task["name"], record.get("metric"))
            if record.get("metric") == "mean_dice" and (store.predictions_dir / f"{job.key}.npz").exists():
                runs.per_image[run] = store.load_predictions(job.key)["per_image_dice"]
        except Exception:  # noqa: BLE001 - a damaged predictions file: named by record_problems, the cell keeps its value
            continue
        if resampled is not None:
            runs.bootstrap[run] = resampled
    return cells


def over_pretraining(plan: Plan) -> bool:
    """Whether the suite replicates pretraining (two or more seeds): then a cell's sd is over pretraining runs, not
    over the evaluation seeds of its single run."""
    return len(plan.suite["pretrain"]["seeds"]) > 1


def cell_interval(runs: CellRuns, confidence: float = 0.95, replicated: bool = True) -> Tuple[float, float]:
    """CI of the cell's value over its replicates and test images where it has two or more (pretraining runs; a fixed
    encoder's evaluation seeds, its whole randomness, in a suite that replicates pretraining: ``replicated``). A
    trained cell with one pretraining run, and a fixed one beside such cells, is conditional on its runs: the image
    bootstrap when stored, else a t interval over its evaluation seeds."""
    seeds = runs.evaluation_seeds()
    image_resamples = runs.resampled_mean(seeds)
    if (runs.fixed and replicated) or runs.n_pretraining >= 2:
        test = stats.pretraining_run_test(runs.replicate_values(seeds), image_resamples, confidence)
        if math.isfinite(test["ci_low"]):
            return (test["ci_low"], test["ci_high"])
    if image_resamples is not None:
        return stats.percentile_interval(image_resamples, confidence)
    values = np.array(list(runs.values.values()))
    if len(values) < 2:
        return (math.nan, math.nan)
    half = scipy_stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return (float(values.mean() - half), float(values.mean() + half))


def compare_runs(a: CellRuns, b: CellRuns, confidence: float = 0.95) -> Dict[str, float]:
    """The test of a - b behind the marks (see the module docstring), over the evaluation seeds both rows have;
    metric points in the differences and CI. Keys: the fields of :class:`Comparison` from ``n_method`` to
    ``image_test``."""
    seeds = a.evaluation_seeds() & b.evaluation_seeds()
    mine, theirs = a.replicate_values(seeds), b.replicate_values(seeds)
    out = {
        "n_method": len(mine),
        "n_versus": len(theirs),
        "unit_method": a.unit,
        "unit_versus": b.unit,
        "difference": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "df": math.nan,
        "p": math.nan,
        "p_images": math.nan,
        "image_test": "",
    }
    if not seeds:
        return out
    resampled_a, resampled_b = a.resampled_mean(seeds), b.resampled_mean(seeds)
    image_resamples = resampled_a - resampled_b if resampled_a is not None and resampled_b is not None else None
    test = stats.two_sample_run_test(mine, theirs, image_resamples, confidence)
    out.update(
        difference=100 * test["estimate"],
        df=test["df"],
        p=test["p"],
        ci_low=100 * test["ci_low"],
        ci_high=100 * test["ci_high"],
    )
    if image_resamples is not None:
        out.update(p_images=stats.bootstrap_p_value(image_resamples, test["estimate"]), image_test="bootstrap")
    dice_a, dice_b = a.per_image_mean(seeds), b.per_image_mean(seeds)
    if dice_a is not None and dice_b is not None:  # per-image Dice: the rank test, not the bootstrap
        out.update(p_images=stats.wilcoxon_signed_rank(dice_a, dice_b)["p"], image_test="wilcoxon")
    return out


def columns(plan: Plan, protocol: str) -> List[Tuple[str, float]]:
    return [(t["name"], float(f)) for t in plan.suite["tasks"] if protocol in t["protocols"] for f in t["fractions"]]


def baselines(plan: Plan) -> List[str]:
    """The rows the reference's † is tested against: the suite's pretrained methods other than the reference and
    its ablations. Encoders brought from files are not among them (other data, other protocol): the * on their
    rows compares them with the reference."""
    settings = statistics_settings(plan.suite)
    excluded = {settings["reference"], *settings["variants"], *(plan.suite.get("encoders") or {})}
    return [m for m in plan.suite["methods"] if m not in excluded]


def above_every_baseline(plan: Plan, column: List[Comparison]) -> bool:
    """The † rule: in one column's comparisons with the reference, every baseline has a significant comparison
    with the reference ahead (an intersection-union claim, Berger 1982: it holds at the family's level without a
    further adjustment, and no baseline is chosen on the data that then tests it)."""
    reference = statistics_settings(plan.suite)["reference"]
    by_method = {c.method: c for c in column if c.versus == reference}
    wanted = baselines(plan)
    return bool(wanted) and all(
        m in by_method and by_method[m].significant and by_method[m].difference < 0 for m in wanted
    )


def by_column(comparisons: List[Comparison]) -> Dict[Tuple[str, float], List[Comparison]]:
    """The comparisons of a table grouped by column (task, fraction), in table order."""
    out: Dict[Tuple[str, float], List[Comparison]] = {}
    for c in comparisons:
        out.setdefault((c.task, c.fraction), []).append(c)
    return out


def dagger_columns(plan: Plan, comparisons: List[Comparison]) -> List[Tuple[str, float]]:
    """The columns (task, fraction) of a table whose reference row carries the † (:func:`above_every_baseline`)."""
    return [column for column, group in by_column(comparisons).items() if above_every_baseline(plan, group)]


def _column_comparisons(
    plan: Plan, cells: Dict[CellKey, CellRuns], protocol: str, column: Tuple[str, float], versus: str, family: str
) -> List[Comparison]:
    """Every other method of the suite against ``versus`` in one table column, adjusted as one family."""
    task, fraction = column
    settings = statistics_settings(plan.suite)
    other = cells.get((versus, task, protocol, fraction))
    if other is None:
        return []
    out: List[Comparison] = []
    for method in plan.suite["methods"]:
        mine = cells.get((method, task, protocol, fraction))
        if method == versus or mine is None:
            continue
        result = compare_runs(mine, other, settings["confidence"])
        if result["n_method"] and result["n_versus"]:
            out.append(Comparison(protocol, task, fraction, method, versus, family, **result))
    _adjust(out, settings)
    return out


def _adjust(members: List[Comparison], settings: Dict) -> None:
    """Adjust the p-values of one family (``statistics.adjust``) and set ``significant``; an untestable comparison
    (a side with one replicate) is neither counted nor marked."""
    adjusted = stats.adjust_p_values([c.p for c in members], settings["adjust"])
    for comparison, p in zip(members, adjusted):
        comparison.p_adjusted = float(p)
        comparison.significant = bool(np.isfinite(p) and p < settings["alpha"])


def comparisons_versus(
    plan: Plan, cells: Dict[CellKey, CellRuns], protocol: str, versus: str, family: str
) -> List[Comparison]:
    """Every method against one row (the reference, or e.g. the random-init encoder) in every column of a table,
    p-values adjusted within each column."""
    return [
        c
        for column in columns(plan, protocol)
        for c in _column_comparisons(plan, cells, protocol, column, versus, family)
    ]


def comparisons(plan: Plan, cells: Dict[CellKey, CellRuns], protocol: str) -> List[Comparison]:
    """The comparisons of one table with the suite's reference method, adjusted within each column."""
    return comparisons_versus(plan, cells, protocol, statistics_settings(plan.suite)["reference"], "reference")


def cell_variance_components(runs: CellRuns) -> Dict[str, float]:
    """The cell's sd between pretraining runs and between evaluation seeds of one encoder (metric units)."""
    return stats.variance_components(
        {seed: [runs.values[r] for r in group] for seed, group in runs.by_pretraining().items()}
    )


def cell_intervals(plan: Plan, cells: Dict[CellKey, CellRuns]) -> Dict[CellKey, Tuple[float, float]]:
    confidence = statistics_settings(plan.suite)["confidence"]
    replicated = over_pretraining(plan)
    return {key: cell_interval(runs, confidence, replicated) for key, runs in cells.items()}
