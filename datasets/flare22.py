"""FLARE22's 50 labelled abdominal CTs, with labels mapped to BTCV's table.

Layout under ``<data root>/flare22/``: ``Training/FLARE22_LabeledCase50/images/FLARE22_Tr_NNNN_0000.nii.gz`` and
``.../labels/FLARE22_Tr_NNNN.nii.gz``. FLARE22 ids: 1 liver, 2 right kidney, 3 spleen, 4 pancreas, 5 aorta, 6 IVC,
7 right adrenal, 8 left adrenal, 9 gallbladder, 10 esophagus, 11 stomach, 12 duodenum, 13 left kidney. Duodenum has
no BTCV id (background); the portal and splenic vein is not annotated.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from datasets.base import DatasetError, find_folder, register_dataset, where_to_put
from datasets.volumes import Case, VolumeDataset, load_volumes

REMAP = {1: 6, 2: 2, 3: 1, 4: 11, 5: 8, 6: 9, 7: 12, 8: 13, 9: 4, 10: 5, 11: 7, 12: 0, 13: 3}
FOLDER = "Training/FLARE22_LabeledCase50"


@register_dataset(
    "flare22",
    "FLARE22 labelled CTs (50), 13 organs mapped to BTCV's table, no portal vein (3D; needs --data-root)",
    folder="flare22",
    source="the FLARE22 challenge's training data, which holds Training/FLARE22_LabeledCase50/",
)
def load_flare22(
    data_root: Path, spacing: Sequence[float] = (1.0, 1.0, 2.0), seed: int = 0, progress: bool = False
) -> VolumeDataset:
    root = find_folder("flare22", data_root, lambda c: any((c / FOLDER / "images").glob("FLARE22_Tr_*_0000.nii.gz")))
    if root is None:
        raise DatasetError(
            f"flare22: no FLARE22_Tr_NNNN_0000.nii.gz under {Path(data_root) / 'flare22' / FOLDER / 'images'} or {Path(data_root) / FOLDER / 'images'}; {where_to_put('flare22', data_root)}"
        )
    images = sorted((root / FOLDER / "images").glob("FLARE22_Tr_*_0000.nii.gz"))
    cases = []
    for path in images:
        number = re.fullmatch(r"FLARE22_Tr_(\d+)_0000\.nii\.gz", path.name).group(1)
        cases.append(
            Case(f"FLARE22_Tr_{number}", int(number), path, root / FOLDER / "labels" / f"FLARE22_Tr_{number}.nii.gz")
        )
    return load_volumes(
        "flare22",
        root,
        cases,
        spacing,
        remap=REMAP,
        annotated=[k for k in range(1, 14) if k != 10],
        seed=seed,
        progress=progress,
    )
