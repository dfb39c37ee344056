"""The checks before any work, for both tracks: every dataset's layout, the data a stored result or a resumed
pretraining was made from (its fingerprint), each task's splits and label fractions (large enough to train and
score), and encoders brought from files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from datasets import DatasetError, ImageDataset, load_dataset
from datasets.cache import LayoutChecked, layout_only
from medssl.data.loaded import DatasetCache, dataset_identity
from medssl.evaluate.external import load_external
from medssl.evaluate.metrics import multilabel_auc
from medssl.plan.jobs import EvalJob, task_type
from medssl.pretrain.rundir import DATA_FILE
from medssl.record.store import ResultStore
from medssl.suite.protocol import ConfigError


def dataset_specs(jobs: List[EvalJob]) -> List[Dict[str, Any]]:
    """Each dataset spec the jobs read (pretraining corpora and task datasets), once."""
    specs: Dict[str, Dict[str, Any]] = {}
    for job in jobs:
        for spec in (job.pretrain.config["corpus"], job.task["dataset"]):
            specs.setdefault(dataset_identity(spec), spec)
    return list(specs.values())


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
