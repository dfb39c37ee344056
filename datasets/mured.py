"""MuReD, Multi-Label Retinal Diseases (Rodríguez, AlMarzouqi & Liatsis 2022): 2,208 colour fundus images from ARIA,
STARE and RFMiD with 20 labels; a downstream task of the CoBooM paper (shared/specs/datasets.md, section 4).

Reads ``train_data.csv`` and ``val_data.csv`` (``ID`` then the 20 label columns, 0/1) and ``images/images/<ID>``
(``.png``, else ``.tif``, else ``.jpg``; the folder is doubled in the distribution) from
``<data root>/mured/``, ``<data root>/Multi-Label Retinal Diseases (MuReD) Dataset/`` or the data root. Label
columns are read by name, so their order in the file does not matter. The dataset has no patient ids: each image
is its own patient. Splits: the official ``val_data.csv`` is our **test** split (what is reported); our validation
split (model selection) is a seeded 10 % of ``train_data.csv``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import List, Tuple

import numpy as np

from datasets.base import DatasetError, ImageDataset, register_dataset, where_to_put
from datasets.cache import cached_dataset
from datasets.imageio import decode_fundus

CLASS_NAMES = [
    "DR",
    "NORMAL",
    "MH",
    "ODC",
    "TSLN",
    "ARMD",
    "DN",
    "MYA",
    "BRVO",
    "ODP",
    "CRVO",
    "CNV",
    "RS",
    "ODE",
    "LS",
    "CSR",
    "HTR",
    "ASR",
    "CRS",
    "OTHER",
]
EXTENSIONS = (".png", ".tif", ".jpg")
LOADER_VERSION = 1


def read_label_table(path: Path, id_column: str, class_names: List[str]) -> Tuple[List[str], np.ndarray]:
    """(ids, N x K 0/1 labels) from a CSV with an id column and one 0/1 column per class, matched by name."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in [id_column] + class_names if c not in columns]
        if missing:
            raise DatasetError(f"{path}: missing columns {missing}; expected {id_column} and {class_names}")
        ids, rows = [], []
        for line_no, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            values = [row[c] for c in class_names]
            if any(v not in ("0", "1", "0.0", "1.0") for v in values):
                raise DatasetError(f"{path}, line {line_no}: labels must be 0 or 1, got {values}")
            ids.append(row[id_column])
            rows.append([int(float(v)) for v in values])
    return ids, np.array(rows, dtype=np.uint8).reshape(-1, len(class_names))


@register_dataset(
    "mured",
    "MuReD fundus images, 20 labels, official train/val files (needs --data-root)",
    version=LOADER_VERSION,
    folder="mured",
    source="Mendeley Data, which unpacks as 'Multi-Label Retinal Diseases (MuReD) Dataset/' (also read under that name)",
)
def load_mured(
    data_root: Path, size: int = 256, seed: int = 0, val_fraction: float = 0.1, progress: bool = False
) -> ImageDataset:
    candidates = (
        Path(data_root) / "mured",
        Path(data_root) / "Multi-Label Retinal Diseases (MuReD) Dataset",
        Path(data_root),
    )
    root = next((c for c in candidates if (c / "train_data.csv").exists()), None)
    if root is None or not (root / "val_data.csv").exists():
        raise DatasetError(
            f"MuReD not found: none of {', '.join(str(c) for c in candidates)} holds train_data.csv and val_data.csv; {where_to_put('mured', data_root)}"
        )
    train_ids, train_labels = read_label_table(root / "train_data.csv", "ID", CLASS_NAMES)
    test_ids, test_labels = read_label_table(root / "val_data.csv", "ID", CLASS_NAMES)
    ids = train_ids + test_ids
    sources, missing = [], []
    for image_id in ids:
        path = next(
            (
                root / "images" / "images" / f"{image_id}{ext}"
                for ext in EXTENSIONS
                if (root / "images" / "images" / f"{image_id}{ext}").exists()
            ),
            None,
        )
        (sources if path else missing).append(path or image_id)
    if missing:
        raise DatasetError(
            f"MuReD at {root}: {len(missing)} images not found as images/images/<ID>.png|.tif|.jpg, e.g. {', '.join(missing[:5])}"
        )
    split = np.array(["train"] * len(train_ids) + ["test"] * len(test_ids))
    n_val = max(1, int(round(val_fraction * len(train_ids))))
    split[np.random.default_rng([seed, 19]).permutation(len(train_ids))[:n_val]] = "val"
    params = {"size": size, "seed": seed, "val_fraction": val_fraction, "loader_version": LOADER_VERSION}
    arrays = {
        "labels": np.concatenate([train_labels, test_labels]),
        "patient_ids": np.arange(len(ids), dtype=np.int64),
        "split": split,
    }
    return cached_dataset(
        "mured",
        root,
        sources,
        [root / "train_data.csv", root / "val_data.csv"],
        decode_fundus,
        params,
        lambda: arrays,
        CLASS_NAMES,
        progress=progress,
        channels=3,
    )
