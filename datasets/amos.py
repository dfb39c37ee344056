"""AMOS22, its CT cases (ids up to 500; above are MRI), with labels mapped to BTCV's table.

Layout under ``<data root>/amos22/``: ``dataset.json`` whose ``training`` and ``validation`` entries give
``{"image": "./imagesTr/amos_0001.nii.gz", "label": "./labelsTr/amos_0001.nii.gz"}``. AMOS ids (its README, with
its spellings): 1 spleen, 2 right kidney, 3 left kidney, 4 gall bladder, 5 esophagus, 6 liver, 7 stomach, 8 arota,
9 postcava, 10 pancreas, 11 right adrenal gland, 12 left adrenal gland, 13 duodenum, 14 bladder, 15
prostate/uterus. Duodenum, bladder and prostate/uterus have no BTCV id and become background; AMOS does not label
the portal and splenic vein (BTCV 10), which is recorded as not annotated.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

from datasets.base import DatasetError, find_folder, register_dataset, where_to_put
from datasets.volumes import Case, VolumeDataset, load_volumes

REMAP = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 9, 10: 11, 11: 12, 12: 13, 13: 0, 14: 0, 15: 0}
MAX_CT_ID = 500


@register_dataset(
    "amos",
    "AMOS22 CT cases (ids <= 500), 13 organs mapped to BTCV's table, no portal vein (3D; needs --data-root)",
    folder="amos22",
    source="amos22.zip (Zenodo), which unpacks as amos22/",
)
def load_amos(
    data_root: Path, spacing: Sequence[float] = (1.0, 1.0, 2.0), seed: int = 0, progress: bool = False
) -> VolumeDataset:
    root = find_folder("amos", data_root, lambda c: (c / "dataset.json").is_file())
    if root is None:
        raise DatasetError(
            f"amos: no dataset.json in {Path(data_root) / 'amos22'} or {data_root}; {where_to_put('amos', data_root)}"
        )
    index = root / "dataset.json"
    try:
        entries = [e for part in ("training", "validation") for e in json.loads(index.read_text()).get(part, [])]
    except (ValueError, AttributeError) as err:
        raise DatasetError(f"amos: {index} is not AMOS's dataset.json ({err}); restore it from amos22.zip") from None
    cases = []
    for entry in entries:
        number = re.search(r"amos_(\d+)\.nii\.gz$", str(entry.get("image", "")))
        if number is None or int(number.group(1)) > MAX_CT_ID:
            continue  # MRI
        label = entry.get("label")
        cases.append(
            Case(
                f"amos_{number.group(1)}", int(number.group(1)), root / entry["image"], root / label if label else None
            )
        )
    if any(c.label is None for c in cases):
        raise DatasetError(
            f"amos: {sum(c.label is None for c in cases)} CT entries of {index} have no label; use the training and validation lists only"
        )
    return load_volumes(
        "amos",
        root,
        cases,
        spacing,
        remap=REMAP,
        annotated=[k for k in range(1, 14) if k != 10],
        seed=seed,
        progress=progress,
    )
