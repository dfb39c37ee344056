"""Synthetic chest X-ray phantoms: the embedded default data of the suite.

Each image is drawn from a parametric frontal (PA) chest radiograph model, deterministically from
``(seed, image index)``: body outline, two lung fields with vascular markings that thin towards the
periphery, posterior ribs crossing the lungs, heart, spine, clavicles and a domed diaphragm. Patient-level anatomy
(thorax, body and lung size and shape, heart size and position, diaphragm dome, scoliosis, soft-tissue density) is
shared by all images of a patient; each film varies in position, scale, rotation, exposure, contrast curve
(gamma), exposure gradient, blur and noise, as follow-up films do.

Design choice (generator version 3): what stays the same between two augmented crops of one film should be its
anatomy and findings, not incidental "style". Version 2 also gave every patient its own rib pattern, soft-tissue
texture and breast shadows and every film ECG electrodes, leads, a side marker and collimation borders; short
self-supervised runs then learned to tell films apart by those cues and their linear probes fell below a random
encoder's (docs/results.md). Version 3 keeps texture-like traits nearly constant across patients, drops
the devices and markers, and makes acquisition variation (exposure, contrast, gamma) large, which the suite's
intensity augmentations teach invariance to.

Findings (multi-label targets, any combination, each detectable by eye at 64 px and above; drawn from their own
random stream, so ``render_phantom(..., with_findings=False)`` renders the same film without them):

* ``Nodule``        -- one to three small round opacities inside a lung.
* ``Mass``          -- one larger round opacity inside a lung.
* ``Effusion``      -- fluid filling a lung base with a meniscus rising laterally (blunted costophrenic angle).
* ``Cardiomegaly``  -- heart 1.4-1.6x wider than the patient's normal heart; a patient-level trait.
* ``Pneumothorax``  -- a dark rim without lung markings along the apex/lateral wall, bounded by a thin bright
  pleural line; its pixel mask is stored (``masks``), as SIIM-ACR provides.
* ``Consolidation`` -- a patchy, ill-defined opacity inside a lung.

Splits are patient-disjoint (70 / 10 / 20 % of patients), fixed by the dataset seed.
The generated arrays are cached under ``<data_root>/synthetic_cxr/<parameter hash>/`` on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from scipy import ndimage

from datasets.base import DatasetError, ImageDataset, register_dataset, split_by_patient
from datasets.generated import load_generated, render_each

CLASS_NAMES = ["Nodule", "Mass", "Effusion", "Cardiomegaly", "Pneumothorax", "Consolidation"]
GENERATOR_VERSION = 3  # bump when the image model changes: it is part of the cache key

# Per-image prevalence of each acquired finding; cardiomegaly is drawn per patient.
_PREVALENCE = {"Nodule": 0.22, "Mass": 0.18, "Effusion": 0.22, "Pneumothorax": 0.2, "Consolidation": 0.22}
_CARDIOMEGALY_PATIENT_RATE = 0.25


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma * size, mode="reflect")
    return field / (field.std() + 1e-8)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2


def _patient_anatomy(seed: int, patient: int) -> Dict[str, float]:
    rng = np.random.default_rng([seed, 1, patient])
    return {
        "thorax": rng.uniform(0.86, 1.0),
        "lung_height": rng.uniform(0.52, 0.62),
        "heart_half_width": rng.uniform(0.19, 0.25),
        "cardiomegaly": float(rng.random() < _CARDIOMEGALY_PATIENT_RATE),
        "enlargement": rng.uniform(1.4, 1.6),
        "dome": rng.uniform(0.14, 0.22),
        "risk": rng.uniform(0.5, 1.5),  # multiplies the prevalence of acquired findings for this patient
        # habitus and anatomy; texture-like traits (ribs, tissue texture) vary little on purpose (module docstring)
        "body_w": rng.uniform(0.8, 1.0),
        "body_h": rng.uniform(1.05, 1.25),
        "tissue": rng.uniform(0.40, 0.44),
        "lung_air": rng.uniform(0.14, 0.17),
        "lung_w": rng.uniform(0.26, 0.33),
        "lung_gap": rng.uniform(0.34, 0.42),
        "lung_asymmetry": rng.uniform(-0.05, 0.05),
        "rib_width": rng.uniform(0.02, 0.024),
        "rib_curve": rng.uniform(0.3, 0.4),
        "rib_contrast": rng.uniform(0.09, 0.11),
        "scoliosis": rng.uniform(-0.06, 0.06),
        "heart_height": rng.uniform(0.19, 0.25),
        "heart_y": rng.uniform(0.13, 0.2),
        "texture": rng.uniform(0.015, 0.02),
    }


def render_phantom(
    seed: int, index: int, patient: int, size: int, with_findings: bool = True
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (image float32 in [0,1], labels uint8 [K], pneumothorax mask uint8) for one image.

    Findings are drawn from their own random stream, so ``with_findings=False`` renders the very same film
    (patient, pose, markings, exposure, noise) without them; the labels returned are those of the full image.
    """
    anatomy = _patient_anatomy(seed, patient)
    rng = np.random.default_rng([seed, 2, index])  # pose, markings and acquisition of this film
    finding_rng = np.random.default_rng([seed, 5, index])  # which findings, where and how large
    labels = {name: float(finding_rng.random() < min(0.9, p * anatomy["risk"])) for name, p in _PREVALENCE.items()}
    labels["Cardiomegaly"] = anatomy["cardiomegaly"]
    present = {name: bool(value) and with_findings for name, value in labels.items()}
    film = _Film(rng, finding_rng, anatomy, size)
    x, y = film.x, film.y

    body = _ellipse(x, y, 0, 0.1, anatomy["body_w"], anatomy["body_h"]) < 1
    texture = anatomy["texture"] * _smooth_noise(np.random.default_rng([seed, 4, patient]), size, 0.04)
    image = np.where(body, anatomy["tissue"] + texture, 0.04).astype(np.float32)
    lungs, diaphragm = film.lung_fields()
    lung_any = lungs[0] | lungs[1]

    # Vascular markings: band-limited noise whose contrast fades from the hilum outwards.
    hilum_dist = np.sqrt((np.abs(x) - 0.18) ** 2 + (y - 0.0) ** 2)
    markings = np.clip(_smooth_noise(rng, size, 0.015), 0, None) * np.clip(1.0 - hilum_dist / 0.55, 0, 1)
    lung_density = anatomy["lung_air"] + 0.07 * markings
    ptx_mask, pleural_line = film.pneumothorax(lungs, present["Pneumothorax"], image.shape)
    lung_image = np.where(ptx_mask, 0.06, lung_density) + pleural_line * (~ptx_mask)
    image = np.where(lung_any, lung_image, image)
    image, spine = film.bones(image, lung_any)

    # Heart: a soft-tissue ellipse overlapping the medial left lung (the image's right side).
    heart_half_width = anatomy["heart_half_width"] * (anatomy["enlargement"] if present["Cardiomegaly"] else 1.0)
    heart = (
        _ellipse(x, y, 0.06 + 0.3 * heart_half_width, anatomy["heart_y"], heart_half_width, anatomy["heart_height"]) < 1
    )
    image = np.where(heart, np.maximum(image, 0.56), image)

    # Below the diaphragm everything is soft tissue.
    image = np.where(body & (y > diaphragm) & ~heart & ~spine, np.maximum(image, anatomy["tissue"] + 0.04), image)
    image = film.findings(image, lungs, ptx_mask, diaphragm, present)
    image = film.acquire(image)
    label_vector = np.array([labels[c] for c in CLASS_NAMES], dtype=np.uint8)
    return np.clip(image, 0, 1).astype(np.float32), label_vector, ptx_mask.astype(np.uint8)


class _Film:
    """One film of :func:`render_phantom`: its pose (the grid is rotated, scaled and shifted instead of the
    anatomy), its acquisition settings, and the parts drawn on it. ``rng`` (pose, markings, ribs, acquisition) and
    ``finding_rng`` (findings) are read in the order render_phantom calls the parts."""

    def __init__(self, rng: np.random.Generator, finding_rng: np.random.Generator, anatomy: Dict, size: int):
        self.rng, self.finding_rng, self.anatomy, self.size = rng, finding_rng, anatomy, size
        angle = np.deg2rad(rng.uniform(-6, 6))
        scale = anatomy["thorax"] * rng.uniform(0.92, 1.08)
        shift = rng.uniform(-0.06, 0.06, size=2)
        self.contrast, self.offset, self.gamma = rng.uniform(0.75, 1.25), rng.uniform(-0.1, 0.1), rng.uniform(0.7, 1.4)
        self.gradient, self.blur, self.noise = (
            rng.uniform(-0.08, 0.08, size=2),
            rng.uniform(0.4, 0.6) * size / 128,
            rng.uniform(0.015, 0.025),
        )
        lin = np.linspace(-1, 1, size, dtype=np.float32)
        self.gx, self.gy = np.meshgrid(lin, lin)
        self.x = (np.cos(angle) * self.gx + np.sin(angle) * self.gy - shift[0]) / scale
        self.y = (-np.sin(angle) * self.gx + np.cos(angle) * self.gy - shift[1]) / scale
        self.lung_cy = -0.05

    def lung_fields(self):
        """(the two lungs' masks, the diaphragm's height per pixel)."""
        x, y, anatomy = self.x, self.y, self.anatomy
        lung_w, lung_h = anatomy["lung_w"], anatomy["lung_height"]
        # Each hemidiaphragm is a dome peaking under the middle of its lung; lateral ends form the costophrenic angles.
        diaphragm = self.lung_cy + 0.95 * lung_h - anatomy["dome"] * np.clip(1 - ((np.abs(x) - 0.36) / 0.34) ** 2, 0, 1)
        lungs = []
        for side in (-1, 1):
            cx = side * anatomy["lung_gap"]
            height = lung_h * (1 + side * anatomy["lung_asymmetry"])
            shape = (_ellipse(x, y, cx, self.lung_cy, lung_w, height) < 1) & (y < diaphragm)
            lungs.append(shape)
        return lungs, diaphragm

    def pneumothorax(self, lungs, present: bool, shape):
        """(mask, pleural line): the lung edge retracts from the apex and lateral wall; the gap holds only air."""
        x, y, anatomy = self.x, self.y, self.anatomy
        ptx_mask = np.zeros_like(lungs[0] | lungs[1])
        pleural_line = np.zeros(shape, dtype=np.float32)
        if present:
            side = self.finding_rng.choice([-1, 1])
            lung = lungs[0] if side < 0 else lungs[1]
            cx = side * anatomy["lung_gap"]
            depth = self.finding_rng.uniform(0.3, 0.5)
            lung_w, lung_h = anatomy["lung_w"], anatomy["lung_height"]
            inner = _ellipse(
                x,
                y,
                cx - side * 0.08 * depth,
                self.lung_cy + 0.15 * depth,
                lung_w * (1 - depth),
                lung_h * (1 - 0.6 * depth),
            )
            ptx_mask = lung & (inner >= 1)
            pleural_line = 0.2 * np.exp(-(((np.sqrt(inner) - 1) / 0.05) ** 2)) * lung
        return ptx_mask, pleural_line

    def bones(self, image: np.ndarray, lung_any: np.ndarray):
        """Posterior ribs (bright arcs that cross both lungs, sloping down laterally), clavicles and spine; returns
        the image and the spine's mask."""
        x, y, anatomy = self.x, self.y, self.anatomy
        ribs = np.zeros_like(image)
        spacing = self.rng.uniform(0.12, 0.13)
        for k in range(10):
            y0 = -0.62 + k * spacing
            arc = y0 - 0.35 * (np.abs(x) - 0.35) ** 2 + anatomy["rib_curve"] * np.abs(x)
            ribs += np.exp(-(((y - arc) / anatomy["rib_width"]) ** 2))
        image += anatomy["rib_contrast"] * np.clip(ribs, 0, 1) * lung_any
        for side in (-1, 1):
            clav = np.abs(y - (-0.68 + 0.12 * (side * x - 0.1) ** 2)) < 0.025
            image = np.where(clav & (np.abs(x) < 0.62) & (side * x > 0.03), image + 0.15, image)
        vertebrae = 0.5 + 0.5 * np.cos(y * np.pi / spacing * 2)
        spine_x = anatomy["scoliosis"] * np.sin(np.pi * (y + 0.8) / 1.6)
        spine = np.abs(x - spine_x) < 0.07
        return np.where(spine, 0.6 + 0.05 * vertebrae, image), spine

    def point_in(self, lung_mask: np.ndarray, ptx_mask: np.ndarray, margin: float) -> Tuple[float, float]:
        eroded = ndimage.binary_erosion(lung_mask & ~ptx_mask, iterations=max(1, int(margin * self.size / 2)))
        candidates = np.argwhere(eroded if eroded.any() else lung_mask)
        if len(candidates) == 0:
            return 0.0, 0.0
        r, c = candidates[self.finding_rng.integers(len(candidates))]
        return float(self.gx[r, c]), float(self.gy[r, c])

    def blob(self, cx: float, cy: float, radius: float, strength: float) -> np.ndarray:
        return strength * np.exp(-((((self.gx - cx) ** 2 + (self.gy - cy) ** 2) / radius**2) ** 2))

    def findings(self, image, lungs, ptx_mask, diaphragm, present: Dict[str, bool]) -> np.ndarray:
        """Nodules, mass, consolidation and effusion where ``present`` says so."""
        frng, gx, gy = self.finding_rng, self.gx, self.gy
        if present["Nodule"]:
            for _ in range(frng.integers(1, 4)):
                image += self.blob(
                    *self.point_in(lungs[frng.integers(2)], ptx_mask, 0.08),
                    frng.uniform(0.05, 0.07),
                    frng.uniform(0.25, 0.32),
                )
        if present["Mass"]:
            image += self.blob(
                *self.point_in(lungs[frng.integers(2)], ptx_mask, 0.15),
                frng.uniform(0.11, 0.15),
                frng.uniform(0.25, 0.32),
            )
        if present["Consolidation"]:
            lung = lungs[frng.integers(2)]
            cx, cy = self.point_in(lung, ptx_mask, 0.1)
            region = ((gx - cx) ** 2 + (gy - cy) ** 2) < frng.uniform(0.18, 0.28) ** 2
            patches = np.clip(_smooth_noise(frng, self.size, 0.03) + 0.6, 0, None)
            image += 0.22 * np.clip(patches, 0, 1.5) * region * lung * (~ptx_mask)
        if present["Effusion"]:
            side = frng.integers(2)
            lung = lungs[side]
            cx = (-1 if side == 0 else 1) * self.anatomy["lung_gap"]
            lung_w, lung_h = self.anatomy["lung_w"], self.anatomy["lung_height"]
            level = frng.uniform(0.18, 0.32) * lung_h
            meniscus = diaphragm - level - 0.5 * (np.abs(self.x - cx) / lung_w) ** 2 * level
            fluid = lung & (self.y > meniscus)
            image = np.where(fluid, np.maximum(image, 0.46 + 0.04 * np.clip(self.y - meniscus, 0, 0.3) / 0.3), image)
        return image

    def acquire(self, image: np.ndarray) -> np.ndarray:
        """Acquisition: exposure gradient, blur, exposure and contrast (gamma), quantum noise."""
        image = image + self.gradient[0] * self.gx + self.gradient[1] * self.gy
        image = ndimage.gaussian_filter(image, self.blur)
        image = np.clip((image - 0.4) * self.contrast + 0.4 + self.offset, 0, 1) ** self.gamma
        return image + self.rng.normal(0, self.noise, image.shape)


def _assign_patients(n_images: int, images_per_patient: float, seed: int) -> np.ndarray:
    """Patient id per image: each patient has 1..(2*mean-1) consecutive follow-up images."""
    rng = np.random.default_rng([seed, 0])
    ids, patient = [], 0
    while len(ids) < n_images:
        count = int(rng.integers(1, max(2, int(round(2 * images_per_patient)))))
        ids.extend([patient] * count)
        patient += 1
    return np.asarray(ids[:n_images], dtype=np.int64)


def generate(n_images: int, size: int, seed: int, images_per_patient: float = 2.0, progress: bool = False):
    patient_ids = _assign_patients(n_images, images_per_patient, seed)
    images = np.empty((n_images, 1, size, size), dtype=np.uint8)
    labels = np.empty((n_images, len(CLASS_NAMES)), dtype=np.uint8)
    masks = np.empty((n_images, size, size), dtype=np.uint8)

    def render(i: int) -> None:
        image, labels[i], masks[i] = render_phantom(seed, i, int(patient_ids[i]), size)
        images[i, 0] = np.round(image * 255).astype(np.uint8)

    render_each(n_images, render, f"generating {n_images} phantoms at {size} px", progress)
    return images, labels, masks, patient_ids, split_by_patient(patient_ids, seed, salt=3)


@register_dataset(
    "synthetic_cxr",
    "synthetic chest X-ray phantoms (6 findings + pneumothorax masks); generated on first use",
    version=GENERATOR_VERSION,
)
def load_synthetic_cxr(
    data_root: Path,
    n_images: int = 2000,
    size: int = 128,
    seed: int = 0,
    images_per_patient: float = 2.0,
    progress: bool = False,
) -> ImageDataset:
    if n_images < 20:
        raise DatasetError(
            f"synthetic_cxr needs at least 20 images for patient-disjoint splits, got n_images={n_images}"
        )
    params = {
        "n_images": n_images,
        "size": size,
        "seed": seed,
        "images_per_patient": images_per_patient,
        "version": GENERATOR_VERSION,
    }
    return load_generated(
        "synthetic_cxr",
        data_root,
        params,
        lambda: generate(n_images, size, seed, images_per_patient, progress),
        CLASS_NAMES,
        mask_name="Pneumothorax",
    )
