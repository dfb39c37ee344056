"""Result records: one JSON line per (pretraining, task, protocol, fraction, seed), appended atomically.

``results/<suite>/records.jsonl`` is append-only: a record is written with one ``write`` of a whole line under an
exclusive lock and fsync'ed, so an interrupted run leaves either the full line or none, and finished results are
never rewritten. A torn last line (power loss mid-write) is skipped with a warning when reading; per-image test
predictions go to ``predictions/<key>.npz`` for the paired statistics. Shards (``records.<shard>.jsonl``) are
merged when reading.
"""
from __future__ import annotations

import fcntl
import json
import os
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np

RECORD_FIELDS = (
    "key", "suite", "method", "pretrain_hash", "task", "dataset", "protocol", "fraction", "seed", "metric", "value",
    "per_class", "excluded_classes", "n_train", "n_val", "n_test", "best_epoch", "val_value",
    "config_hash", "config", "git_commit", "packages", "hardware", "wall_time_s", "created",
)


def _append_line(path: Path, record: Dict) -> None:
    """One JSON line, written with a single write under an exclusive lock and fsync'ed."""
    line = (json.dumps(record, sort_keys=True, allow_nan=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class ResultStore:
    def __init__(self, directory: Path, shard: Optional[str] = None):
        self.directory = Path(directory)
        self.path = self.directory / (f"records.{shard}.jsonl" if shard else "records.jsonl")
        self.predictions_dir = self.directory / "predictions"

    def files(self) -> List[Path]:
        return sorted(self.directory.glob("records*.jsonl"))

    @property
    def pretraining_path(self) -> Path:
        return self.directory / "pretraining.jsonl"

    def pretraining_records(self) -> Dict[str, Dict]:
        """Pretraining summaries (one line per finished pretraining: wall time, per-epoch history) by job key."""
        if not self.pretraining_path.exists():
            return {}
        rows = [json.loads(line) for line in self.pretraining_path.read_text().splitlines() if line.strip()]
        return {row["key"]: row for row in rows}

    def append_pretraining(self, record: Dict) -> None:
        if record["key"] in self.pretraining_records():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        _append_line(self.pretraining_path, record)

    def __iter__(self) -> Iterator[Dict]:
        for path in self.files():
            with open(path, encoding="utf-8") as fh:
                for number, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        warnings.warn(f"{path}:{number}: skipping an incomplete record (interrupted write)")

    def records(self) -> List[Dict]:
        return list(self)

    def keys(self) -> set:
        return {r["key"] for r in self}

    def append(self, record: Dict, predictions: Optional[Dict[str, np.ndarray]] = None) -> None:
        missing = [f for f in RECORD_FIELDS if f not in record]
        if missing:
            raise ValueError(f"result record lacks fields {missing}")
        self.directory.mkdir(parents=True, exist_ok=True)
        if predictions is not None:
            self.predictions_dir.mkdir(exist_ok=True)
            tmp = self.predictions_dir / f"{record['key']}.tmp.npz"
            np.savez_compressed(tmp, **predictions)
            os.replace(tmp, self.predictions_dir / f"{record['key']}.npz")
        _append_line(self.path, record)

    def load_predictions(self, key: str) -> Dict[str, np.ndarray]:
        with np.load(self.predictions_dir / f"{key}.npz") as data:
            return {k: data[k] for k in data.files}
