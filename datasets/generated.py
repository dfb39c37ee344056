"""On-disk cache of the project's generated (phantom) datasets: generated once, then memory-mapped.

``<data_root>/<name>/<hash of the generator parameters>/`` holds one ``.npy`` per array and ``manifest.json``, written
last, so an interrupted generation leaves no manifest and is simply generated again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from datasets.base import ImageDataset, progress_bar
from datasets.cache import save_array, save_json, stop_at_layout_check

ARRAYS = ("images", "labels", "masks", "patient_ids", "split")


def load_generated(
    name: str,
    data_root: Path,
    params: Dict,
    generate: Callable[[], Sequence[Optional[np.ndarray]]],
    class_names: List[str],
    mask_name: Optional[str] = None,
) -> ImageDataset:
    """Generate (first use) or read the arrays ``ARRAYS`` that ``generate()`` returns; ``masks`` may be None."""
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(data_root) / name / key
    generated = (cache / "manifest.json").exists()
    # the arrays are a function of the generator's parameters (its version is in every job hash)
    fingerprint = hashlib.sha256(json.dumps({"name": name, "params": params}, sort_keys=True).encode()).hexdigest()[:16]
    stop_at_layout_check(name, generated, fingerprint)
    if not generated:
        cache.mkdir(parents=True, exist_ok=True)
        for array_name, arr in zip(ARRAYS, generate()):
            if arr is None:
                continue
            save_array(
                cache / f"{array_name}.npy", arr
            )  # per-process temporary: the processes of a multi-node run may all generate
        save_json(
            cache / "manifest.json", {"params": params, "classes": list(class_names)}, indent=1
        )  # last: marks a complete cache
    loaded = {
        a: np.load(cache / f"{a}.npy", mmap_mode="r" if a in ("images", "masks") else None)
        for a in ARRAYS
        if (cache / f"{a}.npy").exists()
    }
    return ImageDataset(
        name=name,
        images=loaded["images"],
        labels=loaded["labels"],
        class_names=list(class_names),
        patient_ids=loaded["patient_ids"],
        split=loaded["split"],
        masks=loaded.get("masks"),
        mask_name=mask_name if "masks" in loaded else None,
        fingerprint=fingerprint,
    )


def render_each(n_items: int, render: Callable[[int], None], description: str, progress: bool = False) -> None:
    """Call ``render(i)`` for every item, with a progress bar if asked."""
    bar = progress_bar(n_items, description, progress)
    for i in range(n_items):
        render(i)
        if bar is not None:
            bar.advance(0)
    if bar is not None:
        bar.stop()
