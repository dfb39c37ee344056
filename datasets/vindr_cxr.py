"""VinDr-CXR (Nguyen et al., Scientific Data 2022; Kaggle vinbigdata-chest-xray-abnormalities-detection): 15,000
labelled chest radiographs, each read by 3 of 17 radiologists; a downstream task of MLVICX
(shared/specs/datasets.md, section 6).

Reads ``train.csv`` (one row per box per reader: ``image_id,class_name,class_id,rad_id,x_min,...``) and
``train/<image_id>.dicom`` from ``<data root>/vindr_cxr/`` or the data root. Image labels: a finding (class ids
0-13) is positive when at least ``min_readers`` radiologists marked it (default 1, the union of the readers; the
same finding boxed by several readers counts once per reader); ``No finding`` (id 14) is the all-zero vector. DICOMs
may be MONOCHROME1 and have more than 8 bits: modality LUT, VOI LUT/window, inversion of MONOCHROME1
(``datasets.imageio.decode_dicom``). The Kaggle test images have no public labels and image ids carry no patient
link, so every image is its own patient and train / val / test are carved from the labelled images
(70 / 10 / 20 %, seeded).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from datasets.base import DatasetError, ImageDataset, register_dataset, split_by_patient, where_to_put
from datasets.cache import cached_dataset
from datasets.imageio import decode_dicom

CLASS_NAMES = [
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
]
NO_FINDING_ID = 14
LOADER_VERSION = 1


@register_dataset(
    "vindr_cxr",
    "VinDr-CXR, 14 findings from 3 readers per image (needs --data-root)",
    version=LOADER_VERSION,
    folder="vindr_cxr",
    source="Kaggle vinbigdata-chest-xray-abnormalities-detection, which unpacks as vinbigdata-chest-xray-abnormalities-detection/",
)
def load_vindr_cxr(
    data_root: Path, size: int = 256, seed: int = 0, min_readers: int = 1, progress: bool = False
) -> ImageDataset:
    root = next(
        (
            c
            for c in (Path(data_root) / "vindr_cxr", Path(data_root))
            if (c / "train.csv").exists() and (c / "train").is_dir()
        ),
        None,
    )
    if root is None:
        raise DatasetError(
            f"VinDr-CXR not found: no train.csv and train/ in {Path(data_root) / 'vindr_cxr'} or {data_root}; {where_to_put('vindr_cxr', data_root)}"
        )
    readers = defaultdict(lambda: defaultdict(set))  # image -> class id -> radiologists
    with open(root / "train.csv", newline="", encoding="utf-8-sig") as fh:  # Excel's "CSV UTF-8" starts with a BOM
        reader = csv.DictReader(fh)
        if not {"image_id", "class_id", "rad_id"} <= set(reader.fieldnames or []):
            raise DatasetError(
                f"{root / 'train.csv'}: expected the columns image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max"
            )
        for line_no, row in enumerate(reader, start=2):
            try:
                class_id = int(row["class_id"])
            except ValueError:
                raise DatasetError(
                    f"{root / 'train.csv'}, line {line_no}: class_id {row['class_id']!r} is not an integer"
                ) from None
            if not 0 <= class_id <= NO_FINDING_ID:
                raise DatasetError(f"{root / 'train.csv'}, line {line_no}: class_id {class_id} is outside 0-14")
            readers[row["image_id"].strip()][class_id].add(row["rad_id"].strip())
    names = sorted(readers)
    labels = np.zeros((len(names), len(CLASS_NAMES)), dtype=np.uint8)
    for i, name in enumerate(names):
        for class_id, rads in readers[name].items():
            if class_id != NO_FINDING_ID and len(rads) >= min_readers:
                labels[i, class_id] = 1
    sources = [root / "train" / f"{name}.dicom" for name in names]
    missing = [s.name for s in sources if not s.exists()]
    if missing:
        raise DatasetError(
            f"VinDr-CXR at {root}: {len(missing)} of {len(names)} images are missing from train/ (extension .dicom), e.g. {', '.join(missing[:5])}"
        )
    patients = np.arange(len(names), dtype=np.int64)
    params = {"size": size, "seed": seed, "min_readers": min_readers, "loader_version": LOADER_VERSION}
    arrays = {"labels": labels, "patient_ids": patients, "split": split_by_patient(patients, seed, salt=29)}
    return cached_dataset(
        "vindr_cxr",
        root,
        sources,
        [root / "train.csv"],
        decode_dicom,
        params,
        lambda: arrays,
        CLASS_NAMES,
        progress=progress,
    )
