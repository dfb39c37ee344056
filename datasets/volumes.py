"""CT volumes for the 3D track (vox2vec, ../shared/specs/vox2vec3d.md): one container, one preprocessing, one cache.

Every CT loader (BTCV, AMOS, FLARE22 and the CT phantoms) lists its cases as (case id, patient id, image file,
label file or None) and hands them to :func:`load_volumes`, which

* checks every case before any work: a missing image or label file, one nibabel cannot read, or a label whose
  shape or affine differs from its image's is named with its case in one error;
* preprocesses each case once with MONAI as the official code does (processing/*): ``LoadImaged`` with nibabel
  (keeps the x, y, z axis order), ``Orientationd("RAS")`` (the official code flips axes whose affine diagonal is
  negative: the same for the axis-aligned affines of CT), ``CropForegroundd`` to the bounding box of HU >= -500,
  ``Spacingd`` to the working spacing (bilinear for the image, nearest for the labels; border padding, where the
  official code fills with the image minimum: outside air either way), HU rounded to int16;
* maps each dataset's label ids to one table, BTCV's 13 organs (:data:`ORGANS`), and records which organs the dataset
  annotates at all (AMOS and FLARE22 have no portal/splenic vein: not annotated is not the same as absent);
* caches the result as one ``.npy`` per case and array (memory-mapped when read) under
  ``<dataset folder>/.medssl-cache/<fingerprint hash>/`` with a manifest: the source files' names and sizes, the
  working spacing, each case's shape and voxels per organ. A cache whose manifest is missing is rebuilt; an
  interrupted build keeps the cases already written.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from datasets import cache as cache_module
from datasets.base import SPLITS, DatasetError, progress_bar, split_by_patient
from datasets.cache import CACHE_DIRNAME, LayoutChecked, fingerprint, save_array, save_json

# BTCV's label table (vox2vec/eval/btcv.py), the one every CT dataset is mapped to; 0 is background.
ORGANS = (
    "spleen",
    "right kidney",
    "left kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior vena cava",
    "portal and splenic vein",
    "pancreas",
    "right adrenal gland",
    "left adrenal gland",
)
FOREGROUND_HU = -500  # CropForegroundd: the bounding box of voxels at or above this (body, not exterior air)
PREPROCESSING_VERSION = 1  # bump when the preprocessing gives other arrays for the same files


@dataclasses.dataclass
class Case:
    case_id: str
    patient_id: int
    image: Path
    label: Optional[Path] = None


@dataclasses.dataclass
class VolumeDataset:
    """Preprocessed CT volumes: ``images[i]`` int16 HU (X x Y x Z, RAS, working spacing), ``labels[i]`` uint8 with
    :data:`ORGANS` ids (None for unlabelled datasets), patient-disjoint ``split``."""

    name: str
    case_ids: List[str]
    patient_ids: np.ndarray
    split: np.ndarray
    images: List[np.ndarray]
    labels: Optional[List[np.ndarray]]
    spacing: Tuple[float, float, float]
    annotated: List[int]  # organ ids (1-13) the dataset labels at all
    source_spacing: List[Tuple[float, float, float]]
    organ_voxels: Optional[np.ndarray] = (
        None  # cases x 13 voxel counts at the working spacing (from the cache manifest)
    )
    fingerprint: Optional[str] = None  # the source files' names and sizes with the preprocessing (the cache's name)

    class_names = ORGANS

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; expected one of {SPLITS}")
        return np.flatnonzero(self.split == split)

    @property
    def channels(self) -> int:
        return 1

    def summary(self) -> Dict[str, object]:
        spacing = np.array(self.source_spacing)
        voxels = (
            {name: int(count) for name, count in zip(ORGANS, self.organ_voxels.sum(0))}
            if self.organ_voxels is not None
            else {}
        )
        return {
            "name": self.name,
            "volumes": len(self.images),
            "patients": int(len(np.unique(self.patient_ids))),
            "source_spacing_mm": {"min": spacing.min(0).round(3).tolist(), "max": spacing.max(0).round(3).tolist()},
            "working_spacing_mm": list(self.spacing),
            "shapes": {
                "min": np.min([v.shape for v in self.images], 0).tolist(),
                "max": np.max([v.shape for v in self.images], 0).tolist(),
            },
            "splits": {s: int((self.split == s).sum()) for s in SPLITS},
            "voxels_per_organ": voxels,
            "not_annotated": [ORGANS[k - 1] for k in range(1, 14) if k not in self.annotated],
        }


def check_cases(name: str, cases: Sequence[Case]) -> None:
    """Every case's files exist, load as NIfTI and agree (label shape and affine = image's); one error lists all."""
    import nibabel

    problems = []
    for case in cases:
        files = [("image", case.image)] + ([("label", case.label)] if case.label is not None else [])
        headers = {}
        for kind, path in files:
            if not Path(path).is_file():
                problems.append(f"case {case.case_id}: {kind} file {path} is missing")
                continue
            try:
                headers[kind] = nibabel.load(str(path))
                headers[kind].header.get_data_shape()
            except Exception as err:  # noqa: BLE001 - any reader failure is this file's problem
                problems.append(
                    f"case {case.case_id}: {kind} file {path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})"
                )
        if len(headers) == 2:
            image, label = headers["image"], headers["label"]
            if image.shape[:3] != label.shape[:3]:
                problems.append(
                    f"case {case.case_id}: label {case.label} has shape {label.shape[:3]} but its image has {image.shape[:3]}"
                )
            elif not np.allclose(image.affine, label.affine, atol=1e-3):
                problems.append(
                    f"case {case.case_id}: label {case.label} is placed differently from its image (affines differ)"
                )
    if problems:
        broken = len({line.split(":")[0] for line in problems})
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise DatasetError(
            f"{name}: {broken} of {len(cases)} cases cannot be used; fix or remove them:\n  " + "\n  ".join(shown)
            if len(problems) > 1
            else f"{name}: {problems[0]}"
        )


def preprocessing(spacing: Sequence[float], labelled: bool):
    """The MONAI chain of the official preprocessing (module docstring)."""
    import logging
    import warnings

    from monai import transforms as mt

    # LoadImage also sets up MONAI's DICOM readers as fallbacks; their GPU decoder plugin is not needed for NIfTI
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*NvImgCodecPydicomReader.*")
    keys = ["image", "label"] if labelled else ["image"]
    return mt.Compose(
        [
            mt.LoadImaged(keys, reader="NibabelReader", image_only=False),
            mt.EnsureChannelFirstd(keys),
            mt.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            mt.CropForegroundd(keys, source_key="image", select_fn=lambda x: x >= FOREGROUND_HU, allow_smaller=True),
            mt.Spacingd(
                keys,
                pixdim=tuple(float(s) for s in spacing),
                mode=("bilinear", "nearest") if labelled else "bilinear",
                padding_mode="border",
            ),
        ]
    )


def preprocess_case(
    case: Case, chain, remap: Optional[Dict[int, int]]
) -> Tuple[np.ndarray, Optional[np.ndarray], Tuple[float, float, float]]:
    """(int16 HU volume, uint8 organ labels or None, the source voxel spacing) of one case through ``chain``
    (:func:`preprocessing`)."""
    import nibabel

    labelled = case.label is not None
    source = tuple(round(float(v), 4) for v in nibabel.load(str(case.image)).header.get_zooms()[:3])
    data = chain({"image": str(case.image), **({"label": str(case.label)} if labelled else {})})
    image = np.asarray(data["image"])[0]
    bad = int(np.size(image) - np.isfinite(image).sum())
    if bad:  # the int16 cast would make them 0 HU (water) with only a numpy warning
        raise DatasetError(f"case {case.case_id}: image {case.image} has {bad} non-finite voxels (NaN or inf)")
    volume = np.clip(np.rint(image), -32768, 32767).astype(np.int16)
    labels = None
    if labelled:
        raw = np.rint(np.asarray(data["label"])[0]).astype(np.int64)
        table = np.zeros(max(int(raw.max()), max(remap or {0: 0})) + 1, dtype=np.uint8)
        for source_id, organ in (remap or {k: k for k in range(1, 14)}).items():
            if source_id < len(table):
                table[source_id] = organ
        labels = table[np.clip(raw, 0, len(table) - 1)]
    return volume, labels, source


def official_fold_split(case_ids: Sequence[str], fold: int, folds: int = 5, random_state: int = 42) -> np.ndarray:
    """train / val / test per case as vox2vec's eval/btcv.py splits BTCV: the sorted case ids into ``folds`` by
    scikit-learn's ``KFold(shuffle=True, random_state=42)``, fold ``fold``'s part is the test set, and one case of the
    rest (``train_test_split(test_size=1, random_state=42)``) the validation set (30 BTCV cases: 23 / 1 / 6)."""
    from sklearn.model_selection import KFold, train_test_split

    if not 0 <= fold < folds:
        raise DatasetError(f"fold must be 0-{folds - 1} (the official {folds}-fold split), got {fold}")
    ids = sorted(case_ids)
    train_val, test = list(KFold(folds, shuffle=True, random_state=random_state).split(ids))[fold]
    train, val = train_test_split([ids[i] for i in train_val], test_size=1, random_state=random_state)
    part = {**{c: "train" for c in train}, **{c: "val" for c in val}, **{ids[i]: "test" for i in test}}
    return np.array([part[c] for c in case_ids])


def preprocess_cases(
    name: str, cases: Sequence[Case], cache_dir: Path, spacing, remap: Optional[Dict[int, int]], progress: bool
) -> List[Dict]:
    """Preprocess every case not yet in ``cache_dir`` (each written whole: arrays, then its metadata, so an
    interrupted build keeps the finished cases); returns every case's metadata, in order. The cases that cannot be
    used are all named in one :class:`DatasetError`."""
    chains = {labelled: preprocessing(spacing, labelled) for labelled in (False, True)}
    bar = progress_bar(len(cases), f"preprocessing {name}", progress)
    entries, failures = [], []
    for case in cases:
        image_file, label_file = cache_dir / f"{case.case_id}.image.npy", cache_dir / f"{case.case_id}.label.npy"
        meta_file = cache_dir / f"{case.case_id}.json"
        if not meta_file.exists():  # cases written by an interrupted build are kept
            try:
                volume, labels, source = preprocess_case(case, chains[case.label is not None], remap)
            except DatasetError as err:
                failures.append(str(err))
                continue
            except Exception as err:  # noqa: BLE001 - a file that passed the header check but cannot be decoded (cut .nii.gz)
                failures.append(
                    f"case {case.case_id}: {case.image} cannot be decoded ({type(err).__name__}: {str(err).strip().splitlines()[-1][:160] if str(err).strip() else ''})"
                )
                continue
            save_array(image_file, np.ascontiguousarray(volume))
            if labels is not None:
                save_array(label_file, np.ascontiguousarray(labels))
            meta = {
                "source_spacing": source,
                "shape": list(volume.shape),
                "voxels": {str(k): int((labels == k).sum()) for k in range(1, 14)} if labels is not None else {},
            }
            save_json(meta_file, meta)  # last: a case counts as cached only with its arrays complete
        entries.append(json.loads(meta_file.read_text()))
        if bar is not None:
            bar.advance(0)
    if bar is not None:
        bar.stop()
    if failures:
        raise DatasetError(
            f"{name}: {len(failures)} of {len(cases)} cases cannot be used (the others are cached and kept); fix or remove them:\n  "
            + "\n  ".join(failures[:10])
        )
    return entries


def load_volumes(
    name: str,
    root: Path,
    cases: Sequence[Case],
    spacing: Sequence[float],
    remap: Optional[Dict[int, int]],
    annotated: Sequence[int],
    seed: int = 0,
    progress: bool = False,
    split_fractions=(0.7, 0.1, 0.2),
    fold: Optional[int] = None,
) -> VolumeDataset:
    """Check, preprocess (once) and return ``cases`` as a :class:`VolumeDataset`; see the module docstring. The
    split is patient-disjoint by ``seed`` (70 / 10 / 20 %), or with ``fold`` the official 5-fold one
    (:func:`official_fold_split`; one case per patient, as in BTCV)."""
    if not cases:
        raise DatasetError(
            f"{name}: no cases found under {root}; check --data-root and the dataset's folder layout (docs/getting-started.md)"
        )
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise DatasetError(f"{name}: spacing must be three positive numbers in mm (x, y, z), got {list(spacing)}")
    check_cases(name, cases)
    files = [c.image for c in cases] + [c.label for c in cases if c.label is not None]
    ident = fingerprint(
        files, root, {"spacing": spacing, "remap": sorted((remap or {}).items()), "version": PREPROCESSING_VERSION}
    )
    cache_dir = root / CACHE_DIRNAME / f"volumes-{ident}"
    manifest_path = cache_dir / "manifest.json"
    if cache_module._LAYOUT_ONLY and not manifest_path.exists():  # a run checking every dataset's layout first
        raise LayoutChecked(name, ident)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if not manifest_path.exists():
        entries = preprocess_cases(name, cases, cache_dir, spacing, remap, progress)
        manifest = {"dataset": name, "spacing": spacing, "cases": [c.case_id for c in cases], "entries": entries}
        save_json(manifest_path, manifest, indent=1)
    manifest = json.loads(manifest_path.read_text())
    images = [np.load(cache_dir / f"{c.case_id}.image.npy", mmap_mode="r") for c in cases]
    labelled = all(c.label is not None for c in cases)
    labels = [np.load(cache_dir / f"{c.case_id}.label.npy", mmap_mode="r") for c in cases] if labelled else None
    patient_ids = np.array([c.patient_id for c in cases], dtype=np.int64)
    if fold is not None and len(np.unique(patient_ids)) != len(cases):
        raise DatasetError(
            f"{name}: the official fold split takes one case per patient; this dataset has {len(cases)} cases of {len(np.unique(patient_ids))} patients"
        )
    split = (
        official_fold_split([c.case_id for c in cases], fold)
        if fold is not None
        else split_by_patient(patient_ids, seed, split_fractions)
    )
    organ_voxels = (
        np.array([[e["voxels"][str(k)] for k in range(1, 14)] for e in manifest["entries"]], dtype=np.int64)
        if labelled
        else None
    )
    return VolumeDataset(
        name,
        [c.case_id for c in cases],
        patient_ids,
        split,
        images,
        labels,
        spacing,
        sorted(int(k) for k in annotated),
        [tuple(e["source_spacing"]) for e in manifest["entries"]],
        organ_voxels,
        ident,
    )
