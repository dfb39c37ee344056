"""EyePACS (Kaggle Diabetic Retinopathy Detection, 2015): colour fundus photographs graded 0-4, the fundus
pretraining corpus of the CoBooM paper (shared/specs/datasets.md, section 3).

Reads ``trainLabels.csv`` (``image,level``) and ``train/<image>.jpeg`` from ``<data root>/eyepacs/`` or the data
root. Images vary in size and camera: each is cropped to its field of view, padded to a square and resized
(``datasets.imageio.decode_fundus``), in colour. Left and right eyes of a patient share the id before ``_``;
train / val / test are carved from the labelled images **by patient** (70 / 10 / 20 %, seeded). Labels: the
grade one-hot (No DR, Mild, Moderate, Severe, Proliferative), so the learning-signal probe scores a macro AUC
over grades; the corpus is used for pretraining, where labels are not read.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from datasets.base import DatasetError, ImageDataset, register_dataset, split_by_patient, where_to_put
from datasets.cache import cached_dataset
from datasets.imageio import decode_fundus

CLASS_NAMES = ["No DR", "Mild", "Moderate", "Severe", "Proliferative"]
LOADER_VERSION = 1


@register_dataset(
    "eyepacs",
    "EyePACS fundus photographs, DR grade 0-4 (needs --data-root)",
    version=LOADER_VERSION,
    folder="eyepacs",
    source="Kaggle diabetic-retinopathy-detection, which unpacks as diabetic-retinopathy-detection/ (unzip trainLabels.csv.zip and train.zip.* in it)",
)
def load_eyepacs(data_root: Path, size: int = 256, seed: int = 0, progress: bool = False) -> ImageDataset:
    root = next((c for c in (Path(data_root) / "eyepacs", Path(data_root)) if (c / "trainLabels.csv").exists()), None)
    if root is None:
        raise DatasetError(
            f"EyePACS not found: no trainLabels.csv in {Path(data_root) / 'eyepacs'} or {data_root}; {where_to_put('eyepacs', data_root)}"
        )
    names, grades = [], []
    with open(
        root / "trainLabels.csv", newline="", encoding="utf-8-sig"
    ) as fh:  # Excel's "CSV UTF-8" starts with a BOM
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if header[:2] != ["image", "level"]:
            raise DatasetError(
                f"{root / 'trainLabels.csv'}: expected the header 'image,level', got {','.join(header)!r}"
            )
        for line_no, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) < 2 or fields[1].strip() not in {"0", "1", "2", "3", "4"}:
                raise DatasetError(f"{root / 'trainLabels.csv'}, line {line_no}: level must be 0-4, got {fields[1:2]}")
            names.append(fields[0].strip())
            grades.append(int(fields[1]))
    sources = [root / "train" / f"{name}.jpeg" for name in names]
    missing = [s.name for s in sources if not s.exists()]
    if missing:
        raise DatasetError(
            f"EyePACS at {root}: {len(missing)} of {len(names)} labelled images are missing from train/ (note the .jpeg extension), e.g. {', '.join(missing[:5])}"
        )
    labels = np.eye(len(CLASS_NAMES), dtype=np.uint8)[grades]
    patients = np.unique([name.split("_")[0] for name in names], return_inverse=True)[1].astype(np.int64)
    split = split_by_patient(patients, seed, salt=17)
    params = {"size": size, "seed": seed, "loader_version": LOADER_VERSION}
    arrays = {"labels": labels, "patient_ids": patients, "split": split}
    return cached_dataset(
        "eyepacs",
        root,
        sources,
        [root / "trainLabels.csv"],
        decode_fundus,
        params,
        lambda: arrays,
        CLASS_NAMES,
        progress=progress,
        channels=3,
    )
