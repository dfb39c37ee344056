"""Writing files so that a full disk, a short write or a kill never leaves a damaged or half-written file behind.

Every file the project writes goes through :func:`write_atomic` (a temporary file in the destination folder, then
``os.replace``: same filesystem, so the rename is atomic and a reader sees the old file or the new one) or
:func:`write_all` (appends to an open descriptor, checking how many bytes each ``os.write`` took). A full disk or
quota is one :class:`DiskFull` error naming the folder, and the temporary file is removed.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable

# what a full filesystem or quota looks like to a writer (EFBIG: a file size limit)
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFull(RuntimeError):
    """A folder has no room for a file; the message names it. Nothing finished is lost: rerun once there is space."""


def disk_full(folder: Path, what: str, err: OSError) -> DiskFull:
    return DiskFull(
        f"{folder} is full ({err.strerror or 'no space left'}): {what} could not be written; free space there (or choose another folder) "
        "and run the same command again, nothing finished is lost"
    )


def temporary_name(path: Path) -> Path:
    """The temporary sibling a file is written under before its rename (per process: two writers never share one)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` fills a temporary file next to ``path``, which then replaces ``path``; on any failure the
    temporary file is removed, and a full disk becomes :class:`DiskFull`."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        # writers that wrap the error (safetensors' SafetensorError) keep the system's words
        if getattr(err, "errno", None) in FULL or "No space left" in str(err):
            raise disk_full(
                path.parent,
                path.name,
                err if isinstance(err, OSError) else OSError(errno.ENOSPC, "No space left on device"),
            ) from None
        raise
    return path


def write_all(fd: int, data: bytes, path: Path) -> None:
    """Write every byte of ``data`` at the descriptor's position: ``os.write`` may take only part of it (a nearly
    full disk), so it is called until all is written; a write that takes nothing or fails for space is
    :class:`DiskFull` (the caller cuts what was written)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError as err:
            if err.errno in FULL:
                raise disk_full(Path(path).parent, Path(path).name, err) from None
            raise
        if written <= 0:
            raise disk_full(Path(path).parent, Path(path).name, OSError(errno.ENOSPC, "no space left on device"))
        view = view[written:]
