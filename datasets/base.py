"""Shared in-memory image-dataset container and the dataset registry.

Every dataset loader (synthetic or real) returns an :class:`ImageDataset`: uint8 images at a fixed
native resolution, multi-label targets, patient ids and a patient-disjoint train/val/test split.
Training code never decodes image files: it reads these arrays (memory-mapped from the on-disk cache).
"""

from __future__ import annotations

import dataclasses
import mmap
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

SPLITS = ("train", "val", "test")


class DatasetError(RuntimeError):
    """A dataset cannot be loaded as asked; the message says what to do."""


def memmap_reference(array):
    """What to pickle for ``array``: a whole memory-mapped file becomes (file, offset, dtype, shape), which another
    process maps again (ddp_spawn pickles the training objects into every process: a mapped cache of several GB
    would otherwise be copied into each); anything else is itself. A view into a mapped file stays an array
    (numpy does not track a view's offset)."""
    if (
        isinstance(array, np.memmap)
        and isinstance(array.base, mmap.mmap)
        and array.filename
        and array.flags.c_contiguous
    ):
        return ("memmap", array.filename, array.offset, array.dtype.str, array.shape)
    return array


def from_memmap_reference(value):
    """The inverse of :func:`memmap_reference` (read-only mapping)."""
    if isinstance(value, tuple) and value and value[0] == "memmap":
        _, filename, offset, dtype, shape = value
        return np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
    return value


@dataclasses.dataclass
class ImageDataset:
    name: str
    images: np.ndarray  # uint8, N x C x H x W
    labels: np.ndarray  # uint8, N x K multi-label targets
    class_names: List[str]
    patient_ids: np.ndarray  # int64, N
    split: np.ndarray  # str, N, one of SPLITS
    masks: Optional[np.ndarray] = None  # uint8, N x H x W segmentation masks (0/1), if the dataset has them
    mask_name: Optional[str] = None
    # what identifies the data read (datasets/cache.fingerprint); records and encoders store it (medssl/run/image.py)
    fingerprint: Optional[str] = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DatasetError(
                f"{self.name}: images must be uint8 N x C x H x W, got {self.images.dtype} {self.images.shape}"
            )
        for field, arr in (("labels", self.labels), ("patient_ids", self.patient_ids), ("split", self.split)):
            if len(arr) != n:
                raise DatasetError(f"{self.name}: {field} has {len(arr)} rows but there are {n} images")
        if self.labels.shape[1] != len(self.class_names):
            raise DatasetError(
                f"{self.name}: {self.labels.shape[1]} label columns but {len(self.class_names)} class names"
            )
        unknown = set(np.unique(self.split)) - set(SPLITS)
        if unknown:
            raise DatasetError(f"{self.name}: unknown split names {sorted(unknown)}; expected {SPLITS}")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = np.intersect1d(self.patient_ids[self.split == a], self.patient_ids[self.split == b])
            if len(shared):
                raise DatasetError(
                    f"{self.name}: {len(shared)} patients appear in both {a} and {b} (e.g. {shared[:3].tolist()})"
                )

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(images=memmap_reference(self.images), masks=memmap_reference(self.masks))
        return state

    def __setstate__(self, state):
        state = dict(state)
        state.update(images=from_memmap_reference(state["images"]), masks=from_memmap_reference(state["masks"]))
        self.__dict__.update(state)

    @property
    def native_size(self) -> int:
        return int(self.images.shape[-1])

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; expected one of {SPLITS}")
        return np.flatnonzero(self.split == split)

    def summary(self) -> Dict[str, object]:
        return {
            "name": self.name,
            "images": int(len(self.images)),
            "patients": int(len(np.unique(self.patient_ids))),
            "size": list(self.images.shape[1:]),
            "classes": list(self.class_names),
            "positives": {c: int(v) for c, v in zip(self.class_names, self.labels.sum(0))},
            "splits": {s: int((self.split == s).sum()) for s in SPLITS},
        }


def split_by_patient(patient_ids: np.ndarray, seed: int, fractions=(0.7, 0.1, 0.2), salt: int = 3) -> np.ndarray:
    """Train / val / test per image from a seeded permutation of the unique patients (``salt`` keeps datasets
    with the same seed from sharing one permutation)."""
    patients = np.unique(patient_ids)
    order = np.random.default_rng([seed, salt]).permutation(patients)
    n_train = int(round(fractions[0] * len(order)))
    n_val = int(round(fractions[1] * len(order)))
    split_of = {p: "train" for p in order[:n_train]}
    split_of.update({p: "val" for p in order[n_train : n_train + n_val]})
    split_of.update({p: "test" for p in order[n_train + n_val :]})
    return np.array([split_of[p] for p in patient_ids])


def progress_bar(total: int, description: str, enabled: bool):
    """A started rich progress bar with one task (advance it with ``bar.advance(0)``, end with ``bar.stop()``),
    or None when disabled."""
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    bar.start()
    bar.add_task(description, total=total)
    return bar


DatasetLoader = Callable[..., ImageDataset]
_REGISTRY: Dict[str, DatasetLoader] = {}
_DESCRIPTIONS: Dict[str, str] = {}
_VERSIONS: Dict[str, int] = {}
_FOLDERS: Dict[str, tuple] = {}


def register_dataset(
    name: str, description: str, version: int = 1, folder: Optional[str] = None, source: Optional[str] = None
) -> Callable[[DatasetLoader], DatasetLoader]:
    """``version`` changes whenever the loader would return different arrays for the same files/parameters;
    it is part of every job hash that uses the dataset, so cached checkpoints and records are never stale.
    ``folder``: the folder under the data root that a real dataset is read from; ``source``: where it comes from
    and the folder its archive unpacks as (for the message when it is missing: :func:`where_to_put`)."""

    def wrap(fn: DatasetLoader) -> DatasetLoader:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} registered twice")
        _REGISTRY[name] = fn
        _DESCRIPTIONS[name] = description
        _VERSIONS[name] = version
        if folder is not None:
            _FOLDERS[name] = (folder, source)
        return fn

    return wrap


def where_to_put(name: str, data_root: Path) -> str:
    """What a missing real dataset's message says to do: the folder to create (or symlink) under the data root, the
    archive it comes from, and the per-dataset alternative ``--data NAME=PATH``."""
    folder, source = _FOLDERS[name]
    return (
        f"put it in {Path(data_root) / folder} (from {source}: move or symlink the unpacked folder there, "
        f"e.g. ln -s /path/to/it {Path(data_root) / folder}), or give its folder with --data {name}=PATH"
    )


def find_folder(name: str, data_root: Path, holds: Callable[[Path], bool]) -> Optional[Path]:
    """The dataset's registered folder under ``data_root`` if it ``holds`` the dataset, else ``data_root`` itself if
    it does (a ``--data NAME=PATH`` folder, or a data root that is the dataset), else None."""
    folder = Path(data_root) / _FOLDERS[name][0]
    return next((c for c in (folder, Path(data_root)) if holds(c)), None)


def dataset_folders() -> Dict[str, tuple]:
    """(folder under the data root, source) of each real dataset."""
    return dict(sorted(_FOLDERS.items()))


@dataclasses.dataclass(frozen=True)
class DataRoots:
    """Where each dataset is read from: ``default`` (``--data-root``), or a folder of its own (``--data
    NAME=PATH``, the dataset's folder itself: it need not be named as under the data root). Never hashed: the
    data fingerprint (datasets/cache.fingerprint) identifies the data, wherever it lies."""

    default: Path
    per_dataset: Dict[str, Path] = dataclasses.field(default_factory=dict)

    def of(self, name: str) -> Path:
        return Path(self.per_dataset.get(name, self.default))

    def folders(self) -> List[Path]:
        """Every folder datasets (and their caches) are read from and written to."""
        return [Path(self.default), *map(Path, self.per_dataset.values())]


def root_of(name: str, data_root) -> Path:
    """The folder dataset ``name`` is read from, for a plain data root or :class:`DataRoots`."""
    return data_root.of(name) if isinstance(data_root, DataRoots) else Path(data_root)


def dataset_version(name: str) -> int:
    if name not in _REGISTRY:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return _VERSIONS[name]


def loader_function(name: str) -> DatasetLoader:
    """The registered loader of ``name`` (its keyword parameters are the dataset's ``params`` in a suite)."""
    if name not in _REGISTRY:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return _REGISTRY[name]


def dataset_names() -> List[str]:
    return sorted(_REGISTRY)


def describe_datasets() -> Dict[str, str]:
    return dict(sorted(_DESCRIPTIONS.items()))


def load_dataset(name: str, data_root, **params) -> ImageDataset:
    """``data_root``: a folder (``--data-root``) or :class:`DataRoots`."""
    if name not in _REGISTRY:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return _REGISTRY[name](root_of(name, data_root), **params)
