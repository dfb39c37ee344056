"""A pretraining's folder, OUT/checkpoints/<key>/: config.json and data.json written when it starts, history.jsonl
(one row per epoch), Lightning's last.ckpt (the resume point, set aside when damaged, deleted once the encoder is
stored)."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pytorch_lightning as pl
import torch

from datasets.storage import write_atomic
from medssl.plan.jobs import PretrainJob
from medssl.pretrain.encoder import ENCODER_FILE, encoder_status, write_json
from medssl.record.store import read_lines

DATA_FILE = "data.json"  # the corpus's name and data fingerprint, written when the pretraining starts


def read_history(run_dir: Path) -> list:
    path = Path(run_dir) / "history.jsonl"
    if not path.exists():
        return []
    rows = read_lines(path)
    latest = {
        row["epoch"]: row for row in rows if not row.get("resumed")
    }  # a resumed epoch may appear twice; the last one counts
    return [latest[e] for e in sorted(latest)]


def resumes(run_dir: Path) -> list:
    """The ``resumed`` rows of ``history.jsonl``: when and at which epoch the pretraining was resumed."""
    path = Path(run_dir) / "history.jsonl"
    return [row for row in read_lines(path) if row.get("resumed")] if path.exists() else []


def readable_checkpoint(path: Path) -> bool:
    """Whether Lightning's ``last.ckpt`` loads (tensors and plain types only); a damaged one is renamed to
    ``last.ckpt.corrupt`` with a warning so that the pretraining starts over instead of failing in torch."""
    if not path.exists():
        return False
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception as err:  # noqa: BLE001
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        warnings.warn(
            f"{path} cannot be loaded ({type(err).__name__}); moved to {aside.name}, starting this pretraining over",
            stacklevel=2,
        )
        return False


def corpus_indices(job: PretrainJob, dataset) -> np.ndarray:
    """The corpus images (or CTs) a pretraining reads: those of the corpus's ``splits`` (default train and val), sorted."""
    return np.sort(np.concatenate([dataset.indices(s) for s in job.config["corpus"].get("splits", ["train", "val"])]))


def write_run_files(job: PretrainJob, dataset, run_dir: Path) -> None:
    """``config.json`` and :data:`DATA_FILE` in the run's folder, before any training: a resumed or reused
    pretraining is checked against the data it started from (medssl/runner.check_unchanged)."""
    write_atomic(run_dir / "config.json", lambda tmp: tmp.write_text(json.dumps(job.config, indent=1, sort_keys=True)))
    if not (run_dir / DATA_FILE).exists() or not (run_dir / "last.ckpt").exists():  # a resumed run keeps its start's
        write_json(run_dir / DATA_FILE, {"dataset": dataset.name, "fingerprint": dataset.fingerprint})


def discard_resume_point(run_dir: Path) -> int:
    """Delete a finished pretraining's ``last.ckpt`` (optimizer state, momentum copies, queues: several times the
    encoder; CoBooM's is ~710 MB) once ``encoder.pt`` has passed its checksum; returns the bytes freed. Nothing needs
    it after the export: the encoder is never pretrained again, and a rerun with other epochs is another job."""
    run_dir = Path(run_dir)
    resume = run_dir / "last.ckpt"
    if not resume.exists() or encoder_status(run_dir / ENCODER_FILE) != "done":
        return 0
    size = resume.stat().st_size
    resume.unlink()
    return size


def resume_from(run_dir: Path) -> Optional[str]:
    """The ``ckpt_path`` a pretraining continues from: its readable ``last.ckpt``, else None (it starts over), and
    then the rows of an earlier start in ``history.jsonl`` are set aside (``history.jsonl.discarded``), so the
    history lists each epoch of this start once."""
    resume = Path(run_dir) / "last.ckpt"
    if readable_checkpoint(resume):
        return str(resume)
    history = Path(run_dir) / "history.jsonl"
    if history.exists():
        os.replace(history, history.with_name("history.jsonl.discarded"))
    return None


def epoch_checkpoint(run_dir: Path) -> pl.callbacks.ModelCheckpoint:
    """Lightning's ``last.ckpt`` in the run's folder, rewritten after every epoch: the resume point."""
    return pl.callbacks.ModelCheckpoint(
        dirpath=run_dir, filename="last", save_top_k=1, every_n_epochs=1, enable_version_counter=False
    )


def encoder_meta(job: PretrainJob, run_dir: Path, dataset, started: float, **fields) -> Dict[str, Any]:
    """The metadata stored with an encoder: the method, its job's hash, what the trainer gives (``fields``:
    architecture, normalisation, precision, devices), the time since ``started``, the run's history and the
    corpus's data fingerprint."""
    return {
        "method": job.method,
        "hash": job.hash,
        **fields,
        "wall_time_s": round(time.time() - started, 2),
        "history": read_history(run_dir),
        "resumed": resumes(run_dir),
        "data_fingerprint": dataset.fingerprint,
    }
