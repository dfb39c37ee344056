"""Synthetic colour fundus photographs: the embedded default for the fundus half of the tables (EyePACS-style
pretraining, MuReD/ODIR-style multi-label evaluation).

Each image is drawn deterministically from ``(seed, image index)``: a circular field of view on black, an orange-red
retina whose pigmentation, choroidal texture and vignetting are patient traits, a yellow optic disc with its paler
cup on the nasal side, a darker macula about 2.5 disc diameters temporal to the disc, and a vessel tree (four
arcades leaving the disc, branching twice, thinning towards the periphery). A patient has two eyes (right and
left: mirror images of one anatomy, each with its own vessel pattern); each photograph varies in field-of-view
position, illumination, colour balance, blur and noise.

Findings (multi-label targets; each visible at 64 px and above; drawn from their own random stream, so
``render_fundus(..., with_findings=False)`` renders the same photograph without them):

* ``Microaneurysms`` -- 4-12 tiny dark-red dots around the macula (early diabetic retinopathy).
* ``Haemorrhages``   -- 1-4 larger dark-red blots in the posterior pole.
* ``Exudates``       -- clusters of small bright yellow spots, often in a partial ring around the macula.
* ``Drusen``         -- pale yellow soft-edged round deposits in the macula (age-related macular degeneration).
* ``Disc cupping``   -- cup-to-disc ratio 0.7-0.85 instead of 0.3-0.5 (glaucoma suspect); a patient-level trait.

Diabetic-retinopathy findings share a per-patient risk, as in screening data. Splits are patient-disjoint
(70 / 10 / 20 % of patients). Generated on first use into ``<data_root>/synthetic_fundus/<parameter hash>/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from scipy import ndimage

from datasets.base import DatasetError, ImageDataset, register_dataset, split_by_patient
from datasets.generated import load_generated, render_each

CLASS_NAMES = ["Microaneurysms", "Haemorrhages", "Exudates", "Drusen", "Disc cupping"]
GENERATOR_VERSION = 1
_PREVALENCE = {"Microaneurysms": 0.25, "Haemorrhages": 0.18, "Exudates": 0.18, "Drusen": 0.15}
_CUPPING_PATIENT_RATE = 0.2


def _patient_anatomy(seed: int, patient: int) -> Dict[str, float]:
    rng = np.random.default_rng([seed, 11, patient])
    return {
        "pigment": rng.uniform(0.0, 1.0),  # 0 = light orange fundus, 1 = dark red-brown
        "disc_radius": rng.uniform(0.09, 0.115),
        "disc_y": rng.uniform(-0.06, 0.06),
        "disc_x": rng.uniform(0.38, 0.46),  # nasal offset of the disc from the centre (right eye: to the right)
        "macula_drop": rng.uniform(0.02, 0.08),
        "cupping": float(rng.random() < _CUPPING_PATIENT_RATE),
        "cup_ratio": rng.uniform(0.3, 0.5),
        "cup_ratio_glaucoma": rng.uniform(0.7, 0.85),
        "risk": rng.uniform(0.4, 1.6),  # diabetic-retinopathy risk: multiplies the lesion prevalences
        "texture": rng.uniform(0.02, 0.04),
    }


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma * size, mode="reflect")
    return field / (field.std() + 1e-8)


def _vessel_tree(
    rng: np.random.Generator, disc: Tuple[float, float], macula: Tuple[float, float], size: int, side: float
) -> np.ndarray:
    """Vessel density in [0, 1]: four arcades leaving the disc, each branching twice, drawn as blurred polylines."""
    canvas = np.zeros((size, size), dtype=np.float32)

    def draw(points: np.ndarray, width_px: float) -> None:
        layer = np.zeros_like(canvas)
        cols = np.clip(((points[:, 0] + 1) / 2 * (size - 1)).round().astype(int), 0, size - 1)
        rows = np.clip(((points[:, 1] + 1) / 2 * (size - 1)).round().astype(int), 0, size - 1)
        layer[rows, cols] = 1.0
        layer = ndimage.gaussian_filter(layer, max(0.5, width_px / 2.0))
        np.maximum(canvas, layer / (layer.max() + 1e-8), out=canvas)

    def branch(start: np.ndarray, angle: float, length: float, width_px: float, depth: int, bend: float) -> None:
        steps = max(8, int(length * size))
        angles = angle + np.cumsum(rng.normal(bend / steps, 0.04, steps))
        path = start + np.cumsum(np.stack([np.cos(angles), np.sin(angles)], 1) * (length / steps), axis=0)
        draw(path, width_px)
        if depth > 0:
            for fork in rng.uniform(0.3, 0.8, size=2):
                k = int(fork * (steps - 1))
                branch(
                    path[k],
                    angles[k] + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9),
                    length * 0.55,
                    width_px * 0.65,
                    depth - 1,
                    bend * 0.5,
                )

    start = np.array(disc, dtype=np.float64)
    towards_macula = np.arctan2(macula[1] - disc[1], macula[0] - disc[0])
    for vertical in (-1, 1):  # superior and inferior temporal arcades curve around the macula ...
        branch(start, towards_macula + vertical * 1.0, 1.1, size / 64 * 1.8, 2, -vertical * 0.8)
    for vertical in (-1, 1):  # ... nasal vessels run straighter towards the nasal periphery
        branch(start, np.pi * (side < 0) + vertical * 0.7, 0.6, size / 64 * 1.4, 1, 0.0)
    return canvas


def render_fundus(
    seed: int, index: int, patient: int, eye: int, size: int, with_findings: bool = True
) -> Tuple[np.ndarray, np.ndarray]:
    """(image float32 3 x S x S in [0, 1], labels uint8 [K]) of one photograph; ``eye`` 0 = right, 1 = left."""
    anatomy = _patient_anatomy(seed, patient)
    rng = np.random.default_rng([seed, 12, index])  # vessels and acquisition of this photograph
    finding_rng = np.random.default_rng([seed, 13, index])
    labels = {name: float(finding_rng.random() < min(0.9, p * anatomy["risk"])) for name, p in _PREVALENCE.items()}
    labels["Disc cupping"] = anatomy["cupping"]
    present = {name: bool(value) and with_findings for name, value in labels.items()}

    side = 1.0 if eye == 0 else -1.0  # the disc is nasal: right of centre in a right eye, left in a left eye
    shift = rng.uniform(-0.04, 0.04, size=2)
    lin = np.linspace(-1, 1, size, dtype=np.float32)
    gx, gy = np.meshgrid(lin, lin)
    x, y = gx - shift[0], gy - shift[1]
    radius = np.sqrt(x**2 + y**2)
    fov = radius < 0.92

    disc = (side * anatomy["disc_x"], anatomy["disc_y"])
    macula = (disc[0] - side * 5 * anatomy["disc_radius"], disc[1] + anatomy["macula_drop"])
    texture = anatomy["texture"] * _smooth_noise(np.random.default_rng([seed, 14, patient]), size, 0.03)
    if eye == 1:
        texture = texture[:, ::-1]
    pigment = anatomy["pigment"]
    base = np.array([0.78 - 0.25 * pigment, 0.36 - 0.14 * pigment, 0.16 - 0.06 * pigment], dtype=np.float32)
    vignette = 1.0 - 0.45 * np.clip(radius / 0.92, 0, 1) ** 2
    image = (base[:, None, None] + texture[None]) * vignette[None]

    # Macula: darker, redder centre.
    macula_dist = np.sqrt((x - macula[0]) ** 2 + (y - macula[1]) ** 2)
    image *= 1.0 - 0.28 * np.exp(-((macula_dist / 0.12) ** 2))[None]

    # Vessels: dark red, slightly more on green (haemoglobin absorbs green).
    vessels = _vessel_tree(
        rng, (disc[0] + shift[0], disc[1] + shift[1]), (macula[0] + shift[0], macula[1] + shift[1]), size, side
    )
    image *= 1.0 - vessels[None] * np.array([0.35, 0.55, 0.45], dtype=np.float32)[:, None, None]

    # Optic disc with its cup.
    disc_dist = np.sqrt((x - disc[0]) ** 2 + (y - disc[1]) ** 2) / anatomy["disc_radius"]
    disc_mask = np.clip(1.3 - disc_dist, 0, 1) ** 0.5
    cup_ratio = anatomy["cup_ratio_glaucoma"] if present["Disc cupping"] else anatomy["cup_ratio"]
    cup_mask = np.clip((cup_ratio - disc_dist) / 0.1 + 0.5, 0, 1)
    disc_colour = np.array([0.9, 0.68, 0.42], dtype=np.float32)[:, None, None]
    image = image * (1 - disc_mask[None]) + disc_colour * disc_mask[None]
    image = image + cup_mask[None] * np.array([0.08, 0.24, 0.36], dtype=np.float32)[:, None, None]

    image = _lesions(image, present, finding_rng, (x, y), disc, macula, anatomy["disc_radius"])
    image = _acquire(image, rng, size, fov)
    label_vector = np.array([labels[c] for c in CLASS_NAMES], dtype=np.uint8)
    return np.clip(image, 0, 1).astype(np.float32), label_vector


def _lesions(image, present, finding_rng, grid, disc, macula, disc_radius: float) -> np.ndarray:
    """Microaneurysms, haemorrhages, exudates and drusen where ``present`` says so, each kept inside the field of
    view and off the disc."""
    x, y = grid

    def spots(
        n: int,
        centre: Tuple[float, float],
        spread: float,
        radius_range: Tuple[float, float],
        colour,
        strength: float,
        softness: float = 1.0,
    ) -> None:
        nonlocal image
        for _ in range(n):
            for _attempt in range(20):  # keep lesions inside the field of view and off the disc
                cx, cy = finding_rng.normal(centre[0], spread), finding_rng.normal(centre[1], spread)
                if cx**2 + cy**2 < 0.8**2 and (cx - disc[0]) ** 2 + (cy - disc[1]) ** 2 > (1.6 * disc_radius) ** 2:
                    break
            r = finding_rng.uniform(*radius_range)
            blob = np.exp(-((((x - cx) ** 2 + (y - cy) ** 2) / r**2) ** softness))
            image = (
                image * (1 - strength * blob[None])
                + strength * blob[None] * np.asarray(colour, dtype=np.float32)[:, None, None]
            )

    if present["Microaneurysms"]:
        spots(int(finding_rng.integers(4, 13)), macula, 0.22, (0.012, 0.018), (0.35, 0.04, 0.03), 0.9)
    if present["Haemorrhages"]:
        spots(int(finding_rng.integers(1, 5)), macula, 0.3, (0.035, 0.06), (0.3, 0.03, 0.02), 0.85, softness=2.0)
    if present["Exudates"]:
        ring = finding_rng.uniform(0, 2 * np.pi)
        centre = (macula[0] + 0.15 * np.cos(ring), macula[1] + 0.15 * np.sin(ring))
        spots(int(finding_rng.integers(6, 16)), centre, 0.07, (0.012, 0.02), (1.0, 0.93, 0.45), 0.9, softness=2.0)
    if present["Drusen"]:
        spots(int(finding_rng.integers(5, 12)), macula, 0.08, (0.018, 0.03), (0.95, 0.85, 0.5), 0.55)

    return image


def _acquire(image, rng: np.random.Generator, size: int, fov) -> np.ndarray:
    """Acquisition: illumination, colour balance, blur, sensor noise; black outside the field of view."""
    gain = rng.uniform(0.8, 1.2) * rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    image = image * gain[:, None, None]
    blur = rng.uniform(0.3, 0.7) * size / 128
    image = np.stack([ndimage.gaussian_filter(channel, blur) for channel in image])
    image = image + rng.normal(0, rng.uniform(0.01, 0.02), image.shape)
    image = np.where(fov[None], image, 0.0)
    return image


def generate(n_images: int, size: int, seed: int, progress: bool = False):
    """Two photographs (right and left eye) per patient, patients numbered consecutively."""
    patient_ids = np.arange(n_images, dtype=np.int64) // 2
    images = np.empty((n_images, 3, size, size), dtype=np.uint8)
    labels = np.empty((n_images, len(CLASS_NAMES)), dtype=np.uint8)

    def render(i: int) -> None:
        image, labels[i] = render_fundus(seed, i, int(patient_ids[i]), i % 2, size)
        images[i] = np.round(image * 255).astype(np.uint8)

    render_each(n_images, render, f"generating {n_images} fundus phantoms at {size} px", progress)
    return images, labels, None, patient_ids, split_by_patient(patient_ids, seed, salt=5)


@register_dataset(
    "synthetic_fundus",
    "synthetic colour fundus photographs (5 findings, 2 eyes per patient); generated on first use",
    version=GENERATOR_VERSION,
)
def load_synthetic_fundus(
    data_root: Path, n_images: int = 2000, size: int = 128, seed: int = 0, progress: bool = False
) -> ImageDataset:
    if n_images < 20:
        raise DatasetError(
            f"synthetic_fundus needs at least 20 images for patient-disjoint splits, got n_images={n_images}"
        )
    params = {"n_images": n_images, "size": size, "seed": seed, "version": GENERATOR_VERSION}
    return load_generated(
        "synthetic_fundus", data_root, params, lambda: generate(n_images, size, seed, progress), CLASS_NAMES
    )
