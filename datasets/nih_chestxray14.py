"""NIH ChestX-ray14 (Wang et al., CVPR 2017): 112,120 frontal radiographs of 30,805 patients, 14 findings.

Reads the dataset as distributed (shared/specs/datasets.md, section 1), from ``<data root>/nih_chestxray14/`` or
from the data root itself:

* ``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv``. Rows are parsed by position (image, labels, follow-up,
  patient id), because the header is unreliable: its last two names contain commas, some copies end every line
  with a trailing comma, and some call ``Patient Gender`` ``Patient Sex``.
* Images ``images_001/images/*.png`` ... ``images_012/images/*.png`` (Kaggle) or one flat ``images/`` (NIH Box).
  8-bit grayscale PNGs; the few RGBA ones are reduced to their first channel (as torchxrayvision).
* ``train_val_list.txt`` (86,524) and ``test_list.txt`` (25,596), the official patient-disjoint split. Validation is
  carved from train_val **by patient** (``val_fraction`` of its patients, seeded), so the test list is untouched.

Labels: the 14 findings, split on ``|`` and matched exactly (``Pleural_Thickening`` keeps its underscore; ``No
Finding`` is the all-zero vector), in the order of the official label files. The decoded images are cached once
(``datasets.cache``); ``python run_benchmark.py prepare --dataset nih_chestxray14`` builds the cache up front.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from datasets.base import DatasetError, ImageDataset, register_dataset, where_to_put
from datasets.cache import cached_dataset
from datasets.imageio import decode_image

CLASS_NAMES = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]
NO_FINDING = "No Finding"
ENTRY_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
LOADER_VERSION = 1


def locate_root(data_root: Path) -> Path:
    for candidate in (Path(data_root) / "nih_chestxray14", Path(data_root)):
        if any((candidate / name).exists() for name in ENTRY_FILES):
            return candidate
    raise DatasetError(
        f"NIH ChestX-ray14 not found: neither {Path(data_root) / 'nih_chestxray14'} nor {data_root} contains {' or '.join(ENTRY_FILES)}; {where_to_put('nih_chestxray14', data_root)}"
    )


def read_entries(path: Path) -> List[Tuple[str, List[str], int]]:
    """(image name, findings, patient id) per row of a Data_Entry file."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        if len(header) < 4 or header[0].strip() != "Image Index" or header[1].strip() != "Finding Labels":
            raise DatasetError(
                f"{path}: expected a header starting 'Image Index,Finding Labels,Follow-up #,Patient ID', got {','.join(header[:4])!r}"
            )
        for line_no, fields in enumerate(reader, start=2):
            if not fields or not fields[0].strip():
                continue
            if len(fields) < 4:
                raise DatasetError(f"{path}, line {line_no}: {len(fields)} fields, expected at least 4")
            findings = [f.strip() for f in fields[1].split("|") if f.strip() and f.strip() != NO_FINDING]
            unknown = [f for f in findings if f not in CLASS_NAMES]
            if unknown:
                raise DatasetError(
                    f"{path}, line {line_no}: unknown finding(s) {unknown}; expected {CLASS_NAMES} or '{NO_FINDING}'"
                )
            try:
                patient = int(fields[3])
            except ValueError:
                raise DatasetError(f"{path}, line {line_no}: patient id {fields[3]!r} is not an integer") from None
            rows.append((fields[0].strip(), findings, patient))
    return rows


def read_list(path: Path) -> List[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def image_files(root: Path) -> Dict[str, Path]:
    """Image name -> path, from the nested Kaggle folders and/or a flat ``images/`` folder."""
    files: Dict[str, Path] = {}
    for pattern in ("images_*/images/*.png", "images/*.png", "images_*/*.png"):
        for path in root.glob(pattern):
            files.setdefault(path.name, path)
    return files


def check_layout(root: Path) -> Tuple[List[str], Dict]:
    """Problems found (empty when the layout is usable) and what was read, for ``prepare`` and the loader."""
    problems: List[str] = []
    entry_file = next((root / name for name in ENTRY_FILES if (root / name).exists()), None)
    entries = read_entries(entry_file) if entry_file else []
    lists = {}
    for name in ("train_val_list.txt", "test_list.txt"):
        if (root / name).exists():
            lists[name] = read_list(root / name)
        else:
            problems.append(f"missing {root / name} (the official split list)")
    files = image_files(root)
    if not files:
        problems.append(f"no PNG images under {root}/images_*/images/ or {root}/images/")
    known = {row[0] for row in entries}
    listed = [n for names in lists.values() for n in names]
    not_in_entries = [n for n in listed if n not in known]
    if not_in_entries:
        problems.append(
            f"{len(not_in_entries)} listed images have no row in {entry_file.name if entry_file else 'Data_Entry'}: {', '.join(not_in_entries[:5])}"
        )
    missing = [n for n in listed if n not in files]
    if files and missing:
        problems.append(
            f"{len(missing)} of {len(listed)} listed images are missing on disk, e.g. {', '.join(missing[:5])}"
        )
    if lists and not set(lists.get("train_val_list.txt", [])).isdisjoint(lists.get("test_list.txt", [])):
        problems.append("train_val_list.txt and test_list.txt share images")
    return problems, {"entries": entries, "lists": lists, "files": files, "entry_file": entry_file}


def carve_validation(patients: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """A seeded ``val_fraction`` of the unique patients (at least one)."""
    unique = np.unique(patients)
    n_val = max(1, int(round(val_fraction * len(unique))))
    return np.random.default_rng([seed, 11]).permutation(unique)[:n_val]


@register_dataset(
    "nih_chestxray14",
    "NIH ChestX-ray14, 14 findings, official train_val/test lists (needs --data-root)",
    version=LOADER_VERSION,
    folder="nih_chestxray14",
    source="Kaggle nih-chest-xrays/data, which unpacks as archive/, or the NIH Box download",
)
def load_nih_chestxray14(
    data_root: Path, size: int = 256, val_fraction: float = 0.1, seed: int = 0, progress: bool = False
) -> ImageDataset:
    if not 0 < val_fraction < 1:
        raise DatasetError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    root = locate_root(data_root)
    problems, found = check_layout(root)
    if problems:
        raise DatasetError(f"NIH ChestX-ray14 at {root} is not usable:\n  " + "\n  ".join(problems))
    by_name = {name: (findings, patient) for name, findings, patient in found["entries"]}
    train_val, test = found["lists"]["train_val_list.txt"], found["lists"]["test_list.txt"]
    names = sorted(train_val) + sorted(test)
    labels = np.zeros((len(names), len(CLASS_NAMES)), dtype=np.uint8)
    for i, name in enumerate(names):
        for finding in by_name[name][0]:
            labels[i, CLASS_NAMES.index(finding)] = 1
    patients = np.array([by_name[name][1] for name in names], dtype=np.int64)
    split = np.array(["train"] * len(train_val) + ["test"] * len(test))
    val_patients = carve_validation(patients[: len(train_val)], val_fraction, seed)
    split[: len(train_val)][np.isin(patients[: len(train_val)], val_patients)] = "val"
    params = {"size": size, "val_fraction": val_fraction, "seed": seed, "loader_version": LOADER_VERSION}
    sources = [found["files"][name] for name in names]
    arrays = {"labels": labels, "patient_ids": patients, "split": split}
    return cached_dataset(
        "nih_chestxray14",
        root,
        sources,
        [found["entry_file"], root / "train_val_list.txt", root / "test_list.txt"],
        decode_image,
        params,
        lambda: arrays,
        CLASS_NAMES,
        progress=progress,
    )
