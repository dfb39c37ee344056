"""Execute a plan: pretrain what pending evaluations need, evaluate, append one record per finished job.

Finished work is never redone: evaluations whose key is in the result store are skipped, pretrainings whose
``encoder.pt`` exists are reused, and an interrupted pretraining resumes from its last epoch. Before any work every
dataset is checked (layout, then channels, masks and label fractions); a pretraining that fails (diverges) is
reported and skipped with its evaluations while the other jobs go on (``failed`` in the returned summary), and so is
an evaluation that raises (``failed_evaluations``).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from datasets import ImageDataset
from medssl.data.loaded import DatasetCache
from medssl.data.splits import label_fraction_indices
from medssl.evaluate.classify import extract_features, fine_tune, knn_classify, linear_probe
from medssl.evaluate.external import load_external
from medssl.evaluate.inputs import EvalData, EvalRun
from medssl.evaluate.metrics import multilabel_auc
from medssl.evaluate.segment2d import train_segmentation
from medssl.plan.jobs import EvalJob, Plan, task_type
from medssl.pretrain.encoder import load_encoder
from medssl.record import provenance
from medssl.record.store import ResultStore
from medssl.run.checks import check_data, check_external_encoders, check_tasks, data_stamp
from medssl.run.pretraining import pretrain_needed
from medssl.runtime.options import RunOptions
from medssl.runtime.precision import configure_cuda, fixed_precision, precision_for


@dataclasses.dataclass
class Evaluation:
    """What one evaluation gives its record.

    Args:
        result: the protocol's selection (``val_value``, ``best_epoch``, ``epochs``, ``selected_l2`` for a probe).
        metrics: the test metric (``metric``, ``value``, ``per_class``, ``excluded_classes``, optional ``extra``).
        predictions: the per-image test arrays the paired statistics read (:func:`test_predictions`).
        summary: the log line's test part.
        precision: the precision it ran in (probes and kNN: fp32 on cached features).
    """

    result: Dict[str, Any]
    metrics: Dict[str, Any]
    predictions: Dict[str, np.ndarray]
    summary: str
    precision: str


def make_record(
    job: EvalJob,
    suite_name: str,
    dataset: ImageDataset,
    data: EvalData,
    evaluation: Evaluation,
    device: str,
    wall_time: float,
    meta: Dict[str, Any],
    stamp: Dict[str, Any],
) -> Dict[str, Any]:
    """One evaluation's record; an external encoder's carries its file (path, SHA-256, normalisation, architecture);
    ``stamp``: the data fingerprints (:func:`medssl.run.checks.data_stamp`)."""
    result, metrics = evaluation.result, evaluation.metrics
    return {
        "key": job.key,
        "suite": suite_name,
        "method": job.pretrain.method,
        "pretrain_hash": job.pretrain.hash,
        "pretrain_seed": job.pretrain.seed,
        "task": job.task["name"],
        "dataset": dataset.name,
        "data": stamp,
        "protocol": job.protocol,
        "fraction": job.fraction,
        "seed": job.seed,
        "metric": metrics["metric"],
        "value": metrics["value"],
        "per_class": metrics["per_class"],
        "excluded_classes": metrics["excluded_classes"],
        **({"extra_metrics": metrics["extra"]} if "extra" in metrics else {}),
        "n_train": int(len(data.train)),
        "n_val": int(len(data.val)),
        "n_test": int(len(data.test)),
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
        **provenance.record_provenance(device, evaluation.precision, wall_time),
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
    job: EvalJob, encoder, meta, data: EvalData, features, run: EvalRun, dataset: ImageDataset
) -> Evaluation:
    """Linear probe or kNN (on ``features``, extracted once per encoder and task) or fine-tuning; macro AUC on the
    test split."""
    labels, settings = data.targets, job.config["settings"]
    if job.protocol == "linear":
        result = linear_probe(features, labels, data.train, data.val, data.test, data.class_names, settings, job.seed)
    elif job.protocol == "knn":
        result = knn_classify(features, labels, data.train, data.val, data.test, data.class_names, settings)
    else:
        result = fine_tune(copy.deepcopy(encoder), meta, data, run)
    auc = multilabel_auc(labels[data.test], result["test_scores"], data.class_names)
    metrics = {
        "metric": "macro_auc",
        "value": auc["macro_auc"],
        "per_class": auc["per_class_auc"],
        "excluded_classes": auc["excluded_classes"],
    }
    return Evaluation(
        result,
        metrics,
        test_predictions(dataset, data.test, result["test_scores"]),
        f"test macro AUC {auc['macro_auc']:.4f}",
        # linear probes and kNN run in fp32 on cached features whatever the fine-tuning precision
        precision_for(run.device, run.precision) if job.protocol == "finetune" else "32-true",
    )


def evaluate_segmentation(job: EvalJob, encoder, meta, data: EvalData, run: EvalRun, dataset: ImageDataset):
    """U-Net decoder on the frozen (``linear``) or trained (``finetune``) encoder; per-image Dice on the test split."""
    result = train_segmentation(copy.deepcopy(encoder), meta, data, run, freeze_encoder=job.protocol == "linear")
    test = result["test"]
    metrics = {
        "metric": "mean_dice",
        "value": test["mean_dice"],
        "per_class": {},
        "excluded_classes": [],
        "extra": {k: test[k] for k in ("dice_positive", "n_positive", "dice_global", "false_positive_rate_empty")},
    }
    predictions = {
        **test_predictions(dataset, data.test),
        "per_image_dice": test["per_image_dice"].astype(np.float32),
    }
    summary = f"test mean Dice {test['mean_dice']:.4f} (positive images {test['dice_positive']:.4f})"
    return Evaluation(result, metrics, predictions, summary, fixed_precision(run.device))


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
    encoders, failed = pretrain_needed(pending, datasets, checkpoints, store, o)
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
    segmentation = task_type(task) == "segmentation"
    targets = np.asarray(dataset.masks) if segmentation else np.asarray(dataset.labels)
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
            labels = np.asarray(dataset.labels)
            subsets[job.seed] = label_fraction_indices(split["train"], labels, dataset.patient_ids, fractions, job.seed)
        data = EvalData(
            dataset.images,
            targets,
            subsets[job.seed][job.fraction],
            split["val"],
            split["test"],
            image_size,
            dataset.class_names,
        )
        run = EvalRun(
            job.config["settings"],
            job.seed,
            o.device,
            o.progress,
            o.precision,
            checkpoints / pjob.key / "finetune" / job.key,
            o.logger,
        )
        try:
            if segmentation:
                evaluation = evaluate_segmentation(job, encoder, meta, data, run, dataset)
            else:
                if job.protocol in ("linear", "knn") and features is None:
                    features = extract_features(
                        encoder, dataset.images, image_size, meta["mean"], meta["std"], device=o.device
                    )
                evaluation = evaluate_classification(job, encoder, meta, data, features, run, dataset)
        except Exception as err:  # noqa: BLE001 - one evaluation that cannot be computed must not stop the others
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"
            failures.append(f"{job.describe()} ({job.key}): {reason}")
            o.log(f"  FAILED: {job.describe()}: {reason}")
            continue
        stamp = data_stamp(job, datasets)
        record = make_record(job, suite_name, dataset, data, evaluation, o.device, time.time() - start, meta, stamp)
        store.append(record, predictions=evaluation.predictions)
        ran += 1
        o.log(
            f"  {job.describe()}: {evaluation.summary} (val {evaluation.result['val_value']:.4f}, {chosen(evaluation)})"
        )
    return ran, failures


def chosen(evaluation: Evaluation) -> str:
    """What the evaluation selected on the validation split, for the log."""
    result = evaluation.result
    if result.get("selected_l2") is not None:
        return f"l2 {result['selected_l2']:g}"
    return f"epoch {result['best_epoch']}" if result["best_epoch"] is not None else "nothing tuned"
