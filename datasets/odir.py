"""ODIR-5K, Ocular Disease Intelligent Recognition: colour fundus photographs of both eyes of ~3,500 patients with 8
labels (N normal, D diabetes, G glaucoma, C cataract, A AMD, H hypertension, M myopia, O other); a downstream task of
the CoBooM paper (shared/specs/datasets.md, section 5).

Two label sources (``labels`` parameter), both found in ``<data root>/odir/``, ``<data root>/odir5k/`` or the data
root (``data.xlsx`` also in ``ODIR-5K/`` and, as Kaggle's download unpacks, ``ODIR-5K/ODIR-5K/``); images from ``preprocessed_images/``, ``ODIR-5K/Training Images/`` or
``ODIR-5K/ODIR-5K/Training Images/``:

* ``labels="eye"`` (default): the Kaggle ``full_df.csv``, one row **per image**; labels = the row's ``target``
  one-hot, which describes **the eye in ``filename``**. The columns N...O of the same row are **patient-level** (both
  eyes) and are not used as image labels: a cataract in the left eye must not label the right eye's image.
* ``labels="patient"``: the official per-patient ``data.xlsx`` (``ID, ..., Left-Fundus, Right-Fundus, ...,
  N...O``), as in the ODIR-5K challenge, whose labels describe the **patient**: both of a patient's photographs get
  the patient's N...O labels. Use it when ``full_df.csv`` is not available, or to reproduce patient-level results.

The keywords (joined by the full-width comma U+FF0C) are not parsed. Patients = ``ID``; train / val / test by
patient (70 / 10 / 20 %, seeded).
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np

from datasets.base import DatasetError, ImageDataset, register_dataset, split_by_patient, where_to_put
from datasets.cache import cached_dataset
from datasets.imageio import decode_fundus

CLASS_NAMES = ["N", "D", "G", "C", "A", "H", "M", "O"]
IMAGE_FOLDERS = ("preprocessed_images", "ODIR-5K/Training Images", "ODIR-5K/ODIR-5K/Training Images")
LOADER_VERSION = 1


@register_dataset(
    "odir",
    "ODIR-5K fundus images, 8 labels per eye (full_df.csv) or per patient (data.xlsx) (needs --data-root)",
    version=LOADER_VERSION,
    folder="odir",
    source="Kaggle ocular-disease-recognition-odir5k, which unpacks as ocular-disease-recognition-odir5k/",
)
def load_odir(
    data_root: Path, size: int = 256, seed: int = 0, labels: str = "eye", progress: bool = False
) -> ImageDataset:
    if labels not in ("eye", "patient"):
        raise DatasetError(f"odir: labels must be 'eye' (full_df.csv) or 'patient' (data.xlsx), got {labels!r}")
    label_file = "full_df.csv" if labels == "eye" else "data.xlsx"
    # ODIR-5K/ODIR-5K/: where Kaggle's ocular-disease-recognition-odir5k download keeps data.xlsx and the images
    candidates = [
        c
        for base in (Path(data_root) / "odir", Path(data_root) / "odir5k", Path(data_root))
        for c in (base, base / "ODIR-5K", base / "ODIR-5K" / "ODIR-5K")
    ]
    root = next((c for c in candidates if (c / label_file).exists()), None)
    if root is None:
        other = "labels=patient reads data.xlsx" if labels == "eye" else "labels=eye reads the Kaggle full_df.csv"
        raise DatasetError(
            f"ODIR-5K not found: none of {', '.join(str(c) for c in candidates)} holds {label_file} ({other}); {where_to_put('odir', data_root)}"
        )
    names, image_labels, patients = (_read_full_df if labels == "eye" else _read_data_xlsx)(root / label_file)
    if root.name == "ODIR-5K":  # data.xlsx sits inside ODIR-5K/: image folders are named from its parent
        root = root.parent
    sources, missing = [], []
    for name in names:
        path = next((root / folder / name for folder in IMAGE_FOLDERS if (root / folder / name).exists()), None)
        (sources if path else missing).append(path or name)
    if missing:
        raise DatasetError(
            f"ODIR-5K at {root}: {len(missing)} images not found in {' or '.join(IMAGE_FOLDERS)}, e.g. {', '.join(missing[:5])}"
        )
    patient_ids = np.array(patients, dtype=np.int64)
    params = {
        "size": size,
        "seed": seed,
        "loader_version": LOADER_VERSION,
        **({"labels": labels} if labels != "eye" else {}),
    }
    arrays = {
        "labels": np.array(image_labels, dtype=np.uint8),
        "patient_ids": patient_ids,
        "split": split_by_patient(patient_ids, seed, salt=23),
    }
    label_path = next(p for p in (root / label_file, root / "ODIR-5K" / label_file) if p.exists())
    return cached_dataset(
        "odir",
        root,
        sources,
        [label_path],
        decode_fundus,
        params,
        lambda: arrays,
        CLASS_NAMES,
        progress=progress,
        channels=3,
    )


def _read_full_df(path: Path):
    """Per-image rows of the Kaggle full_df.csv: (file names, per-eye one-hot labels, patient ids)."""
    names, labels, patients = [], [], []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        needed = {"ID", "filename", "target"}
        if not needed <= set(reader.fieldnames or []):
            raise DatasetError(f"{path}: missing columns {sorted(needed - set(reader.fieldnames or []))}")
        for line_no, row in enumerate(reader, start=2):
            try:
                target = [int(v) for v in ast.literal_eval(row["target"])]
            except (ValueError, SyntaxError):
                raise DatasetError(f"{path}, line {line_no}: target {row['target']!r} is not a list of 0/1") from None
            if len(target) != len(CLASS_NAMES) or set(target) - {0, 1}:
                raise DatasetError(
                    f"{path}, line {line_no}: target must be {len(CLASS_NAMES)} values of 0/1 in the order {CLASS_NAMES}"
                )
            names.append(row["filename"].strip())
            labels.append(target)
            patients.append(int(row["ID"]))
    return names, labels, patients


def _read_data_xlsx(path: Path):
    """Per-patient rows of data.xlsx, expanded to both photographs: (file names, patient labels twice, ids)."""
    import pandas as pd

    try:
        table = pd.read_excel(path, sheet_name=0)
    except Exception as err:  # a corrupt or non-Excel file: say which one
        raise DatasetError(f"{path}: cannot be read as an Excel workbook ({err})") from None
    table.columns = [str(c).strip() for c in table.columns]
    needed = ["ID", "Left-Fundus", "Right-Fundus", *CLASS_NAMES]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DatasetError(f"{path}: missing columns {missing}; expected the ODIR-5K header {needed}")
    values = table[CLASS_NAMES]
    bad = values.isna().any(axis=1) | ~values.isin([0, 1]).all(axis=1)
    if bad.any():
        raise DatasetError(
            f"{path}: labels {CLASS_NAMES} must be 0/1; rows of patients {table.loc[bad, 'ID'].tolist()[:5]} are not"
        )
    names, labels, patients = [], [], []
    for row, patient_labels in zip(table.itertuples(index=False), values.astype(int).values.tolist()):
        record = dict(zip(table.columns, row))
        for column in ("Left-Fundus", "Right-Fundus"):
            names.append(str(record[column]).strip())
            labels.append(patient_labels)
            patients.append(int(record["ID"]))
    return names, labels, patients
