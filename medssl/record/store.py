"""Result records: one JSON line per (pretraining, task, protocol, fraction, seed), appended atomically.

``results/<suite>/records.jsonl`` is append-only: a record is written with one ``write`` of a whole line under an
exclusive lock and fsync'ed, and finished results are never rewritten. A torn last line (a kill or power loss
mid-write) is skipped with a warning when reading and set aside before the next append, so it never swallows the
next record; per-image test
predictions go to ``predictions/<key>.npz`` for the paired statistics. Shards (``records.<shard>.jsonl``) are
merged when reading.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np

from datasets.storage import DiskFull, write_all, write_atomic

RECORD_FIELDS = (
    "key",
    "suite",
    "method",
    "pretrain_hash",
    "task",
    "dataset",
    "protocol",
    "fraction",
    "seed",
    "metric",
    "value",
    "per_class",
    "excluded_classes",
    "n_train",
    "n_val",
    "n_test",
    "best_epoch",
    "val_value",
    "config_hash",
    "config",
    "git_commit",
    "packages",
    "hardware",
    "wall_time_s",
    "created",
)


def _set_aside_partial_line(fd: int, path: Path) -> None:
    """Called under the lock: if the file does not end with a newline, its last line was cut by a kill or power
    loss. A cut line that still parses is a whole record missing only its newline, which is added; anything else is
    moved to ``<file>.partial-<offset>`` with a warning and cut from the file, so the next record starts on a line of
    its own instead of being glued onto the fragment and lost."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    os.lseek(fd, size - 1, os.SEEK_SET)
    if os.read(fd, 1) == b"\n":
        return
    start = size
    while start > 0:  # find the start of the last line
        step = min(65536, start)
        os.lseek(fd, start - step, os.SEEK_SET)
        block = os.read(fd, step)
        newline = block.rfind(b"\n")
        if newline >= 0:
            start = start - step + newline + 1
            break
        start -= step
    os.lseek(fd, start, os.SEEK_SET)
    fragment = os.read(fd, size - start)
    try:
        json.loads(fragment)
        os.lseek(fd, 0, os.SEEK_END)
        write_all(fd, b"\n", path)
        return
    except ValueError:
        pass
    aside = path.with_name(f"{path.name}.partial-{start}")
    aside.write_bytes(fragment)
    os.ftruncate(fd, start)
    warnings.warn(
        f"{path}: its last line was cut off by an interrupted write; moved it to {aside.name} (not a record) and went on",
        stacklevel=2,
    )


def append_line(path: Path, record: Dict) -> None:
    """One JSON line, written whole under an exclusive lock and fsync'ed, always on a line of its own; a full disk
    leaves no part of it (:class:`~datasets.storage.DiskFull`)."""
    line = (json.dumps(record, sort_keys=True, allow_nan=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _set_aside_partial_line(fd, Path(path))
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            write_all(fd, line, path)
            os.fsync(fd)
        except (DiskFull, OSError):
            os.ftruncate(fd, end)  # no part of the record stays: the job counts as not done and runs again
            raise
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_lines(path: Path) -> List[Dict]:
    """The JSON lines of ``path``; a line that does not parse (a write cut short) is skipped with a warning."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{number}: skipping an incomplete line (interrupted write)", stacklevel=2)
    return rows


def save_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` into exactly ``path`` (given a name, numpy would add .npz to a temporary one)."""
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


class Busy(RuntimeError):
    """Another process holds the lock of a results folder (``directory``)."""

    def __init__(self, holder: str, directory: Optional[Path] = None):
        super().__init__(holder)
        self.directory = directory


@contextlib.contextmanager
def exclusive_lock(path: Path, wait: bool = False, on_wait: Optional[Callable[[str], None]] = None):
    """Hold an exclusive ``flock`` on ``path`` for the block; the file says who holds it (pid, command, start). Not
    waiting, a held lock raises :class:`Busy` naming the holder; waiting, ``on_wait`` is told once. The kernel drops
    the lock when its process dies, so a killed run never leaves a stale lock behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            if not wait:
                raise Busy(holder, path.parent) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        os.pwrite(
            fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {' '.join(sys.argv)}\n".encode(), 0
        )
        yield
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
        return {row["key"]: row for row in read_lines(self.pretraining_path)}

    def append_pretraining(self, record: Dict) -> None:
        if record["key"] in self.pretraining_records():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        append_line(self.pretraining_path, record)

    def __iter__(self) -> Iterator[Dict]:
        for path in self.files():
            for number, row in enumerate(read_lines(path), 1):
                if isinstance(row, dict) and "key" in row:
                    yield row
                else:  # an edited or foreign line: never a KeyError in every reader of the store
                    warnings.warn(f"{path}: record {number} has no key and is skipped", stacklevel=2)

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
            write_atomic(self.predictions_dir / f"{record['key']}.npz", lambda tmp: save_npz(tmp, predictions))
        append_line(self.path, record)

    def lock(self):
        """Exclusive use of this store's records file for one run: a second run on the same results folder (and
        shard) stops at once with :class:`Busy` instead of redoing and duplicating the first one's jobs. Shards
        lock separately, so the shards of one grid still run side by side."""
        return exclusive_lock(self.directory / f".lock-{self.path.stem}")

    def load_predictions(self, key: str) -> Dict[str, np.ndarray]:
        with np.load(self.predictions_dir / f"{key}.npz") as data:
            return {k: data[k] for k in data.files}
