"""The datasets a run loads: each once, keyed by what it loads."""

from __future__ import annotations

from typing import Any, Dict

from datasets import ImageDataset, load_dataset
from medssl.suite.protocol import stable_hash


def dataset_identity(spec: Dict[str, Any]) -> str:
    """What a dataset spec loads: its name and loader parameters (a corpus's ``splits`` and the hashed loader version
    select or label, they do not load anything else), so a corpus and a task on the same data share one load."""
    return stable_hash({"name": spec["name"], "params": spec.get("params") or {}})


class DatasetCache:
    """Loads each dataset once per run."""

    def __init__(self, data_root):
        self.data_root = data_root  # a folder or datasets.base.DataRoots
        self._cache: Dict[str, ImageDataset] = {}

    def get(self, spec: Dict[str, Any]) -> ImageDataset:
        key = dataset_identity(spec)
        if key not in self._cache:
            self._cache[key] = load_dataset(spec["name"], self.data_root, **(spec.get("params") or {}))
        return self._cache[key]
