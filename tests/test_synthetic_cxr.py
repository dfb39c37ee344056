import numpy as np
import pytest

from datasets import DatasetError, load_dataset
from datasets.synthetic_cxr import CLASS_NAMES, render_phantom


def test_phantoms_are_deterministic_and_labelled(synthetic_root):
    a = load_dataset("synthetic_cxr", synthetic_root, n_images=60, size=32, seed=3)
    b = load_dataset("synthetic_cxr", synthetic_root / "elsewhere", n_images=60, size=32, seed=3)
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.images.shape == (60, 1, 32, 32) and a.images.dtype == np.uint8
    assert a.class_names == CLASS_NAMES
    other = load_dataset("synthetic_cxr", synthetic_root, n_images=60, size=32, seed=4)
    assert not np.array_equal(np.asarray(other.images), np.asarray(a.images))


def test_pneumothorax_mask_present_exactly_when_labelled():
    k = CLASS_NAMES.index("Pneumothorax")
    seen = {0: 0, 1: 0}
    for i in range(40):
        _, labels, mask = render_phantom(0, i, i, 64)
        assert bool(mask.any()) == bool(labels[k])
        seen[int(labels[k])] += 1
    assert seen[0] and seen[1]


def test_rendered_pixels_and_labels_are_well_formed():
    for i in range(10):
        image, labels, mask = render_phantom(0, i, i, 48)
        assert image.shape == mask.shape == (48, 48) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert labels.dtype == np.uint8 and labels.shape == (len(CLASS_NAMES),) and set(labels) <= {0, 1}


def test_several_images_per_patient_and_patient_disjoint_splits(synthetic_root):
    ds = load_dataset("synthetic_cxr", synthetic_root, n_images=200, size=32, seed=0)
    _, counts = np.unique(ds.patient_ids, return_counts=True)
    assert counts.max() > 1
    splits = {s: set(ds.patient_ids[ds.split == s]) for s in ("train", "val", "test")}
    assert (
        not (splits["train"] & splits["val"])
        and not (splits["train"] & splits["test"])
        and not (splits["val"] & splits["test"])
    )
    assert all(ds.labels.sum(0) > 0), "every finding occurs"


def test_too_few_images_is_a_clear_error(synthetic_root):
    with pytest.raises(DatasetError, match="at least 20 images"):
        load_dataset("synthetic_cxr", synthetic_root, n_images=5, size=32)


def test_unknown_dataset_names_the_known_ones(synthetic_root):
    with pytest.raises(DatasetError, match="known datasets: .*synthetic_cxr"):
        load_dataset("nope", synthetic_root)


def test_every_finding_is_visible_in_the_pixels():
    """Rendering the same film without its findings changes the pixels, and only where the finding is plausible:
    each labelled finding alters a visible area (not just noise), and an image without findings is unchanged."""
    size = 64
    changed_area = {name: [] for name in CLASS_NAMES}
    unchanged = 0
    for i in range(80):
        image, labels, mask = render_phantom(0, i, i, size)
        clean, clean_labels, _ = render_phantom(0, i, i, size, with_findings=False)
        np.testing.assert_array_equal(labels, clean_labels)
        visible = np.abs(image - clean) > 0.05
        if not labels.any():
            assert not visible.any(), "a film without findings must render identically"
            unchanged += 1
        for k in np.flatnonzero(labels):
            changed_area[CLASS_NAMES[k]].append(visible.mean())
        if labels[CLASS_NAMES.index("Pneumothorax")]:
            assert visible[mask.astype(bool)].mean() > 0.5, "the pneumothorax mask covers pixels that changed"
    assert unchanged > 0
    for name, areas in changed_area.items():
        assert len(areas) >= 3, f"{name} too rare in 80 films to check"
        assert min(areas) > 0.002, f"{name}: some labelled films look like their finding-free version"
