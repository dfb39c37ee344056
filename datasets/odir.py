"""ODIR-5K, Ocular Disease Intelligent Recognition: colour fundus photographs of both eyes of ~3,500 patients with 8
labels (N normal, D diabetes, G glaucoma, C cataract, A AMD, H hypertension, M myopia, O other); a downstream task of
the CoBooM paper (shared/specs/datasets.md, section 5).

Reads the Kaggle ``full_df.csv`` (one row **per image**) from ``<data root>/odir/``, ``<data root>/odir5k/`` or the
data root, and each row's ``filename`` from ``preprocessed_images/``, ``ODIR-5K/Training Images/`` or
``ODIR-5K/ODIR-5K/Training Images/``. Labels: the row's ``target`` one-hot, which describes **the eye in
``filename``** (per-eye labels). The columns N...O of the same row are **patient-level** (both eyes) and are not
used as image labels: a cataract in the left eye must not label the right eye's image. The keywords (joined by the
full-width comma U+FF0C) are not parsed. The per-patient ``data.xlsx`` is not read (it has no per-eye labels and
needs an Excel reader). Patients = ``ID``; train / val / test by patient (70 / 10 / 20 %, seeded).
"""
from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np

from datasets.base import DatasetError, ImageDataset, register_dataset, split_by_patient
from datasets.cache import cached_dataset
from datasets.imageio import decode_fundus

CLASS_NAMES = ["N", "D", "G", "C", "A", "H", "M", "O"]
IMAGE_FOLDERS = ("preprocessed_images", "ODIR-5K/Training Images", "ODIR-5K/ODIR-5K/Training Images")
LOADER_VERSION = 1


@register_dataset("odir", "ODIR-5K fundus images, 8 per-eye labels from full_df.csv (needs --data-root)", version=LOADER_VERSION)
def load_odir(data_root: Path, size: int = 256, seed: int = 0, progress: bool = False) -> ImageDataset:
    candidates = (Path(data_root) / "odir", Path(data_root) / "odir5k", Path(data_root))
    root = next((c for c in candidates if (c / "full_df.csv").exists()), None)
    if root is None:
        raise DatasetError(f"ODIR-5K not found: none of {', '.join(str(c) for c in candidates)} holds full_df.csv; download the Kaggle ocular-disease-recognition-odir5k data and point --data-root at it")
    names, labels, patients = [], [], []
    with open(root / "full_df.csv", newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        needed = {"ID", "filename", "target"}
        if not needed <= set(reader.fieldnames or []):
            raise DatasetError(f"{root / 'full_df.csv'}: missing columns {sorted(needed - set(reader.fieldnames or []))}")
        for line_no, row in enumerate(reader, start=2):
            try:
                target = [int(v) for v in ast.literal_eval(row["target"])]
            except (ValueError, SyntaxError):
                raise DatasetError(f"{root / 'full_df.csv'}, line {line_no}: target {row['target']!r} is not a list of 0/1") from None
            if len(target) != len(CLASS_NAMES) or set(target) - {0, 1}:
                raise DatasetError(f"{root / 'full_df.csv'}, line {line_no}: target must be {len(CLASS_NAMES)} values of 0/1 in the order {CLASS_NAMES}")
            names.append(row["filename"].strip())
            labels.append(target)
            patients.append(int(row["ID"]))
    sources, missing = [], []
    for name in names:
        path = next((root / folder / name for folder in IMAGE_FOLDERS if (root / folder / name).exists()), None)
        (sources if path else missing).append(path or name)
    if missing:
        raise DatasetError(f"ODIR-5K at {root}: {len(missing)} images not found in {' or '.join(IMAGE_FOLDERS)}, e.g. {', '.join(missing[:5])}")
    patient_ids = np.array(patients, dtype=np.int64)
    params = {"size": size, "seed": seed, "loader_version": LOADER_VERSION}
    arrays = {"labels": np.array(labels, dtype=np.uint8), "patient_ids": patient_ids, "split": split_by_patient(patient_ids, seed, salt=23)}
    return cached_dataset("odir", root, sources, [root / "full_df.csv"], decode_fundus, params, lambda: arrays, CLASS_NAMES, progress=progress, channels=3)
