"""SIIM-ACR Pneumothorax Segmentation (Kaggle 2019): chest radiographs with pneumothorax masks.

Reads (shared/specs/datasets.md, section 2) from ``<data root>/siim_acr/``, ``<data root>/siim/`` or the data root:

* masks: ``train-rle.csv`` (stage 1: header ``ImageId, EncodedPixels`` with a leading space) or
  ``stage_2_train.csv`` (``ImageId,EncodedPixels``). ``-1`` (with or without a leading space) is an empty mask;
  an image with several rows (one per pneumothorax) gets the OR of them. The run-length code is **relative**
  (offset from the end of the previous run, then length) in stage 1; a file whose multi-run rows all have
  increasing absolute starts is read as standard absolute RLE. Pixels are numbered column-major (top to bottom,
  then left to right), as the competition's ``rle2mask``.
* images: DICOM ``dicom-images-train/<study>/<series>/<SOP>.dcm`` and ``dicom-images-test/...`` (whose stage-1 test
  images stage 2 labels) (JPEG Baseline compressed; ImageId = file stem;
  patient = the DICOM PatientID), or PNG conversions ``dataset1024/train/<ImageId>.png`` (no patient ids there, so
  every image is its own patient).

Only images with a mask row are used (some stage-1 DICOMs have none). The competition's test images have no public
masks, so train / val / test are carved from the labelled images by patient (70 / 10 / 20 %, seeded). One label,
``Pneumothorax`` (mask not empty); the masks are stored with the cached images for the segmentation task.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from datasets.base import DatasetError, ImageDataset, register_dataset, split_by_patient, where_to_put
from datasets.cache import cached_dataset
from datasets.imageio import decode_dicom, decode_image

CLASS_NAMES = ["Pneumothorax"]
MASK_FILES = ("train-rle.csv", "stage_2_train.csv")
LOADER_VERSION = 1


def locate_root(data_root: Path) -> Path:
    candidates = (Path(data_root) / "siim_acr", Path(data_root) / "siim", Path(data_root))
    for candidate in candidates:
        if any((candidate / name).exists() for name in MASK_FILES):
            return candidate
    raise DatasetError(
        f"SIIM-ACR not found: none of {', '.join(str(c) for c in candidates)} contains {' or '.join(MASK_FILES)}; {where_to_put('siim_acr', data_root)}"
    )


def read_rle_rows(path: Path) -> Dict[str, List[List[int]]]:
    """ImageId -> list of its RLE rows (each a flat list of ints; empty for ``-1``), in file order."""
    rows: Dict[str, List[List[int]]] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if header[:2] != ["ImageId", "EncodedPixels"]:
            raise DatasetError(f"{path}: expected the header 'ImageId, EncodedPixels', got {','.join(header)!r}")
        for line_no, fields in enumerate(reader, start=2):
            if not fields or not fields[0].strip():
                continue
            code = fields[1].strip() if len(fields) > 1 else ""
            try:
                numbers = [] if code in ("-1", "") else [int(v) for v in code.split()]
            except ValueError:
                raise DatasetError(
                    f"{path}, line {line_no}: EncodedPixels is neither -1 nor a list of integers"
                ) from None
            if len(numbers) % 2:
                raise DatasetError(
                    f"{path}, line {line_no}: EncodedPixels has an odd count of numbers ({len(numbers)})"
                )
            rows.setdefault(fields[0].strip(), []).append(numbers)
    return rows


def is_relative_encoding(rows: Dict[str, List[List[int]]]) -> bool:
    """Relative unless every multi-run row has absolute starts that increase past the previous run's end."""
    multi_run = [r for runs in rows.values() for r in runs if len(r) >= 4]
    for numbers in multi_run:
        starts, lengths = numbers[0::2], numbers[1::2]
        if any(starts[k] < starts[k - 1] + lengths[k - 1] for k in range(1, len(starts))):
            return True
    return not multi_run


def rle_to_mask(numbers: List[int], width: int, height: int, relative: bool) -> np.ndarray:
    flat = np.zeros(width * height, dtype=np.uint8)
    position = 0
    for start, length in zip(numbers[0::2], numbers[1::2]):
        position = position + start if relative else start
        flat[position : position + length] = 1
        if relative:
            position += length
    return flat.reshape(width, height).T  # column-major numbering


DICOM_FOLDERS = ("dicom-images-train", "dicom-images-test")


def find_images(root: Path) -> Tuple[Dict[str, Path], str]:
    """ImageId -> file, and the kind ('dicom' or 'png'). DICOMs are searched in both of the competition's folders:
    stage 2's ``stage_2_train.csv`` labels the stage-1 test images too, which stay in ``dicom-images-test/``; which
    images are used is decided by the mask file's rows alone."""
    dicoms: Dict[str, Path] = {}
    for folder in DICOM_FOLDERS:
        for path in sorted(root.glob(f"{folder}/*/*/*.dcm")):
            if path.stem in dicoms:
                raise DatasetError(
                    f"SIIM-ACR at {root}: image {path.stem} is stored twice ({dicoms[path.stem]} and {path}); keep one"
                )
            dicoms[path.stem] = path
    if dicoms:
        return dicoms, "dicom"
    pngs = {p.stem: p for p in root.glob("dataset*/train/*.png")}
    return pngs, "png"


def patient_of(path: Path, kind: str) -> str:
    if kind == "png":
        return path.stem
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", path.stem))


def width_height(path: Path, kind: str) -> Tuple[int, int]:
    """The image's size from its header, without decoding the pixels."""
    if kind == "png":
        from PIL import Image

        with Image.open(path) as image:
            return image.size
    import pydicom

    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
    return int(header.Columns), int(header.Rows)


@register_dataset(
    "siim_acr",
    "SIIM-ACR pneumothorax radiographs with masks (needs --data-root)",
    version=LOADER_VERSION,
    folder="siim_acr",
    source="Kaggle siim-train-test, which unpacks as siim-train-test/siim/",
)
def load_siim_acr(data_root: Path, size: int = 256, seed: int = 0, progress: bool = False) -> ImageDataset:
    root = locate_root(data_root)
    mask_file = next(root / name for name in MASK_FILES if (root / name).exists())
    rows = read_rle_rows(mask_file)
    files, kind = find_images(root)
    if not files:
        raise DatasetError(
            f"SIIM-ACR at {root}: no images under dicom-images-train/<study>/<series>/*.dcm (or dicom-images-test/) or dataset*/train/*.png"
        )
    missing = sorted(set(rows) - set(files))
    if missing:
        raise DatasetError(
            f"SIIM-ACR at {root}: {len(missing)} of {len(rows)} images in {mask_file.name} have no {kind} file, e.g. {', '.join(missing[:5])}"
        )
    names = sorted(rows)
    relative = is_relative_encoding(rows)
    decode = decode_dicom if kind == "dicom" else decode_image

    def mask(i: int) -> np.ndarray:
        image_rows = rows[names[i]]
        if not any(image_rows):
            return np.zeros((1, 1), np.uint8)
        width, height = width_height(files[names[i]], kind)
        return np.bitwise_or.reduce([rle_to_mask(r, width, height, relative) for r in image_rows if r])

    def arrays():  # reads every DICOM header for its PatientID: only when the cache is built
        labels = np.array([[int(any(r for r in rows[n]))] for n in names], dtype=np.uint8)
        patient_names = np.array([patient_of(files[n], kind) for n in names])
        patients = np.unique(patient_names, return_inverse=True)[1].astype(np.int64)
        return {"labels": labels, "patient_ids": patients, "split": split_by_patient(patients, seed, salt=13)}

    params = {"size": size, "seed": seed, "loader_version": LOADER_VERSION}
    sources = [files[n] for n in names]
    return cached_dataset(
        "siim_acr",
        root,
        sources,
        [mask_file],
        decode,
        params,
        arrays,
        CLASS_NAMES,
        progress=progress,
        masks=mask,
        mask_name="Pneumothorax",
    )
