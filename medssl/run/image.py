"""Execute a plan: pretrain what pending evaluations need, evaluate, append one record per finished job.

Finished work is never redone: evaluations whose key is in the result store are skipped, pretrainings whose
``encoder.pt`` exists are reused, and an interrupted pretraining resumes from its last epoch. Before any work every
dataset is checked (layout, then channels, masks and label fractions); a pretraining that fails (diverges) is
reported and skipped with its evaluations while the other jobs go on (``failed`` in the returned summary), and so is
an evaluation that raises (``failed_evaluations``).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from datasets import DatasetError, ImageDataset, load_dataset
from datasets.cache import LayoutChecked, layout_only
from medssl.data.loaded import DatasetCache, dataset_identity
from medssl.data.splits import label_fraction_indices
from medssl.evaluate.classify import extract_features, fine_tune, knn_classify, linear_probe
from medssl.evaluate.external import load_external
from medssl.evaluate.metrics import multilabel_auc
from medssl.evaluate.segment2d import train_segmentation
from medssl.plan.jobs import EvalJob, Plan, PretrainJob, task_type
from medssl.pretrain.train import (
    DATA_FILE,
    ENCODER_FILE,
    PretrainingFailed,
    discard_resume_point,
    encoder_status,
    load_encoder,
    run_pretraining,
)
from medssl.record import provenance
from medssl.record.store import ResultStore
from medssl.run.options import RunOptions
from medssl.runtime.precision import configure_cuda, fixed_precision, precision_for
from medssl.suite.protocol import ConfigError


def make_record(
    job: EvalJob,
    suite_name: str,
    dataset: ImageDataset,
    result: Dict[str, Any],
    metrics: Dict[str, Any],
    n_split: Dict[str, int],
    device: str,
    wall_time: float,
    precision: str,
    meta: Dict[str, Any],
    data: Dict[str, Any],
) -> Dict[str, Any]:
    """One evaluation's record; an external encoder's carries its file (path, SHA-256, normalisation, architecture);
    ``data``: :func:`data_stamp`."""
    return {
        "key": job.key,
        "suite": suite_name,
        "method": job.pretrain.method,
        "pretrain_hash": job.pretrain.hash,
        "pretrain_seed": job.pretrain.seed,
        "task": job.task["name"],
        "dataset": dataset.name,
        "data": data,
        "protocol": job.protocol,
        "fraction": job.fraction,
        "seed": job.seed,
        "metric": metrics["metric"],
        "value": metrics["value"],
        "per_class": metrics["per_class"],
        "excluded_classes": metrics["excluded_classes"],
        **({"extra_metrics": metrics["extra"]} if "extra" in metrics else {}),
        "n_train": n_split["train"],
        "n_val": n_split["val"],
        "n_test": n_split["test"],
        "best_epoch": result["best_epoch"],
        "epochs": result["epochs"],
        "val_value": result["val_value"],
        "selected_l2": result.get("selected_l2"),
        "config_hash": job.key,
        "config": job.config,
        "pretrain_config": job.pretrain.config,
        **(
            {
                "external": {
                    **job.pretrain.external,
                    "architecture": meta["backbone"],
                    "file_channels": meta["external"]["file_channels"],
                    "prefix_found": meta["external"]["prefix"],
                }
            }
            if job.pretrain.external
            else {}
        ),
        **provenance.record_provenance(device, precision, wall_time),
    }


def test_predictions(
    dataset: ImageDataset, test_idx: np.ndarray, scores: Optional[np.ndarray] = None
) -> Dict[str, np.ndarray]:
    """What the paired statistics need from one evaluation (medssl/report/compare.py): per-image test scores (if any) with
    the labels, patient ids (the bootstrap's resampling unit) and class names, so reports never reread the dataset."""
    out = {
        "test_indices": test_idx.astype(np.int32),
        "labels": np.asarray(dataset.labels)[test_idx].astype(np.uint8),
        "patient_ids": np.asarray(dataset.patient_ids)[test_idx].astype(np.int64),
        "class_names": np.asarray(dataset.class_names, dtype=str),
    }
    if scores is not None:
        out["scores"] = np.asarray(scores, dtype=np.float32)
    return out


def evaluate_classification(
    job: EvalJob,
    encoder,
    meta,
    dataset: ImageDataset,
    features,
    train_idx,
    split,
    image_size: int,
    device: str,
    progress: bool,
    precision: str,
    log_dir: Optional[Path] = None,
    logger: Optional[str] = None,
):
    """Linear probe or kNN (on ``features``, extracted once per encoder and task) or fine-tuning; macro AUC on the test split.
    Returns (result, metrics, predictions, log summary, precision used)."""
    labels = np.asarray(dataset.labels)
    settings = job.config["settings"]
    if job.protocol == "linear":
        result = linear_probe(
            features, labels, train_idx, split["val"], split["test"], dataset.class_names, settings, job.seed
        )
    elif job.protocol == "knn":
        result = knn_classify(features, labels, train_idx, split["val"], split["test"], dataset.class_names, settings)
    else:
        result = fine_tune(
            copy.deepcopy(encoder),
            meta,
            image_size,
            dataset.images,
            labels,
            train_idx,
            split["val"],
            split["test"],
            dataset.class_names,
            settings,
            job.seed,
            device=device,
            progress=progress,
            precision=precision,
            log_dir=log_dir,
            logger=logger,
        )
    auc = multilabel_auc(labels[split["test"]], result["test_scores"], dataset.class_names)
    metrics = {
        "metric": "macro_auc",
        "value": auc["macro_auc"],
        "per_class": auc["per_class_auc"],
        "excluded_classes": auc["excluded_classes"],
    }
    # linear probes and kNN run in fp32 on cached features whatever the fine-tuning precision
    used = precision_for(device, precision) if job.protocol == "finetune" else "32-true"
    return (
        result,
        metrics,
        test_predictions(dataset, split["test"], result["test_scores"]),
        f"test macro AUC {auc['macro_auc']:.4f}",
        used,
    )


def evaluate_segmentation(
    job: EvalJob, encoder, meta, dataset: ImageDataset, train_idx, split, image_size: int, device: str
):
    """U-Net decoder on the frozen (``linear``) or trained (``finetune``) encoder; per-image Dice on the test split.
    Returns (result, metrics, predictions, log summary, precision used)."""
    result = train_segmentation(
        copy.deepcopy(encoder),
        meta,
        image_size,
        dataset.images,
        np.asarray(dataset.masks),
        train_idx,
        split["val"],
        split["test"],
        job.config["settings"],
        job.seed,
        freeze_encoder=job.protocol == "linear",
        device=device,
    )
    test = result["test"]
    metrics = {
        "metric": "mean_dice",
        "value": test["mean_dice"],
        "per_class": {},
        "excluded_classes": [],
        "extra": {k: test[k] for k in ("dice_positive", "n_positive", "dice_global", "false_positive_rate_empty")},
    }
    predictions = {
        **test_predictions(dataset, split["test"]),
        "per_image_dice": test["per_image_dice"].astype(np.float32),
    }
    summary = f"test mean Dice {test['mean_dice']:.4f} (positive images {test['dice_positive']:.4f})"
    return result, metrics, predictions, summary, fixed_precision(device)


def dataset_specs(jobs: List[EvalJob]) -> List[Dict[str, Any]]:
    """Each dataset spec the jobs read (pretraining corpora and task datasets), once."""
    specs: Dict[str, Dict[str, Any]] = {}
    for job in jobs:
        for spec in (job.pretrain.config["corpus"], job.task["dataset"]):
            specs.setdefault(dataset_identity(spec), spec)
    return list(specs.values())


def pretraining_verb(run_dir: Path) -> str:
    """What the run is about to do with a pretraining, for its log: reuse a finished, intact encoder, resume from
    ``last.ckpt``, or pretrain from the start."""
    if encoder_status(run_dir / ENCODER_FILE) == "done":
        return "reusing"
    return "resuming" if (run_dir / "last.ckpt").exists() else "pretraining"


def check_datasets(jobs: Sequence, data_root: Path, finished: Sequence = ()) -> Dict[str, Optional[str]]:
    """Every dataset the jobs read is present with the right layout, checked before any work (caches are not built
    here); one error lists every problem, so a missing EyePACS is found before NIH has been pretrained on. Returns the
    data fingerprint of each dataset of ``jobs`` and ``finished`` (jobs with stored results: their datasets need not
    be present, None where absent) by :func:`dataset_identity`, for :func:`check_unchanged`."""
    problems, fingerprints = [], {}
    required = {dataset_identity(spec) for spec in dataset_specs(jobs)}
    for spec in dataset_specs(list(jobs) + list(finished)):
        ident = dataset_identity(spec)
        try:
            with layout_only():
                fingerprints[ident] = load_dataset(spec["name"], data_root, **(spec.get("params") or {})).fingerprint
        except LayoutChecked as checked:
            fingerprints[ident] = checked.fingerprint
        except DatasetError as err:
            fingerprints[ident] = None
            message = str(err)
            if ident in required:
                problems.append(message if message.startswith(f"{spec['name']}") else f"{spec['name']}: {message}")
    problems = list(dict.fromkeys(problems))  # the folds of one dataset (CT suites) share one layout problem
    if problems:
        raise DatasetError(
            f"{len(problems)} of the suite's datasets cannot be used; nothing has been run:\n  " + "\n  ".join(problems)
            if len(problems) > 1
            else problems[0]
        )
    return fingerprints


def job_datasets(job) -> Dict[str, Dict[str, Any]]:
    """The dataset specs one evaluation job read, by role: its pretraining corpus (through the encoder) and its task."""
    return {"corpus": job.pretrain.config["corpus"], "task": job.task["dataset"]}


def data_stamp(job, datasets: DatasetCache) -> Dict[str, Dict[str, Any]]:
    """What a record stores of the data its job read: each dataset's name and data fingerprint (the corpus's is the
    one its encoder was trained from: :func:`check_unchanged` refused the run otherwise)."""
    return {
        role: {"name": spec["name"], "fingerprint": datasets.get(spec).fingerprint}
        for role, spec in job_datasets(job).items()
    }


def check_unchanged(
    jobs: Sequence, store: ResultStore, checkpoints: Path, fingerprints: Dict[str, Optional[str]]
) -> None:
    """Before any work: no stored record and no started or finished pretraining of ``jobs`` was computed from other
    data than the data root holds now (an edited label table, added or replaced images). Their job keys hash the
    configuration only, so they would be reused as if nothing had changed; instead one error names each changed
    dataset and what was made from it. Records and encoders from before data fingerprints were stored, and
    datasets absent now, are not compared."""
    stored = {record["key"]: record for record in store if record.get("data")}
    changed: Dict[str, Dict[str, Any]] = {}

    def compare(name: str, then: Optional[str], now: Optional[str], what: str, key: str) -> None:
        if then and now and then != now:
            entry = changed.setdefault(name, {"then": then, "now": now, "evaluations": set(), "pretrainings": set()})
            entry[what].add(key)

    for job in jobs:
        for role, spec in job_datasets(job).items():
            now = fingerprints.get(dataset_identity(spec))
            for key in job.record_keys:
                if key in stored:
                    compare(spec["name"], stored[key]["data"][role]["fingerprint"], now, "evaluations", key)
        used = checkpoints / job.pretrain.key / DATA_FILE
        if used.exists():
            corpus = job.pretrain.config["corpus"]
            compare(
                corpus["name"],
                json.loads(used.read_text()).get("fingerprint"),
                fingerprints.get(dataset_identity(corpus)),
                "pretrainings",
                job.pretrain.key,
            )
    if changed:
        lines = [
            f"{name} has changed since results were computed from it (data fingerprint {c['then']} then, {c['now']} now): "
            f"{len(c['evaluations'])} stored evaluations in {store.directory}, {len(c['pretrainings'])} pretrainings in {checkpoints}"
            for name, c in changed.items()
        ]
        raise DatasetError(
            "; ".join(lines)
            + ". Nothing has been run: to compute from the changed data use a new --out, to keep using the stored results restore the data as it was"
        )


def check_data(pending: Sequence, jobs: Sequence, data_root: Path, store: ResultStore, checkpoints: Path) -> None:
    """The checks every run (and dry run) makes before any work: the datasets of the ``pending`` jobs are usable
    (:func:`check_datasets`) and nothing stored for ``jobs`` came from other data (:func:`check_unchanged`)."""
    check_unchanged(jobs, store, checkpoints, check_datasets(pending, data_root, finished=jobs))


# a linear probe standardises the features over its training images and fine-tuning's BatchNorm needs two images
MIN_TRAIN_IMAGES = 2


def check_split_sizes(task: Dict[str, Any], dataset: ImageDataset) -> List[str]:
    """Every job of ``task`` can train and be scored: its smallest label fraction holds at least
    :data:`MIN_TRAIN_IMAGES` training images (a fraction's subset is never smaller than its target,
    medssl/data/splits.py), validation and test images exist, and a classification task has a class the validation and
    test macro AUCs can score. Returns the notes a run prints: classes that the test macro AUC leaves out."""
    name, train = task["name"], dataset.indices("train")
    smallest = min(float(f) for f in task["fractions"])
    target = int(round(smallest / 100 * len(train)))
    if target < MIN_TRAIN_IMAGES:
        needed = 100 * (MIN_TRAIN_IMAGES - 0.5) / max(len(train), 1)
        raise ConfigError(
            f"task {name!r}: label fraction {smallest:g}% of {len(train)} training images is {target} image{'s' if target != 1 else ''}; "
            f"every protocol needs at least {MIN_TRAIN_IMAGES} (use a fraction of at least {needed:.2g}% or more data)"
        )
    for split in ("val", "test"):
        if not len(dataset.indices(split)):
            raise ConfigError(
                f"task {name!r}: {dataset.name} has no {split} images, so nothing can be {'selected' if split == 'val' else 'scored'}; use more patients"
            )
    if task_type(task) == "segmentation":
        return []
    labels = np.asarray(dataset.labels)
    scored = {
        split: multilabel_auc(
            labels[dataset.indices(split)],
            np.zeros((len(dataset.indices(split)), labels.shape[1])),
            dataset.class_names,
        )
        for split in ("val", "test")
    }
    for split, auc in scored.items():
        if not auc["per_class_auc"]:
            raise ConfigError(
                f"task {name!r}: no class of {dataset.name} has both a positive and a negative {split} image, so its macro AUC is undefined; use more patients"
            )
    excluded = scored["test"]["excluded_classes"]
    return (
        [
            f"task {name!r}: {len(excluded)} of {len(dataset.class_names)} classes have no positive (or no negative) test image and are left out of its macro AUC: {', '.join(excluded)}"
        ]
        if excluded
        else []
    )


def check_tasks(jobs: List[EvalJob], datasets: DatasetCache) -> List[str]:
    """What would otherwise fail only after pretraining: a task whose images have other channels than its
    pretraining corpus, a segmentation task without masks, splits too small to train or score on
    (:func:`check_split_sizes`). Loads (builds the caches of) every dataset the jobs need, before any pretraining.
    Returns the notes for the log (classes left out of a macro AUC)."""
    checked, notes = set(), []
    for job in jobs:
        task = job.task
        if task["name"] in checked:
            continue
        checked.add(task["name"])
        corpus, dataset = datasets.get(job.pretrain.config["corpus"]), datasets.get(task["dataset"])
        volumes = [d.name for d in (corpus, dataset) if hasattr(d, "case_ids")]
        if volumes:
            raise ConfigError(
                f"task {task['name']!r}: {volumes[0]} holds CT volumes, but this suite's methods and protocols take 2D images; "
                "use an image dataset, or run it in a CT suite (track: ct), e.g. --suite vox2vec3d"
            )
        if dataset.channels != corpus.channels:
            raise ConfigError(
                f"task {task['name']!r} has {dataset.channels}-channel images but its pretraining corpus {corpus.name!r} has {corpus.channels}-channel images; pair each task with a corpus of its kind (tasks[].pretrain)"
            )
        if task_type(task) == "segmentation" and dataset.masks is None:
            raise ConfigError(
                f"task {task['name']!r} is a segmentation task but dataset {dataset.name!r} has no masks; use a dataset with masks (synthetic_cxr, siim_acr)"
            )
        notes += check_split_sizes(task, dataset)
    return notes


def check_external_encoders(jobs, datasets: DatasetCache) -> None:
    """Every external encoder the jobs need loads for its corpus's channels, checked before any pretraining: a
    garbage or mismatched file stops the run with its name before anything is computed."""
    for pjob in jobs:
        if pjob.external is not None:
            load_external(pjob.method, pjob.external, datasets.get(pjob.config["corpus"]).channels)


def store_pretraining(
    store: ResultStore, pjob: PretrainJob, encoder_path: Path, device: str, keep_checkpoints: bool
) -> None:
    """After a pretraining is finished (or reused): its summary line in ``pretraining.jsonl`` (wall time, history,
    precision, data fingerprint, provenance), and its ``last.ckpt`` deleted unless ``keep_checkpoints``. Both
    tracks call it (medssl/run/ct.py)."""
    _, meta = load_encoder(encoder_path)
    if not keep_checkpoints:
        discard_resume_point(encoder_path.parent)
    store.append_pretraining(
        {
            "key": pjob.key,
            "method": pjob.method,
            "hash": pjob.hash,
            "seed": pjob.seed,
            "config": pjob.config,
            "wall_time_s": meta["wall_time_s"],
            "pretrain_images": meta["pretrain_images"],
            "history": meta["history"],
            "precision": meta.get("precision"),
            "data_fingerprint": meta.get("data_fingerprint"),
            "git_commit": provenance.git_commit(),
            "hardware": provenance.hardware(device),
        }
    )


def run_plan(
    plan: Plan,
    data_root: Path,
    out_dir: Path,
    options: Optional[RunOptions] = None,
    store: Optional[ResultStore] = None,
) -> Dict[str, Any]:
    """Pretrain what the pending evaluations need, then evaluate and store records. In a multi-node run
    (``medssl.runtime.cluster``) every process joins the pretrainings and only global rank 0 stores and evaluates.
    ``options.logger`` (csv or tensorboard): Lightning logs of every pretraining (default csv) and fine-tuning
    (default none) next to the pretraining's checkpoint, OUT/checkpoints/<pretraining>/logs/ and
    .../finetune/<evaluation>/logs/. A finished pretraining's ``last.ckpt`` is deleted once its encoder is stored,
    unless ``options.keep_checkpoints``."""
    o = options or RunOptions()
    configure_cuda(o.device)
    provenance.git_commit()  # cached now: records name the code that was checked out when the run started
    store = store or ResultStore(Path(out_dir) / plan.suite["name"])
    done = store.keys()
    pending = [job for job in plan.eval_jobs if job.key not in done]
    o.log(
        f"{len(plan.eval_jobs)} evaluations in the plan, {len(plan.eval_jobs) - len(pending)} already done, {len(pending)} to run"
    )
    checkpoints = Path(out_dir) / "checkpoints"
    check_data(pending, plan.eval_jobs, data_root, store, checkpoints)
    if not pending:
        return {"ran": 0, "skipped": len(plan.eval_jobs), "failed": []}
    datasets = DatasetCache(data_root)
    for note in check_tasks(pending, datasets):
        o.log(f"note: {note}")
    check_external_encoders({job.pretrain.key: job.pretrain for job in pending}.values(), datasets)
    encoders, failed = _pretrain_needed(pending, datasets, checkpoints, store, o)
    skipped = len(plan.eval_jobs) - len(pending)
    if o.global_rank != 0:
        return {"ran": 0, "skipped": skipped, "failed": failed}
    groups: Dict[tuple, List[EvalJob]] = {}
    for job in pending:
        if job.pretrain.key in encoders:  # else its pretraining failed: listed in ``failed``
            groups.setdefault((job.pretrain.key, job.task["name"]), []).append(job)
    ran, failed_evaluations = 0, []
    for jobs in groups.values():
        group_ran, group_failed = _evaluate_task(
            jobs, encoders[jobs[0].pretrain.key], plan.suite["name"], datasets, checkpoints, store, o
        )
        ran, failed_evaluations = ran + group_ran, failed_evaluations + group_failed
    return {"ran": ran, "skipped": skipped, "failed": failed, "failed_evaluations": failed_evaluations}


def _pretrain_needed(pending: List[EvalJob], datasets: DatasetCache, checkpoints: Path, store, o: RunOptions):
    """The encoder file of each pretraining the pending evaluations need (None for an encoder brought from a file),
    pretrained or reused, and the pretrainings that failed, each with the evaluations it leaves undone."""
    encoders: Dict[str, Optional[Path]] = {}
    failed: List[str] = []
    for key, pjob in {job.pretrain.key: job.pretrain for job in pending}.items():
        if pjob.external is not None:
            encoders[key] = None  # nothing to pretrain: the file is read for each task (its channels)
            continue
        verb = pretraining_verb(checkpoints / key)
        o.log(f"{verb} {key}" + ("" if pjob.trains else " (random initialisation)"))
        try:
            # a reused encoder has just passed its SHA-256 check: run_pretraining would hash it again to return it
            encoders[key] = (
                checkpoints / key / ENCODER_FILE
                if verb == "reusing"
                else run_pretraining(
                    pjob,
                    datasets.get(pjob.config["corpus"]),
                    checkpoints,
                    device=o.device,
                    progress=o.progress and o.global_rank == 0,
                    precision=o.precision,
                    devices=o.devices,
                    compile_loss=o.compile_loss,
                    nodes=o.nodes,
                    logger=o.logger,
                )
            )
        except PretrainingFailed as err:
            skipped = sum(1 for job in pending if job.pretrain.key == key)
            failed.append(f"{key}: {err} ({skipped} evaluations not run)")
            o.log(f"  FAILED: {err}")
            continue
        if o.global_rank == 0:
            store_pretraining(store, pjob, encoders[key], o.device, o.keep_checkpoints)
    return encoders, failed


def _evaluate_task(
    jobs: List[EvalJob],
    encoder_file: Optional[Path],
    suite_name: str,
    datasets: DatasetCache,
    checkpoints: Path,
    store,
    o: RunOptions,
):
    """The evaluations of one encoder on one task (features extracted once, label subsets drawn once per seed);
    returns how many were stored and the ones that could not be computed, with their reason."""
    task, pjob = jobs[0].task, jobs[0].pretrain
    dataset = datasets.get(task["dataset"])
    encoder, meta = (
        load_external(pjob.method, pjob.external, dataset.channels)
        if pjob.external is not None
        else load_encoder(encoder_file)
    )
    labels = np.asarray(dataset.labels)
    split = {s: dataset.indices(s) for s in ("train", "val", "test")}
    # every encoder is evaluated at the suite's resolution (the random-init encoder has no training resolution)
    image_size = int(jobs[0].config["image_size"])
    features = None
    subsets: Dict[int, Dict[float, np.ndarray]] = {}
    ran, failures = 0, []
    for job in jobs:
        start = time.time()
        if job.seed not in subsets:
            fractions = sorted({float(f) for f in task["fractions"]})
            subsets[job.seed] = label_fraction_indices(split["train"], labels, dataset.patient_ids, fractions, job.seed)
        train_idx = subsets[job.seed][job.fraction]
        n_split = {"train": int(len(train_idx)), "val": int(len(split["val"])), "test": int(len(split["test"]))}
        try:
            if task_type(task) == "segmentation":
                result, metrics, predictions, summary, used = evaluate_segmentation(
                    job, encoder, meta, dataset, train_idx, split, image_size, o.device
                )
            else:
                if job.protocol in ("linear", "knn") and features is None:
                    features = extract_features(
                        encoder, dataset.images, image_size, meta["mean"], meta["std"], device=o.device
                    )
                result, metrics, predictions, summary, used = evaluate_classification(
                    job,
                    encoder,
                    meta,
                    dataset,
                    features,
                    train_idx,
                    split,
                    image_size,
                    o.device,
                    o.progress,
                    o.precision,
                    checkpoints / pjob.key / "finetune" / job.key,
                    o.logger,
                )
        except Exception as err:  # noqa: BLE001 - one evaluation that cannot be computed must not stop the others
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"
            failures.append(f"{job.describe()} ({job.key}): {reason}")
            o.log(f"  FAILED: {job.describe()}: {reason}")
            continue
        record = make_record(
            job,
            suite_name,
            dataset,
            result,
            metrics,
            n_split,
            o.device,
            time.time() - start,
            used,
            meta,
            data_stamp(job, datasets),
        )
        store.append(record, predictions=predictions)
        ran += 1
        chosen = (
            f"l2 {result['selected_l2']:g}"
            if result.get("selected_l2") is not None
            else (f"epoch {result['best_epoch']}" if result["best_epoch"] is not None else "nothing tuned")
        )
        o.log(f"  {job.describe()}: {summary} (val {result['val_value']:.4f}, {chosen})")
    return ran, failures
