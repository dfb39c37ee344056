"""A report folder replaced whole: its files are written into a fresh folder beside it and swapped in with two
renames, so a reader (or a run killed while writing) never sees new and old files mixed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, List, Sequence


def recover_swap(final: Path) -> None:
    """A run killed between the two renames of :func:`swap_in` left the old folder aside and none in place: put the
    old one back (it is whole), so that files of other origin kept there are not lost."""
    aside = (
        sorted(final.parent.glob(f".{final.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if final.parent.exists()
        else []
    )
    if aside and not final.exists():
        os.rename(aside[-1], final)
    for leftover in final.parent.glob(f".{final.name}.old-*") if final.parent.exists() else []:
        shutil.rmtree(leftover, ignore_errors=True)


def swap_in(staging: Path, final: Path) -> None:
    """Replace the folder ``final`` by ``staging``: rename the old one aside, the new one in, delete the old."""
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def replace_folder(
    final: Path, write: Callable[[Path], List[Path]], produces: Sequence[str], keep: Sequence[str] = ()
) -> List[Path]:
    """Replace the report folder ``final`` by what ``write(folder)`` writes into a fresh one (it returns the files).

    ``produces`` names every file the writer can write: one of them that this write does not produce is dropped
    (a report of records that are no longer there), unless it is named in ``keep`` (a file that cannot be rebuilt
    from what the writer was given). Files of other origin in the folder (benchmarks/*.py) are kept."""
    final = Path(final)
    recover_swap(final)
    staging = final.parent / f".{final.name}.writing-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        written = write(staging)
        if final.is_dir():
            produced = {p.name for p in written}
            carried = [
                p
                for p in final.iterdir()
                if p.is_file() and p.name not in produced and (p.name not in produces or p.name in keep)
            ]
            for path in carried:
                shutil.copy2(path, staging / path.name)
        swap_in(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [final / p.name for p in written]
