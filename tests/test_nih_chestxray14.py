"""NIH ChestX-ray14 loader and the preprocessing cache, on tiny fake copies in the real layouts (spec section 1)."""

import json

import numpy as np
import pytest
from PIL import Image

import datasets.imageio as imageio
import datasets.nih_chestxray14 as nih
from datasets import DatasetError, load_dataset
from run_benchmark import main

# (image, labels, patient); patients 1-4 in train_val, 5-6 in test
ROWS = [
    ("00000001_000.png", "Cardiomegaly", 1),
    ("00000001_001.png", "Cardiomegaly|Emphysema", 1),
    ("00000002_000.png", "No Finding", 2),
    ("00000002_001.png", "Pleural_Thickening", 2),
    ("00000003_000.png", "Effusion|Mass", 3),
    ("00000003_001.png", "No Finding", 3),
    ("00000004_000.png", "Hernia", 4),
    ("00000004_001.png", "Nodule|Pneumothorax", 4),
    ("00000005_000.png", "Infiltration", 5),
    ("00000005_001.png", "No Finding", 5),
    ("00000006_000.png", "Atelectasis|Consolidation|Edema|Fibrosis|Pneumonia", 6),
    ("00000006_001.png", "No Finding", 6),
]
RGBA_IMAGE = "00000002_001.png"


def make_fake_nih(root, variant="kaggle"):
    """variant 'kaggle': Data_Entry_2017.csv with trailing commas, nested images_00N/images/;
    'box': Data_Entry_2017_v2020.csv with 'Patient Sex', flat images/."""
    root.mkdir(parents=True, exist_ok=True)
    if variant == "kaggle":
        lines = [
            "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
        ]
        lines += [
            f"{name},{labels},{name[9:12].lstrip('0') or 0},{patient},58,M,PA,2682,2749,0.143,0.143,"
            for name, labels, patient in ROWS
        ]
        (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    else:
        lines = [
            "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
        ]
        lines += [f"{name},{labels},0,{patient},58,F,AP,2500,2048,0.139,0.139" for name, labels, patient in ROWS]
        (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(name for name, _, p in ROWS if p <= 4) + "\n")
    (root / "test_list.txt").write_text("\n".join(name for name, _, p in ROWS if p > 4) + "\n")
    for i, (name, _, _patient) in enumerate(ROWS):
        folder = root / (f"images_{1 + i // 6:03d}/images" if variant == "kaggle" else "images")
        folder.mkdir(parents=True, exist_ok=True)
        if name == RGBA_IMAGE:
            pixels = np.zeros((40, 40, 4), np.uint8)
            pixels[..., 0], pixels[..., 3] = 200, 255
            Image.fromarray(pixels, "RGBA").save(folder / name)
        else:
            Image.fromarray(np.full((40, 40), 10 * i, np.uint8), "L").save(folder / name)
    return root


@pytest.mark.parametrize("variant", ["kaggle", "box"])
def test_counts_labels_and_patient_disjoint_splits(tmp_path, variant):
    make_fake_nih(tmp_path / "nih_chestxray14", variant)
    ds = load_dataset("nih_chestxray14", tmp_path, size=16, val_fraction=0.25)
    assert ds.images.shape == (12, 1, 16, 16) and ds.class_names == nih.CLASS_NAMES
    assert ds.summary()["splits"] == {"train": 6, "val": 2, "test": 4}
    names = sorted(n for n, _, p in ROWS if p <= 4) + sorted(n for n, _, p in ROWS if p > 4)
    row = dict(zip(names, ds.labels))
    assert [nih.CLASS_NAMES[k] for k in np.flatnonzero(row["00000001_001.png"])] == ["Cardiomegaly", "Emphysema"]
    assert row["00000002_000.png"].sum() == 0  # No Finding
    assert row["00000002_001.png"][nih.CLASS_NAMES.index("Pleural_Thickening")] == 1
    assert set(ds.patient_ids[ds.split == "test"]) == {5, 6}
    assert set(ds.patient_ids[ds.split == "val"]) < {1, 2, 3, 4}
    assert np.all(ds.images[names.index(RGBA_IMAGE)] == 200), "RGBA PNGs keep their first channel"
    assert np.all(ds.images[names.index("00000003_000.png")] == 40)


def test_cache_is_reused_and_never_overwritten_by_other_inputs(tmp_path, monkeypatch):
    root = make_fake_nih(tmp_path / "nih_chestxray14")
    first = load_dataset("nih_chestxray14", tmp_path, size=16)
    manifest = json.loads(next((root / ".medssl-cache").rglob("manifest.json")).read_text())
    assert manifest["images"] == 12 and manifest["patients"] == 6 and manifest["splits"]["test"] == 4
    monkeypatch.setattr(nih, "decode_image", lambda path: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = load_dataset("nih_chestxray14", tmp_path, size=16)
    assert np.array_equal(np.asarray(first.images), np.asarray(again.images))
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(root / "images_001/images/00000001_000.png")  # different bytes
    with pytest.raises(DatasetError, match="different input files"):
        load_dataset("nih_chestxray14", tmp_path, size=16)


def test_interrupted_cache_build_resumes_to_the_same_content(tmp_path, monkeypatch):
    make_fake_nih(tmp_path / "a" / "nih_chestxray14")
    make_fake_nih(tmp_path / "b" / "nih_chestxray14")
    load_dataset("nih_chestxray14", tmp_path / "a", size=16)
    real_decode, calls = imageio.decode_image, []

    def interrupted(path):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_decode(path)

    monkeypatch.setattr(nih, "decode_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("nih_chestxray14", tmp_path / "b", size=16)
    cache_b = next((tmp_path / "b" / "nih_chestxray14" / ".medssl-cache").rglob("images.partial.npy")).parent
    assert not (cache_b / "manifest.json").exists(), "an interrupted cache must not look complete"
    monkeypatch.setattr(nih, "decode_image", lambda path: calls.append(path) or real_decode(path))
    load_dataset("nih_chestxray14", tmp_path / "b", size=16)
    assert len(calls) == 5 + 8, "the resumed build decodes only the images not cached before the interruption"
    hashes = [
        json.loads((c / "manifest.json").read_text())["content_hash"]
        for c in (next((tmp_path / r).rglob("manifest.json")).parent for r in ("a", "b"))
    ]
    assert hashes[0] == hashes[1]


def test_bad_layouts_are_reported_and_prepare_exits_nonzero(tmp_path, capsys):
    root = make_fake_nih(tmp_path / "nih_chestxray14")
    (root / "images_002/images/00000005_000.png").unlink()
    (root / "test_list.txt").unlink()
    assert (
        main(["prepare", "--dataset", "nih_chestxray14", "--data-root", str(tmp_path), "--size", "16", "--no-progress"])
        == 2
    )
    err = capsys.readouterr().err
    assert "missing" in err and "test_list.txt" in err and "00000005_000.png" not in err  # the test list is gone
    (root / "test_list.txt").write_text("00000005_000.png\n00000006_000.png\n")
    assert (
        main(["prepare", "--dataset", "nih_chestxray14", "--data-root", str(tmp_path), "--size", "16", "--no-progress"])
        == 2
    )
    assert "00000005_000.png" in capsys.readouterr().err
    assert not list(root.rglob("manifest.json")), "nothing is cached from a broken layout"
    assert (
        main(["prepare", "--dataset", "nih_chestxray14", "--data-root", str(tmp_path / "nowhere"), "--no-progress"])
        == 2
    )


def test_corrupt_image_is_named_and_the_rest_is_kept(tmp_path):
    root = make_fake_nih(tmp_path / "nih_chestxray14")
    (root / "images_001/images/00000003_001.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="00000003_001.png") as err:
        load_dataset("nih_chestxray14", tmp_path, size=16)
    assert "1 of 12 images could not be read" in str(err.value)


def test_unknown_finding_and_bad_header_are_clear_errors(tmp_path):
    root = make_fake_nih(tmp_path / "nih_chestxray14")
    entry = root / "Data_Entry_2017.csv"
    entry.write_text(entry.read_text().replace("Hernia", "Hernia|Infiltrate"))
    with pytest.raises(DatasetError, match="unknown finding"):
        load_dataset("nih_chestxray14", tmp_path, size=16)
    entry.write_text("Image,Labels\n")
    with pytest.raises(DatasetError, match="expected a header"):
        load_dataset("nih_chestxray14", tmp_path, size=16)
