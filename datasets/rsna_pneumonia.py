"""RSNA Pneumonia Detection Challenge (2018): 26,684 chest radiographs (NIH ChestX-ray14 images as DICOM) labelled
Normal, No Lung Opacity / Not Normal, or Lung Opacity; a downstream task of MLVICX (shared/specs/datasets.md,
section 7).

Reads ``stage_2_train_labels.csv`` (one row per box; ``Target`` 1 for lung opacity), ``stage_2_detailed_class_info.csv``
(``patientId,class``, one row per label row, so duplicated) and ``stage_2_train_images/<patientId>.dcm`` from
``<data root>/rsna_pneumonia/`` or the data root. Two labels per image: ``Lung Opacity`` (any box / Target 1) and
``No Lung Opacity / Not Normal``; ``Normal`` is the all-zero vector. An image whose two files disagree is an
error. patientId names one image; train / val / test are carved by it (70 / 10 / 20 %, seeded), since the stage-2
test images have no public labels.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from datasets.base import DatasetError, ImageDataset, register_dataset, split_by_patient, where_to_put
from datasets.cache import cached_dataset
from datasets.imageio import decode_dicom

CLASS_NAMES = ["Lung Opacity", "No Lung Opacity / Not Normal"]
CLASSES = ("Normal", "No Lung Opacity / Not Normal", "Lung Opacity")
LOADER_VERSION = 1


def read_rows(path: Path, columns):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not set(columns) <= set(reader.fieldnames or []):
            raise DatasetError(
                f"{path}: expected the columns {', '.join(columns)}, got {', '.join(reader.fieldnames or [])}"
            )
        return list(enumerate(reader, start=2))


@register_dataset(
    "rsna_pneumonia",
    "RSNA Pneumonia, lung opacity / not normal (needs --data-root)",
    version=LOADER_VERSION,
    folder="rsna_pneumonia",
    source="Kaggle rsna-pneumonia-detection-challenge, which unpacks as rsna-pneumonia-detection-challenge/",
)
def load_rsna_pneumonia(data_root: Path, size: int = 256, seed: int = 0, progress: bool = False) -> ImageDataset:
    root = next(
        (c for c in (Path(data_root) / "rsna_pneumonia", Path(data_root)) if (c / "stage_2_train_labels.csv").exists()),
        None,
    )
    if root is None or not (root / "stage_2_detailed_class_info.csv").exists():
        raise DatasetError(
            f"RSNA Pneumonia not found: stage_2_train_labels.csv and stage_2_detailed_class_info.csv are not both in {Path(data_root) / 'rsna_pneumonia'} or {data_root}; {where_to_put('rsna_pneumonia', data_root)}"
        )
    opacity = {}
    for line_no, row in read_rows(root / "stage_2_train_labels.csv", ("patientId", "Target")):
        if row["Target"].strip() not in ("0", "1"):
            raise DatasetError(f"{root / 'stage_2_train_labels.csv'}, line {line_no}: Target must be 0 or 1")
        opacity[row["patientId"].strip()] = max(opacity.get(row["patientId"].strip(), 0), int(row["Target"]))
    classes = {}
    for line_no, row in read_rows(root / "stage_2_detailed_class_info.csv", ("patientId", "class")):
        name = row["class"].strip()
        if name not in CLASSES:
            raise DatasetError(
                f"{root / 'stage_2_detailed_class_info.csv'}, line {line_no}: unknown class {name!r}; expected one of {CLASSES}"
            )
        classes[row["patientId"].strip()] = name  # duplicates repeat the same class
    names = sorted(opacity)
    disagree = [n for n in names if (classes.get(n) == "Lung Opacity") != bool(opacity[n])]
    if disagree:
        raise DatasetError(
            f"RSNA Pneumonia at {root}: {len(disagree)} images whose Target and class disagree (or have no class row), e.g. {', '.join(disagree[:5])}"
        )
    labels = np.array([[opacity[n], int(classes[n] == "No Lung Opacity / Not Normal")] for n in names], dtype=np.uint8)
    sources = [root / "stage_2_train_images" / f"{n}.dcm" for n in names]
    missing = [s.name for s in sources if not s.exists()]
    if missing:
        raise DatasetError(
            f"RSNA Pneumonia at {root}: {len(missing)} of {len(names)} images are missing from stage_2_train_images/, e.g. {', '.join(missing[:5])}"
        )
    patients = np.arange(len(names), dtype=np.int64)
    params = {"size": size, "seed": seed, "loader_version": LOADER_VERSION}
    arrays = {"labels": labels, "patient_ids": patients, "split": split_by_patient(patients, seed, salt=31)}
    return cached_dataset(
        "rsna_pneumonia",
        root,
        sources,
        [root / "stage_2_train_labels.csv", root / "stage_2_detailed_class_info.csv"],
        decode_dicom,
        params,
        lambda: arrays,
        CLASS_NAMES,
        progress=progress,
    )
