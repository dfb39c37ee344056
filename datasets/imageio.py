"""Decoding of the image files of the real datasets into 2-D arrays (cached once by ``datasets.cache``).

* PNG/JPEG/TIFF via Pillow: grayscale as is; RGB/RGBA reduced to their first channel (torchxrayvision's choice for
  the RGBA PNGs of NIH ChestX-ray14; radiographs stored as RGB have three equal channels).
* DICOM via pydicom, including JPEG-compressed pixel data (SIIM-ACR uses JPEG Baseline, decoded by Pillow):
  modality LUT, then the VOI LUT/window when the file has one, then MONOCHROME1 inverted so that bone is bright,
  as torchxrayvision does for VinDr-CXR. The result is returned at full bit depth; ``datasets.cache`` scales it
  to 0-255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def decode_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode in ("L", "I;16", "I;16B", "I", "F"):
            return np.asarray(image)
        return np.asarray(image)[..., 0]


def decode_dicom(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if pixels.ndim == 3:  # multi-frame or colour: the first frame / channel
        pixels = pixels[..., 0] if getattr(ds, "SamplesPerPixel", 1) > 1 else pixels[0]
    if (
        ds.get("BitsStored", 8) == 8
        and ds.get("PhotometricInterpretation") == "MONOCHROME2"
        and "VOILUTSequence" not in ds
        and "WindowCenter" not in ds
    ):
        return pixels
    pixels = apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float32)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        pixels = pixels.max() - pixels
    return pixels


def decode_fundus(path: Path, threshold: float = 0.1) -> np.ndarray:
    """Colour fundus photograph -> H x W x 3 uint8 cropped to the camera's field of view and padded to a square.

    The field of view is the bounding box of pixels whose red channel exceeds ``threshold`` of its maximum (the
    usual preprocessing of the EyePACS/ODIR pipelines: cameras differ in the black border around the disc of the
    retina). A (nearly) black image keeps its full frame rather than failing, so the cache can still be built and
    the image is visibly empty in ``examples``.
    """
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    red = rgb[..., 0].astype(np.float32)
    mask = red > threshold * max(float(red.max()), 1.0)
    if mask.sum() > 0.01 * mask.size:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        rgb = rgb[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = rgb.shape[:2]
    side = max(h, w)
    square = np.zeros((side, side, 3), np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = rgb
    return square
