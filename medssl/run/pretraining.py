"""The pretrainings a plan's pending evaluations need, for both tracks: reused when their encoder is stored and
intact, resumed or trained otherwise, recorded once finished; one that fails is listed with the evaluations it
leaves undone, and the others go on."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List, Optional

from medssl.data.loaded import DatasetCache
from medssl.plan.jobs import EvalJob, PretrainJob
from medssl.pretrain.callbacks import PretrainingFailed
from medssl.pretrain.encoder import ENCODER_FILE, encoder_status, load_encoder
from medssl.pretrain.rundir import discard_resume_point
from medssl.pretrain.train import run_pretraining
from medssl.record import provenance
from medssl.record.store import ResultStore
from medssl.runtime.options import RunOptions


def pretraining_verb(run_dir: Path) -> str:
    """What the run is about to do with a pretraining, for its log: reuse a finished, intact encoder, resume from
    ``last.ckpt``, or pretrain from the start."""
    if encoder_status(run_dir / ENCODER_FILE) == "done":
        return "reusing"
    return "resuming" if (run_dir / "last.ckpt").exists() else "pretraining"


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


def pretrain_needed(pending: List[EvalJob], datasets: DatasetCache, checkpoints: Path, store, o: RunOptions):
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
                    dataclasses.replace(o, progress=o.progress and o.global_rank == 0),
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
