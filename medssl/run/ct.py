"""The CT track (issue 21; ../shared/specs/vox2vec3d.md): a suite with ``track: ct`` runs vox2vec's 3D protocol
through the image suites' flow, suite -> plan -> pretrain -> checkpoint -> evaluate -> record -> report.

* **Plan** (:func:`build_ct_plan`): one pretraining per (CT method, corpus, pretraining seed), keyed by the method's
  settings and version, the corpus, the steps, the optimiser and the seed. Evaluations per (task, protocol, fold,
  evaluation seed): ``probe`` (both heads on the frozen FPN) and ``finetune`` of each pretrained FPN; ``scratch``
  and ``random_probe`` of the same FPN architecture from a random initialisation seeded with the pretraining seed,
  keyed by the architecture and that seed, not by the pretraining (they read none), so a changed pretraining
  setting keeps them. A task's ``folds`` (BTCV: the official 5-fold split, ``datasets/volumes.official_fold_split``)
  set the dataset's ``fold`` parameter: each fold is one more run of every row, as in the official README, whose
  +- is over folds.
* **Run** (:func:`run_ct_plan`): every dataset checked before any work (layout; CT volumes, labels on the task,
  volumes at least one patch), pretraining by :func:`medssl.pretrain.train.run_pretraining` (its CT branch: resumable,
  guarded, checksummed), evaluation by :func:`medssl.evaluate.segment3d.train_fpn_segmentation`. A probe gives two records
  (linear and non-linear head, selected together on the non-linear head's validation Dice, as the official code);
  every record holds the mean Dice over the 13 organs (official convention: an absent organ scores 1 when predicted
  empty), the per-organ means over the test CTs, and stores the per-CT, per-organ Dice for the paired tests over
  test CTs (medssl/report/ct.py). A job counts as done when all of its records exist; finished records are never
  redone.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from medssl.data.loaded import DatasetCache
from medssl.evaluate.classify import EvaluationDiverged
from medssl.evaluate.segment3d import train_fpn_segmentation
from medssl.plan.jobs import PretrainJob, corpora, method_settings, with_version
from medssl.pretrain.encoder import load_encoder
from medssl.record import provenance
from medssl.record.store import ResultStore
from medssl.run.checks import check_data, data_stamp
from medssl.run.pretraining import pretrain_needed
from medssl.runtime.options import RunOptions
from medssl.suite.protocol import PROTOCOL_VERSION, ConfigError, stable_hash
from methods import track_methods
from methods.vox2vec3d import FPN3d, architecture

TRAINED = ("probe", "finetune")  # protocols that evaluate the pretrained FPN
HEADS = {
    "probe": ("linear", "nonlinear"),
    "random_probe": ("linear", "nonlinear"),
    "finetune": ("linear",),
    "scratch": ("linear",),
}
MODES = {
    "probe": "probe",
    "random_probe": "probe",
    "finetune": "finetune",
    "scratch": "scratch",
}  # train_fpn_segmentation's modes
RANDOM_INIT = "random-init"  # the method field of the records of rows that start from a random FPN
NO_FOLD = -1  # the fold slot of a run on a task without folds


@dataclasses.dataclass
class CTJob:
    """One evaluation of the CT track: a protocol of one (pretrained or random) FPN on one task, fold and seed."""

    pretrain: PretrainJob
    task: Dict[str, Any]  # the suite's task with this fold's dataset spec
    protocol: str
    fold: Optional[int]
    seed: int
    config: Dict[str, Any]
    key: str

    @property
    def trained(self) -> bool:
        return self.protocol in TRAINED

    @property
    def method(self) -> str:
        """The records' method: the CT method whose encoder is evaluated, or ``random-init``."""
        return self.pretrain.method if self.trained else RANDOM_INIT

    @property
    def heads(self) -> tuple:
        return HEADS[self.protocol]

    def record_key(self, head: str) -> str:
        return f"{self.key}-{head}"

    @property
    def record_keys(self) -> List[str]:
        return [self.record_key(head) for head in self.heads]

    @property
    def run(self) -> tuple:
        """(pretraining seed, fold, evaluation seed): the run's place in a table cell."""
        return (self.pretrain.seed, NO_FOLD if self.fold is None else self.fold, self.seed)

    def describe(self) -> str:
        fold = "" if self.fold is None else f" fold={self.fold}"
        origin = "pretraining seed" if self.trained else "init seed"
        return f"{self.method} {self.task['name']} {self.protocol}{fold} {origin}={self.pretrain.seed} seed={self.seed}"


@dataclasses.dataclass
class CTPlan:
    suite: Dict[str, Any]
    pretrain_jobs: List[PretrainJob]
    eval_jobs: List[CTJob]


def is_ct_suite(suite: Dict[str, Any]) -> bool:
    return suite.get("track") == "ct"


def fold_task(task: Dict[str, Any], fold: Optional[int]) -> Dict[str, Any]:
    """The task with its dataset reading fold ``fold`` of the official split (unchanged without folds)."""
    if fold is None:
        return task
    dataset = {**task["dataset"], "params": {**(task["dataset"].get("params") or {}), "fold": int(fold)}}
    return {**task, "dataset": dataset}


def evaluation_seeds(suite: Dict[str, Any]) -> List[int]:
    evaluation = suite["evaluation"]
    return [int(s) for s in evaluation["segmentation3d"].get("seeds", evaluation["seeds"])]


def build_ct_plan(suite: Dict[str, Any]) -> CTPlan:
    pretrain = suite["pretrain"]
    protocol = {
        "epochs": int(pretrain["epochs"]),
        "steps_per_epoch": int(pretrain["steps_per_epoch"]),
        "optimizer": pretrain["optimizer"],
        "schedule": pretrain.get("schedule") or {"name": "constant"},
    }
    method_params = suite.get("method_params") or {}
    jobs: Dict[tuple, PretrainJob] = {}
    params_of: Dict[str, Dict[str, Any]] = {}
    for method in suite["methods"]:
        cls, params_of[method] = method_settings(method, method_params.get(method))
        if cls.track != "ct":
            raise ConfigError(
                f"{method} trains on 2D images and this suite on CT volumes (track: ct); its methods: {', '.join(track_methods('ct'))}"
            )
        for corpus_name, corpus in corpora(suite).items():
            for seed in pretrain["seeds"]:
                config = {
                    "track": "ct",
                    "method": method,
                    "params": params_of[method],
                    "corpus": with_version(corpus),
                    "protocol": protocol,
                    "seed": int(seed),
                    "method_version": cls.version,
                    "version": PROTOCOL_VERSION,
                }
                jobs[(method, corpus_name, int(seed))] = PretrainJob(
                    method, corpus_name, int(seed), config, stable_hash(config)
                )
    settings = {k: v for k, v in suite["evaluation"]["segmentation3d"].items() if k != "seeds"}
    eval_jobs: Dict[str, CTJob] = {}
    for method in suite["methods"]:
        for task in suite["tasks"]:
            corpus_name = task.get("pretrain", next(iter(corpora(suite))))
            if corpus_name not in corpora(suite):
                raise ConfigError(
                    f"task {task['name']!r} pretrains on unknown corpus {corpus_name!r}; corpora: {sorted(corpora(suite))}"
                )
            for fold in task.get("folds") or [None]:
                this = fold_task(task, fold)
                identity = {"name": task["name"], "dataset": with_version(this["dataset"])}
                for protocol_name in task["protocols"]:
                    for pretrain_seed in pretrain["seeds"]:
                        job = jobs[(method, corpus_name, int(pretrain_seed))]
                        source = (
                            {"pretrain": job.hash}
                            if protocol_name in TRAINED
                            else {"architecture": architecture(params_of[method]), "init_seed": int(pretrain_seed)}
                        )
                        for seed in evaluation_seeds(suite):
                            config = {
                                "track": "ct",
                                **source,
                                "task": identity,
                                "protocol": protocol_name,
                                "settings": settings,
                                "seed": int(seed),
                                "version": PROTOCOL_VERSION,
                            }
                            key = stable_hash(config, 16)
                            # two methods with one architecture share their random-init rows
                            eval_jobs.setdefault(key, CTJob(job, this, protocol_name, fold, int(seed), config, key))
    return CTPlan(suite, list(jobs.values()), list(eval_jobs.values()))


def check_ct_tasks(jobs: List[CTJob], datasets) -> None:
    """Before any pretraining: every corpus and task holds CT volumes, tasks have labels and validation and test
    CTs, and no volume is smaller than a pretraining or evaluation patch (each problem named, with what to do)."""
    seen = set()
    for job in jobs:
        ident = (
            job.pretrain.key,
            stable_hash(job.task["dataset"]),
            job.trained,
        )  # a random-init job does not check the pretraining patch
        if ident in seen:
            continue
        seen.add(ident)
        corpus, dataset = datasets.get(job.pretrain.config["corpus"]), datasets.get(job.task["dataset"])
        for what, data in (("pretraining corpus", corpus), (f"task {job.task['name']!r}", dataset)):
            if not hasattr(data, "case_ids"):
                raise ConfigError(
                    f"{what}: {data.name} holds 2D images; a CT suite (track: ct) reads CT datasets (synthetic_ct, btcv, amos, flare22)"
                )
        if dataset.labels is None:
            raise ConfigError(
                f"task {job.task['name']!r}: {dataset.name} has no organ labels; use labelled CTs (synthetic_ct part: labelled, btcv)"
            )
        empty = [s for s in ("train", "val", "test") if not len(dataset.indices(s))]
        if empty:
            raise ConfigError(
                f"task {job.task['name']!r}: {dataset.name} has no {' or '.join(empty)} CTs; use more labelled patients"
            )
        # each patch against the volumes it is cut from: evaluation patches from the task's CTs, pretraining ones from the corpus's
        patches = [
            (
                f"task {job.task['name']!r}",
                dataset,
                "evaluation patch_size",
                tuple(job.config["settings"]["patch_size"]),
            )
        ]
        if job.trained:
            patches.append(
                (
                    "pretraining corpus",
                    corpus,
                    "pretraining patch_size",
                    tuple(job.pretrain.config["params"]["patch_size"]),
                )
            )
        for what, data, setting, patch in patches:
            small = [data.case_ids[i] for i, v in enumerate(data.images) if any(s < p for s, p in zip(v.shape, patch))]
            if small:
                raise ConfigError(
                    f"{what}: {len(small)} CTs of {data.name} are smaller than the {setting} {list(patch)} at {list(data.spacing)} mm "
                    f"(e.g. {small[0]}, shape {list(data.images[data.case_ids.index(small[0])].shape)}); use a smaller patch or a finer spacing"
                )


def random_fpn(job: CTJob) -> torch.nn.Module:
    """The FPN3d of a random-init row, initialised from the pretraining seed (the same for every evaluation seed)."""

    torch.manual_seed(job.pretrain.seed)
    return FPN3d(**job.config["architecture"])


def ct_record(
    job: CTJob,
    head: str,
    suite_name: str,
    dataset,
    result: Dict[str, Any],
    device: str,
    wall_time: float,
    data: Dict[str, Any],
) -> Dict[str, Any]:
    dice = np.asarray(result["dice"], dtype=np.float64)
    annotated = set(dataset.annotated)
    per_organ = {
        name: (float(np.mean(dice[:, k])) if k + 1 in annotated else None) for k, name in enumerate(dataset.class_names)
    }
    split = {s: int(len(dataset.indices(s))) for s in ("train", "val", "test")}
    return {
        "key": job.record_key(head),
        "suite": suite_name,
        "method": job.method,
        "head": head,
        "pretrain_hash": job.pretrain.hash if job.trained else None,
        "pretrain_seed": job.pretrain.seed,
        "task": job.task["name"],
        "dataset": dataset.name,
        "data": data,
        "protocol": job.protocol,
        "fold": job.fold,
        "fraction": 100.0,
        "seed": job.seed,
        "metric": "mean_dice",
        "value": float(result["mean_dice"]),
        "per_class": per_organ,
        "excluded_classes": [name for k, name in enumerate(dataset.class_names) if k + 1 not in annotated],
        "n_train": split["train"],
        "n_val": split["val"],
        "n_test": split["test"],
        "best_epoch": result["best_epoch"],
        "epochs": result["epochs"],
        "val_value": result["val_value"],
        "selected_l2": None,
        "config_hash": job.key,
        "config": job.config,
        "pretrain_config": job.pretrain.config if job.trained else None,
        **provenance.record_provenance(device, "32-true", wall_time),
    }


def run_ct_plan(
    plan: CTPlan,
    data_root: Path,
    out_dir: Path,
    options: Optional[RunOptions] = None,
    store: Optional[ResultStore] = None,
) -> Dict[str, Any]:
    """Pretrain what the pending evaluations need, evaluate, append the records (see the module docstring); a
    finished pretraining's ``last.ckpt`` is deleted unless ``options.keep_checkpoints``. The CT track trains in
    fp32 on one device: ``options.precision``, ``devices`` and ``nodes`` are not used (the command line refuses
    them for a CT suite)."""
    o = options or RunOptions()
    store = store or ResultStore(Path(out_dir) / plan.suite["name"])
    done = store.keys()
    pending = [job for job in plan.eval_jobs if not all(key in done for key in job.record_keys)]
    o.log(
        f"{len(plan.eval_jobs)} evaluations in the plan, {len(plan.eval_jobs) - len(pending)} already done, {len(pending)} to run"
    )
    checkpoints = Path(out_dir) / "checkpoints"
    check_data(pending, plan.eval_jobs, data_root, store, checkpoints)
    if not pending:
        return {"ran": 0, "skipped": len(plan.eval_jobs), "failed": []}
    datasets = DatasetCache(data_root)
    check_ct_tasks(pending, datasets)
    encoders, failed = pretrain_needed([job for job in pending if job.trained], datasets, checkpoints, store, o)
    ran, failed_evaluations = 0, []
    for job in pending:
        if job.trained and job.pretrain.key not in encoders:
            continue  # its pretraining failed: listed in ``failed``
        try:
            evaluate_ct(job, encoders.get(job.pretrain.key), plan.suite["name"], datasets, done, store, o)
        except EvaluationDiverged as err:
            failed_evaluations.append(f"{job.describe()} ({job.key}): {err}")
            o.log(f"  FAILED: {job.describe()}: {err}")
            continue
        ran += 1
    return {
        "ran": ran,
        "skipped": len(plan.eval_jobs) - len(pending),
        "failed": failed,
        "failed_evaluations": failed_evaluations,
    }


def evaluate_ct(
    job: CTJob,
    encoder_file: Optional[Path],
    suite_name: str,
    datasets: DatasetCache,
    done,
    store: ResultStore,
    o: RunOptions,
) -> None:
    """One CT evaluation (a probe trains its two heads at once) and its records, each with the per-CT, per-organ test
    Dice as its predictions; :class:`EvaluationDiverged` when its loss is not finite (nothing stored)."""
    dataset = datasets.get(job.task["dataset"])
    encoder = load_encoder(encoder_file)[0] if job.trained else random_fpn(job)
    split = {s: dataset.indices(s) for s in ("train", "val", "test")}
    start = time.time()
    results = train_fpn_segmentation(
        encoder,
        MODES[job.protocol],
        dataset.images,
        dataset.labels,
        dataset.annotated,
        split["train"],
        split["val"],
        split["test"],
        job.config["settings"],
        job.seed,
        device=o.device,
    )
    wall_time = (time.time() - start) / len(results)
    for head, result in results.items():
        if job.record_key(head) in done:
            continue
        predictions = {
            "case_ids": np.asarray([dataset.case_ids[i] for i in split["test"]], dtype=str),
            "patient_ids": np.asarray(dataset.patient_ids)[split["test"]],
            "dice": np.asarray(result["dice"], dtype=np.float32),
            "class_names": np.asarray(dataset.class_names, dtype=str),
        }
        store.append(
            ct_record(job, head, suite_name, dataset, result, o.device, wall_time, data_stamp(job, datasets)),
            predictions=predictions,
        )
        o.log(
            f"  {job.describe()} {head}: test mean Dice {result['mean_dice']:.4f} (val {result['val_value']:.4f}, epoch {result['best_epoch']})"
        )
