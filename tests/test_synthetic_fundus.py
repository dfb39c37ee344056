import numpy as np
import pytest

from datasets import DatasetError, load_dataset
from datasets.synthetic_fundus import CLASS_NAMES, render_fundus


def test_fundus_phantoms_are_deterministic_colour_and_two_eyes_per_patient(synthetic_root):
    a = load_dataset("synthetic_fundus", synthetic_root, n_images=40, size=32, seed=1)
    b = load_dataset("synthetic_fundus", synthetic_root / "elsewhere", n_images=40, size=32, seed=1)
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    assert a.images.shape == (40, 3, 32, 32) and a.images.dtype == np.uint8 and a.masks is None
    assert a.class_names == CLASS_NAMES
    _, counts = np.unique(a.patient_ids, return_counts=True)
    assert (counts == 2).all()
    splits = {s: set(a.patient_ids[a.split == s]) for s in ("train", "val", "test")}
    assert (
        not (splits["train"] & splits["val"])
        and not (splits["train"] & splits["test"])
        and not (splits["val"] & splits["test"])
    )
    # a patient's two eyes share the patient-level trait (disc cupping)
    k = CLASS_NAMES.index("Disc cupping")
    assert all(a.labels[i, k] == a.labels[i + 1, k] for i in range(0, 40, 2))
    with pytest.raises(DatasetError, match="at least 20 images"):
        load_dataset("synthetic_fundus", synthetic_root, n_images=4)


def test_anatomy_dark_outside_the_field_and_disc_on_the_nasal_side():
    image, _ = render_fundus(0, 0, 0, 0, 64)
    assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
    assert image[:, 0, 0].max() == 0 and image[:, 32, 32].mean() > 0.1  # black corners, lit retina
    brightness = image.sum(0)
    right_eye_column = np.unravel_index(np.argmax(brightness), brightness.shape)[1]
    left, _ = render_fundus(0, 1, 0, 1, 64)
    left_eye_column = np.unravel_index(np.argmax(left.sum(0)), (64, 64))[1]
    assert right_eye_column > 40 and left_eye_column < 24  # the optic disc is the brightest structure
    assert image[0].mean() > image[2].mean()  # a red-orange fundus


def test_every_fundus_finding_is_visible_and_none_without_them():
    seen = {name: 0 for name in CLASS_NAMES}
    for i in range(60):
        with_findings, labels = render_fundus(0, i, i // 2, i % 2, 64)
        without, same_labels = render_fundus(0, i, i // 2, i % 2, 64, with_findings=False)
        np.testing.assert_array_equal(labels, same_labels)
        difference = np.abs(with_findings - without).max(axis=0)
        if labels.any():
            assert (difference > 0.08).sum() >= 2, (i, labels)  # at least a few clearly changed pixels
        else:
            assert difference.max() == 0
        for name, value in zip(CLASS_NAMES, labels):
            seen[name] += int(value)
    assert all(count > 0 for count in seen.values()), seen
