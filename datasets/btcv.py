"""BTCV (Multi-Atlas Labeling Beyond the Cranial Vault; Synapse): 30 labelled abdominal CTs with 13 organs.

Layout (../shared/specs/datasets.md), under ``<data root>/btcv/``: ``RawData/Training/img/imgNNNN.nii.gz`` with
``RawData/Training/label/labelNNNN.nii.gz`` (NNNN 0001-0010 and 0021-0040), or MONAI's ``imagesTr/imgNNNN.nii.gz``
with ``labelsTr/labelNNNN.nii.gz``. Labels are already BTCV's table (datasets/volumes.py ``ORGANS``). Preprocessed
as the official vox2vec code (datasets/volumes.py) at ``spacing`` (default 1 x 1 x 2 mm, the official one); one
case per patient.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from datasets.base import DatasetError, find_folder, register_dataset, where_to_put
from datasets.volumes import Case, VolumeDataset, load_volumes

LAYOUTS = (("RawData/Training/img", "RawData/Training/label"), ("imagesTr", "labelsTr"))


def btcv_cases(root: Path, image_dir: str = "", label_dir: str = "") -> list:
    """The labelled cases of a BTCV-layout folder: every ``img*.nii.gz`` with its ``label*.nii.gz`` (which may be
    missing: the check then names the case)."""
    for images, labels in [(image_dir, label_dir)] if image_dir else LAYOUTS:
        found = sorted((root / images).glob("img*.nii.gz"))
        if found:
            cases = []
            for path in found:
                number = re.fullmatch(r"img(\d+)\.nii\.gz", path.name)
                if number is None:
                    continue
                cases.append(
                    Case(
                        f"img{number.group(1)}",
                        int(number.group(1)),
                        path,
                        root / labels / f"label{number.group(1)}.nii.gz",
                    )
                )
            return cases
    raise DatasetError(
        f"btcv: no img*.nii.gz under {root}/RawData/Training/img or {root}/imagesTr; put BTCV's RawData folder in {root} (docs/getting-started.md)"
    )


@register_dataset(
    "btcv",
    "BTCV abdominal CT, 30 labelled cases, 13 organs (3D; needs --data-root)",
    folder="btcv",
    source="Synapse's Multi-Atlas Labeling Beyond the Cranial Vault, Abdomen: RawData.zip, which unpacks as RawData/ (keep it inside the btcv folder)",
)
def load_btcv(
    data_root: Path, spacing: Sequence[float] = (1.0, 1.0, 2.0), seed: int = 0, fold: int = -1, progress: bool = False
) -> VolumeDataset:
    """``fold`` 0-4: the official 5-fold split (23 training, 1 validation, 6 test cases); -1: patient split by ``seed``."""
    root = find_folder("btcv", data_root, lambda c: any((c / images).is_dir() for images, _ in LAYOUTS))
    if root is None:
        raise DatasetError(
            f"btcv: neither {Path(data_root) / 'btcv'} nor {data_root} holds RawData/Training/img or imagesTr; {where_to_put('btcv', data_root)}"
        )
    return load_volumes(
        "btcv",
        root,
        btcv_cases(root),
        spacing,
        remap=None,
        annotated=range(1, 14),
        seed=seed,
        progress=progress,
        fold=None if fold < 0 else fold,
    )
