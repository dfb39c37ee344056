"""SIIM-ACR loader on tiny fake copies: JPEG-compressed DICOMs, the leading-space header, multi-row relative RLE."""

import numpy as np
import pytest
from fake_dicom import write_dicom
from PIL import Image

from datasets import DatasetError, load_dataset
from datasets.siim_acr import is_relative_encoding, rle_to_mask

SIDE = 40


def expected_mask(*runs):
    """runs: (first pixel, length) in column-major numbering."""
    flat = np.zeros(SIDE * SIDE, np.uint8)
    for start, length in runs:
        flat[start : start + length] = 1
    return flat.reshape(SIDE, SIDE).T


# ImageId -> (patient, CSV rows)
IMAGES = {
    "1.2.3.4.1": ("P1", ["-1"]),
    "1.2.3.4.2": ("P1", ["50 3 10 2", "100 4"]),  # two pneumothoraces, relative codes, OR-ed
    "1.2.3.4.3": ("P2", [" -1"]),
    "1.2.3.4.4": ("P3", ["41 40"]),
    "1.2.3.4.5": ("P4", ["-1"]),
    "1.2.3.4.6": ("P5", ["30 2 3 1"]),
}
EXPECTED = {
    "1.2.3.4.2": expected_mask((50, 3), (63, 2), (100, 4)),
    "1.2.3.4.4": expected_mask((41, 40)),
    "1.2.3.4.6": expected_mask((30, 2), (35, 1)),
}


def make_fake_siim(root):
    lines = ["ImageId, EncodedPixels"] + [f"{uid},{code}" for uid, (_, codes) in IMAGES.items() for code in codes]
    root.mkdir(parents=True)
    (root / "train-rle.csv").write_text("\n".join(lines) + "\n")
    for i, (uid, (patient, _)) in enumerate(list(IMAGES.items()) + [("1.2.3.4.99", ("P9", None))]):  # 99: no CSV row
        write_dicom(
            root / "dicom-images-train" / f"study{i}" / f"series{i}" / f"{uid}.dcm",
            np.full((SIDE, SIDE), 30 * i, np.uint8),
            uid,
            patient,
            jpeg=True,
        )
    return root


def test_dicom_copy_masks_labels_and_patients(tmp_path):
    make_fake_siim(tmp_path / "siim")
    ds = load_dataset("siim_acr", tmp_path, size=SIDE)
    names = sorted(IMAGES)
    assert ds.images.shape == (6, 1, SIDE, SIDE) and ds.class_names == ["Pneumothorax"]
    assert ds.labels[:, 0].tolist() == [0, 1, 0, 1, 0, 1]
    for uid, mask in EXPECTED.items():
        assert np.array_equal(ds.masks[names.index(uid)], mask), uid
    assert ds.masks[names.index("1.2.3.4.1")].sum() == 0
    assert ds.patient_ids[0] == ds.patient_ids[1] and len(set(ds.patient_ids.tolist())) == 5
    assert abs(int(ds.images[2].mean()) - 60) <= 2, "JPEG Baseline pixel data decoded"
    assert ds.mask_name == "Pneumothorax"


def test_stage_2_labels_find_the_stage_1_test_images(tmp_path):
    """stage_2_train.csv labels the stage-1 test images too, which Kaggle's download keeps in dicom-images-test/
    (issue 31): they are found there; the same image in both folders is refused, naming both files."""
    root = tmp_path / "siim"
    lines = ["ImageId,EncodedPixels"] + [
        f"{uid},{code.strip()}" for uid, (_, codes) in IMAGES.items() for code in codes
    ]
    root.mkdir(parents=True)
    (root / "stage_2_train.csv").write_text("\n".join(lines) + "\n")
    for i, (uid, (patient, _)) in enumerate(IMAGES.items()):
        folder = "dicom-images-train" if i < 3 else "dicom-images-test"
        write_dicom(
            root / folder / f"study{i}" / f"series{i}" / f"{uid}.dcm",
            np.full((SIDE, SIDE), 30 * i, np.uint8),
            uid,
            patient,
            jpeg=True,
        )
    ds = load_dataset("siim_acr", tmp_path, size=SIDE)
    assert ds.images.shape == (6, 1, SIDE, SIDE) and ds.labels[:, 0].tolist() == [0, 1, 0, 1, 0, 1]
    assert np.array_equal(ds.masks[sorted(IMAGES).index("1.2.3.4.4")], EXPECTED["1.2.3.4.4"])
    uid = "1.2.3.4.5"
    write_dicom(
        root / "dicom-images-train" / "again" / "again" / f"{uid}.dcm",
        np.zeros((SIDE, SIDE), np.uint8),
        uid,
        "P4",
        jpeg=True,
    )
    with pytest.raises(DatasetError, match=f"image {uid} is stored twice"):
        load_dataset("siim_acr", tmp_path, size=SIDE)


def test_png_copy_with_absolute_rle(tmp_path):
    root = tmp_path / "siim"
    (root / "dataset1024" / "train").mkdir(parents=True)
    rows = ["ImageId,EncodedPixels", "a,5 3 18 2", "a,100 4", "b,-1", "c,-1", "d,-1", "e,-1"]
    (root / "stage_2_train.csv").write_text("\n".join(rows) + "\n")
    for name in "abcde":
        Image.fromarray(np.zeros((SIDE, SIDE), np.uint8)).save(root / "dataset1024" / "train" / f"{name}.png")
    ds = load_dataset("siim_acr", tmp_path, size=SIDE)
    assert np.array_equal(ds.masks[0], expected_mask((5, 3), (18, 2), (100, 4)))


def test_encoding_detection_and_decoding():
    assert is_relative_encoding({"x": [[50, 3, 10, 2]]})  # 10 < 50 + 3: a gap after the first run, not a start
    assert not is_relative_encoding({"x": [[5, 3, 18, 2]], "y": [[7, 1]]})
    assert is_relative_encoding({"y": [[7, 1]]}), "single runs read the same either way; relative is stage 1's"
    assert np.array_equal(
        rle_to_mask([50, 3, 10, 2], SIDE, SIDE, relative=True), rle_to_mask([50, 3, 63, 2], SIDE, SIDE, relative=False)
    )


def test_missing_images_and_malformed_rle_are_clear_errors(tmp_path):
    root = make_fake_siim(tmp_path / "siim")
    next(root.rglob("1.2.3.4.4.dcm")).unlink()
    with pytest.raises(DatasetError, match="1.2.3.4.4"):
        load_dataset("siim_acr", tmp_path, size=SIDE)
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\n1.2.3.4.1,5 3 7\n")
    with pytest.raises(DatasetError, match="odd count"):
        load_dataset("siim_acr", tmp_path, size=SIDE)
    with pytest.raises(DatasetError, match="SIIM-ACR not found"):
        load_dataset("siim_acr", tmp_path / "siim" / "dicom-images-train", size=SIDE)
