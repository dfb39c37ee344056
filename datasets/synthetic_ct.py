"""Synthetic abdominal CT phantoms with BTCV's 13 organ labels: the embedded default of the 3D track.

Each patient is drawn deterministically from ``(seed, patient)`` in world millimetres (RAS: +x toward the patient's
right, +y anterior, +z superior) after ../shared/specs/vox2vec3d.md "What a CT phantom needs":

* air -1000 outside an elliptic trunk of 320 x 240 mm (+-15 %), subcutaneous fat -100, a muscular wall 50, the
  abdominal cavity 20, a vertebral column 500, lungs -850 above a domed diaphragm, a craniocaudal extent of
  240-320 mm;
* organs with BTCV ids at portal-venous HU, per patient offsets of +-25 HU, sizes +-20 % and positions +-15 mm:
  liver 100-120 and spleen 110-130 (their intensities overlap: telling them apart needs their place), kidneys with
  a cortex of 150-200 around a medulla of ~100 (the right one lower), gallbladder 0-20 (absent in 10 % of patients:
  an empty ground truth), aorta 150-200, inferior vena cava 110-130, portal/splenic vein 150-180, pancreas 80-110,
  adrenals at least 10 mm thick (two voxels at 4 mm), an oesophagus with an air lumen and a stomach with an air
  pocket (both inside their labels);
* unlabelled distractors of overlapping HU: psoas muscles next to the spine and bowel loops with air bubbles;
* per scan: Gaussian noise of 5-20 HU, an in-plane spacing of 1.6-2.4 mm and slices of 2.5-5 mm, and in some scans
  a flipped x or y axis in the affine, so that orientation and resampling code runs on them.

The volumes are written as NIfTI in BTCV's layout (``RawData/Training/img/imgNNNN.nii.gz`` +
``label/labelNNNN.nii.gz`` for the labelled patients, ``Unlabelled/imgNNNN.nii.gz`` for the pretraining patients,
who are other people) under ``<data root>/synthetic_ct/<parameter hash>/`` and then read exactly like BTCV
(datasets/volumes.py). ``part`` selects the labelled (downstream) or the unlabelled (pretraining) patients.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

from datasets.base import DatasetError, register_dataset
from datasets.btcv import btcv_cases
from datasets.cache import stop_at_layout_check
from datasets.volumes import ORGANS, Case, VolumeDataset, load_volumes

GENERATOR_VERSION = 1  # bump when the phantom model changes: part of the folder name
ORGAN_ID = {name: k for k, name in enumerate(ORGANS, start=1)}
# portal-venous HU ranges (low, high) of each labelled structure; a patient's value is drawn inside, then offset
HU = {
    "liver": (100, 120),
    "spleen": (110, 130),
    "kidney cortex": (150, 200),
    "kidney medulla": (90, 110),
    "gallbladder": (0, 20),
    "aorta": (150, 200),
    "inferior vena cava": (110, 130),
    "portal and splenic vein": (150, 180),
    "pancreas": (80, 110),
    "adrenal": (20, 40),
    "esophagus": (35, 50),
    "stomach": (30, 50),
    "psoas": (45, 60),
    "bowel": (20, 60),
}


def _patient(seed: int, patient: int) -> Dict:
    """Anatomy of one patient (shared by every scan of them)."""
    rng = np.random.default_rng([seed, patient, 11])
    size = lambda: rng.uniform(0.8, 1.2)
    shift = lambda: rng.uniform(-15, 15, 3)
    hu = {name: rng.uniform(*rng_range) + rng.uniform(-25, 25) for name, rng_range in HU.items()}
    length = rng.uniform(240, 320)
    return {
        "a": 160 * rng.uniform(0.85, 1.15),
        "b": 120 * rng.uniform(0.85, 1.15),
        "length": length,
        "diaphragm": 0.6 * length + rng.uniform(-15, 15),
        "hu": hu,
        "size": {
            k: size() for k in ("liver", "spleen", "kidney", "stomach", "gallbladder", "pancreas", "adrenal", "bowel")
        },
        "shift": {
            k: shift() for k in ("liver", "spleen", "kidney", "stomach", "gallbladder", "pancreas", "vessels", "bowel")
        },
        "gallbladder": rng.uniform() >= 0.1,
        "bowel": [
            (rng.uniform(-0.5, 0.5), rng.uniform(-0.1, 0.5), rng.uniform(0.05, 0.4), rng.uniform(15, 28), rng.uniform())
            for _ in range(int(rng.integers(5, 9)))
        ],
    }


def _scan(seed: int, patient: int, anatomy: Dict) -> Tuple[np.ndarray, np.ndarray]:
    """(voxel spacing, affine) of one scan: field of view around the trunk, flipped axes in some scans."""
    rng = np.random.default_rng([seed, patient, 12])
    spacing = np.array([rng.uniform(1.6, 2.4)] * 2 + [rng.choice([2.5, 3.0, 4.0, 5.0])])
    extent = np.array([2 * anatomy["a"] + 40, 2 * anatomy["b"] + 40, anatomy["length"]])
    shape = np.ceil(extent / spacing).astype(int)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-extent[0] / 2, -extent[1] / 2, 0.0]
    for axis, p in ((0, 0.3), (1, 0.2)):
        if rng.uniform() < p:  # stored the other way round: voxel 0 at the positive end of the axis
            affine[axis, axis] = -spacing[axis]
            affine[axis, 3] = extent[axis] / 2
    return shape, affine


def _world(shape, affine) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates (mm) of every voxel centre; separable because the affine is diagonal."""
    axes = [affine[i, 3] + affine[i, i] * np.arange(n, dtype=np.float32) for i, n in enumerate(shape)]
    return np.meshgrid(*axes, indexing="ij", sparse=True)


def _ellipsoid(x, y, z, centre, radii) -> np.ndarray:
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + (
        (z - centre[2]) / radii[2]
    ) ** 2 <= 1


def _capsule(x, y, z, start, end, radius) -> np.ndarray:
    """Voxels within ``radius`` of the segment start-end."""
    start, end = np.asarray(start, np.float32), np.asarray(end, np.float32)
    direction = end - start
    t = ((x - start[0]) * direction[0] + (y - start[1]) * direction[1] + (z - start[2]) * direction[2]) / float(
        direction @ direction
    )
    t = np.clip(t, 0, 1)
    return (x - start[0] - t * direction[0]) ** 2 + (y - start[1] - t * direction[1]) ** 2 + (
        z - start[2] - t * direction[2]
    ) ** 2 <= radius**2


def render_patient(seed: int, patient: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int16 HU volume, uint8 BTCV labels, affine) of one scan of one patient."""
    anatomy = _patient(seed, patient)
    shape, affine = _scan(seed, patient, anatomy)
    grid = _world(shape, affine)
    canvas = _Canvas(shape)
    dome = _body_wall(canvas, grid, anatomy)
    _bowel(canvas, grid, anatomy, np.random.default_rng([seed, patient, 13]))
    _upper_abdomen(canvas, grid, anatomy, grid[2] < dome)
    _kidneys(canvas, grid, anatomy)
    _retroperitoneum(canvas, grid, anatomy)
    image = canvas.image
    noise = np.random.default_rng([seed, patient, 14])
    image += noise.normal(0, noise.uniform(5, 20), shape).astype(np.float32)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16), canvas.labels, affine


class _Canvas:
    """The HU volume and the label volume being painted, air and background to start with."""

    def __init__(self, shape):
        self.shape = shape
        self.image = np.full(shape, -1000.0, dtype=np.float32)
        self.labels = np.zeros(shape, dtype=np.uint8)

    def paint(self, mask, value, organ=None) -> None:
        """Set ``value`` HU (and the ``organ``'s label, if any) where ``mask`` holds; later parts paint over."""
        mask = np.broadcast_to(mask, self.shape)
        self.image[mask] = value
        if organ is not None:
            self.labels[mask] = ORGAN_ID[organ]


def _body_wall(canvas: _Canvas, grid, anatomy) -> np.ndarray:
    """Fat, muscle and cavity, the lungs above the diaphragm, the spine and the psoas muscles; returns the
    diaphragm's height (highest in the middle)."""
    x, y, z = grid
    a, b, length, top, hu, shift = (
        anatomy["a"],
        anatomy["b"],
        anatomy["length"],
        anatomy["diaphragm"],
        anatomy["hu"],
        anatomy["shift"],
    )
    paint = canvas.paint
    image, shape = canvas.image, canvas.shape
    trunk = (x / a) ** 2 + (y / b) ** 2
    image[np.broadcast_to(trunk <= 1, shape)] = -100  # subcutaneous fat
    image[np.broadcast_to(trunk <= 0.86, shape)] = 50  # muscular wall
    image[np.broadcast_to(trunk <= 0.72, shape)] = 20  # abdominal cavity
    dome = top - 25 * trunk  # the diaphragm, highest in the middle
    for side in (-1, 1):
        lung = _ellipsoid(x, y, z, (side * 0.45 * a, 0.0, length), (0.38 * a, 0.7 * b, length - top + 30)) & (z > dome)
        image[lung] = -850
    paint(_capsule(x, y, z, (0, -0.72 * b, -10), (0, -0.72 * b, length + 10), 20), 500)  # vertebral column
    kidney_z = top - 120 + shift["kidney"][2]
    for side in (-1, 1):
        paint(
            _capsule(x, y, z, (side * 0.22 * a, -0.62 * b, -10), (side * 0.2 * a, -0.6 * b, kidney_z + 20), 14),
            hu["psoas"],
        )
    return dome


def _bowel(canvas: _Canvas, grid, anatomy, rng: np.random.Generator) -> None:
    """Bowel loops, some holding air."""
    x, y, z = grid
    a, b, top, hu, size, shift = (
        anatomy["a"],
        anatomy["b"],
        anatomy["diaphragm"],
        anatomy["hu"],
        anatomy["size"],
        anatomy["shift"],
    )
    paint = canvas.paint
    for bx, by, bz, radius, air in anatomy["bowel"]:
        centre = (bx * a + shift["bowel"][0], by * b + shift["bowel"][1], bz * top)
        loop = _ellipsoid(x, y, z, centre, (radius * size["bowel"], radius * 0.8, radius * 1.4))
        paint(loop, hu["bowel"] + rng.uniform(-10, 10))
        if air > 0.4:
            paint(
                _ellipsoid(x, y, z, (centre[0], centre[1] + 0.4 * radius, centre[2]), (radius * 0.35,) * 3) & loop, -900
            )


def _upper_abdomen(canvas: _Canvas, grid, anatomy, below: np.ndarray) -> None:
    """Liver, spleen and stomach (with its air), below the diaphragm."""
    x, y, z = grid
    a, b, top, hu, size, shift = (
        anatomy["a"],
        anatomy["b"],
        anatomy["diaphragm"],
        anatomy["hu"],
        anatomy["size"],
        anatomy["shift"],
    )
    paint = canvas.paint
    paint(
        _ellipsoid(
            x,
            y,
            z,
            np.array([0.42 * a, 0.05 * b, top - 60]) + shift["liver"],
            np.array([0.45 * a, 0.6 * b, 75]) * size["liver"],
        )
        & below,
        hu["liver"],
        "liver",
    )
    paint(
        _ellipsoid(
            x,
            y,
            z,
            np.array([-0.55 * a, -0.3 * b, top - 45]) + shift["spleen"],
            np.array([0.16 * a, 0.24 * b, 45]) * size["spleen"],
        )
        & below,
        hu["spleen"],
        "spleen",
    )
    stomach_centre = np.array([-0.28 * a, 0.25 * b, top - 50]) + shift["stomach"]
    stomach_radii = np.array([0.22 * a, 0.28 * b, 50]) * size["stomach"]
    stomach = _ellipsoid(x, y, z, stomach_centre, stomach_radii) & below
    paint(stomach, hu["stomach"], "stomach")
    paint(
        stomach
        & _ellipsoid(
            x, y, z, stomach_centre + [0, 0.55 * stomach_radii[1], 0.3 * stomach_radii[2]], stomach_radii * 0.45
        ),
        -900,
        "stomach",
    )


def _kidneys(canvas: _Canvas, grid, anatomy) -> None:
    """Both kidneys (cortex and medulla) and the adrenal glands above them."""
    x, y, z = grid
    a, b, top, hu, size, shift = (
        anatomy["a"],
        anatomy["b"],
        anatomy["diaphragm"],
        anatomy["hu"],
        anatomy["size"],
        anatomy["shift"],
    )
    paint = canvas.paint
    kidney_z = top - 120 + shift["kidney"][2]
    for side, organ_side, drop in ((-1, "left", 0.0), (1, "right", 15.0)):
        centre = np.array([side * 0.45 * a, -0.45 * b, kidney_z - drop]) + shift["kidney"] * [side, 1, 0]
        radii = np.array([28, 18, 52]) * size["kidney"]
        paint(_ellipsoid(x, y, z, centre, radii), hu["kidney cortex"], f"{organ_side} kidney")
        paint(
            _ellipsoid(x, y, z, centre + [-side * 6, 0, 0], radii * [0.5, 0.5, 0.7]),
            hu["kidney medulla"],
            f"{organ_side} kidney",
        )
        adrenal = np.array([side * 0.3 * a, -0.42 * b, centre[2] + radii[2] + 6])
        paint(
            _ellipsoid(x, y, z, adrenal, np.array([12, 6, 15]) * max(size["adrenal"], 0.9)),
            hu["adrenal"],
            f"{organ_side} adrenal gland",
        )


def _retroperitoneum(canvas: _Canvas, grid, anatomy) -> None:
    """Gallbladder, pancreas, the great vessels and the esophagus (with its air)."""
    x, y, z = grid
    a, b, length, top, hu, size, shift = (
        anatomy["a"],
        anatomy["b"],
        anatomy["length"],
        anatomy["diaphragm"],
        anatomy["hu"],
        anatomy["size"],
        anatomy["shift"],
    )
    paint = canvas.paint
    if anatomy["gallbladder"]:
        paint(
            _ellipsoid(
                x,
                y,
                z,
                np.array([0.3 * a, 0.38 * b, top - 105]) + shift["gallbladder"],
                np.array([15, 15, 32]) * size["gallbladder"],
            ),
            hu["gallbladder"],
            "gallbladder",
        )
    pancreas_z = top - 90 + shift["pancreas"][2]
    paint(
        _capsule(
            x,
            y,
            z,
            (0.12 * a, -0.12 * b, pancreas_z - 5),
            (-0.45 * a, -0.25 * b, pancreas_z + 8),
            11 * size["pancreas"],
        ),
        hu["pancreas"],
        "pancreas",
    )
    vessels = shift["vessels"]
    paint(
        _capsule(
            x,
            y,
            z,
            (0.22 * a + vessels[0], 0.0, pancreas_z + 12),
            (-0.45 * a + vessels[0], -0.3 * b, pancreas_z + 16),
            6,
        ),
        hu["portal and splenic vein"],
        "portal and splenic vein",
    )
    paint(
        _capsule(x, y, z, (-0.08 * a + vessels[0], -0.5 * b, -10), (-0.1 * a + vessels[0], -0.5 * b, length + 10), 12),
        hu["aorta"],
        "aorta",
    )
    paint(
        _capsule(x, y, z, (0.14 * a + vessels[0], -0.45 * b, -10), (0.14 * a + vessels[0], -0.45 * b, top + 10), 11),
        hu["inferior vena cava"],
        "inferior vena cava",
    )
    esophagus = _capsule(x, y, z, (-0.03 * a, -0.58 * b, top - 35), (-0.03 * a, -0.58 * b, length + 10), 8)
    paint(esophagus, hu["esophagus"], "esophagus")
    paint(
        esophagus & _capsule(x, y, z, (-0.03 * a, -0.58 * b, top - 30), (-0.03 * a, -0.58 * b, length + 10), 3),
        -900,
        "esophagus",
    )


def _write(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    import nibabel

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.nii.gz")
    nibabel.save(nibabel.Nifti1Image(array, affine), str(tmp))
    os.replace(tmp, path)


def generate(root: Path, seed: int, n_labelled: int, n_unlabelled: int) -> Path:
    """Write the phantoms (once) in BTCV's layout; returns their folder."""
    folder = Path(root) / "synthetic_ct" / f"v{GENERATOR_VERSION}-seed{seed}-{n_labelled}+{n_unlabelled}"
    done = folder / "complete.json"
    stop_at_layout_check("synthetic_ct", done.exists())
    if done.exists():
        return folder
    for sub in ("RawData/Training/img", "RawData/Training/label", "Unlabelled"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for patient in range(n_labelled + n_unlabelled):
        labelled = patient < n_labelled
        name = f"img{patient + 1:04d}.nii.gz"
        image_path = folder / ("RawData/Training/img" if labelled else "Unlabelled") / name
        if image_path.exists():
            continue  # written by an interrupted generation
        image, labels, affine = render_patient(seed, patient)
        if labelled:
            _write(folder / "RawData/Training/label" / f"label{patient + 1:04d}.nii.gz", labels, affine)
        _write(image_path, image, affine)
    done.write_text(
        json.dumps(
            {"generator_version": GENERATOR_VERSION, "seed": seed, "labelled": n_labelled, "unlabelled": n_unlabelled}
        )
    )
    return folder


@register_dataset(
    "synthetic_ct",
    "synthetic abdominal CT phantoms with BTCV's 13 organs, written as NIfTI (3D; generated on first use)",
)
def load_synthetic_ct(
    data_root: Path,
    n_labelled: int = 24,
    n_unlabelled: int = 16,
    seed: int = 0,
    part: str = "labelled",
    spacing: Sequence[float] = (4.0, 4.0, 4.0),
    progress: bool = False,
) -> VolumeDataset:
    if part not in ("labelled", "unlabelled"):
        raise DatasetError(
            f"synthetic_ct: part must be 'labelled' (downstream patients) or 'unlabelled' (pretraining patients), got {part!r}"
        )
    if n_labelled < 3 or n_unlabelled < 1:
        raise DatasetError(
            f"synthetic_ct: need at least 3 labelled patients (train/val/test) and 1 unlabelled, got {n_labelled} and {n_unlabelled}"
        )
    folder = generate(Path(data_root), seed, n_labelled, n_unlabelled)
    if part == "labelled":
        cases = btcv_cases(folder)
    else:
        # patient ids are the file numbers, as btcv_cases gives the labelled ones: unlabelled patients come after them
        cases = [
            Case(path.name[: -len(".nii.gz")], int(path.name[3:7]), path)
            for path in sorted((folder / "Unlabelled").glob("img*.nii.gz"))
        ]
    return load_volumes(
        f"synthetic_ct-{part}", folder, cases, spacing, remap=None, annotated=range(1, 14), seed=seed, progress=progress
    )
