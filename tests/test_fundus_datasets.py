"""EyePACS, MuReD and ODIR-5K loaders on tiny fake copies in their real layouts (spec sections 3-5)."""

import shutil

import numpy as np
import pytest
from loader_errors import expect_load_error
from PIL import Image

from datasets import DatasetError, load_dataset
from datasets.imageio import decode_fundus
from datasets.mured import CLASS_NAMES as MURED_CLASSES


def fundus(path, width, height, colour=(180, 90, 40), border=10):
    """A coloured disc-like field of view inside a black frame of ``border`` pixels."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[border : height - border, border : width - border] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_fundus_decoding_crops_the_black_frame_and_pads_to_a_square(tmp_path):
    fundus(tmp_path / "a.png", 60, 40, border=5)
    out = decode_fundus(tmp_path / "a.png")
    assert out.shape == (50, 50, 3)  # 50 x 30 field of view, padded vertically
    assert out[25, 25].tolist() == [180, 90, 40] and out[0, 25].max() == 0
    fundus(tmp_path / "b.jpeg", 60, 40, border=5)  # JPEG ringing at the frame must not widen the crop much
    assert (
        decode_fundus(tmp_path / "b.jpeg").shape[0] <= 56
    )  # ringing stays within a JPEG block of the frame (full frame: 60)


def test_eyepacs_grades_and_patient_split(tmp_path):
    root = tmp_path / "eyepacs"
    rows = ["image,level"] + [
        f"{p}_{eye},{(p + (eye == 'right')) % 5}" for p in range(10, 20) for eye in ("left", "right")
    ]
    (root / "train").mkdir(parents=True)
    (root / "trainLabels.csv").write_text("\n".join(rows) + "\n")
    for row in rows[1:]:
        fundus(root / "train" / f"{row.split(',')[0]}.jpeg", 50 + 3 * len(row), 40)
    ds = load_dataset("eyepacs", tmp_path, size=24)
    assert ds.images.shape == (20, 3, 24, 24) and ds.labels.sum(1).tolist() == [1] * 20
    assert [int(np.argmax(row)) for row in ds.labels[:4]] == [0, 1, 1, 2]  # 10_left, 10_right, 11_left, 11_right
    for patient in np.unique(ds.patient_ids):
        assert len(set(ds.split[ds.patient_ids == patient])) == 1, "both eyes of a patient share a split"
    # a copy whose labels Excel saved again as "CSV UTF-8" (a byte-order mark before the header): read the same
    copy = tmp_path / "excel" / "eyepacs"
    shutil.copytree(root / "train", copy / "train")
    (copy / "trainLabels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8-sig")
    again = load_dataset("eyepacs", tmp_path / "excel", size=24)
    assert np.array_equal(again.labels, ds.labels) and np.array_equal(again.images, ds.images)
    (root / "train" / "15_left.jpeg").unlink()
    with pytest.raises(DatasetError, match="15_left.jpeg"):
        load_dataset("eyepacs", tmp_path, size=24)


def test_mured_labels_by_name_mixed_extensions_and_official_test_split(tmp_path):
    root = tmp_path / "mured"
    columns = ["ID"] + MURED_CLASSES[::-1]  # column order must not matter
    images = root / "images" / "images"

    def table(ids):
        lines = [",".join(columns)]
        for i in ids:
            values = {c: int(c == MURED_CLASSES[i % 20] or (c == "OTHER" and i % 3 == 0)) for c in MURED_CLASSES}
            lines.append(",".join([str(i)] + [str(values[c]) for c in columns[1:]]))
        return "\n".join(lines) + "\n"

    root.mkdir()
    (root / "train_data.csv").write_text(table(range(1, 11)))
    (root / "val_data.csv").write_text(table(range(11, 15)))
    for i in range(1, 15):
        fundus(images / f"{i}{'.tif' if i % 2 else '.png'}", 40, 40)
    ds = load_dataset("mured", tmp_path, size=16, val_fraction=0.2)
    assert ds.class_names == MURED_CLASSES and ds.images.shape == (14, 3, 16, 16)
    assert ds.summary()["splits"] == {"train": 8, "val": 2, "test": 4}
    assert ds.labels[2, MURED_CLASSES.index("ODC")] == 1 and ds.labels[2, MURED_CLASSES.index("OTHER")] == 1  # ID 3
    assert ds.labels[0].sum() == 1 and ds.labels[0, MURED_CLASSES.index("NORMAL")] == 1  # ID 1
    (root / "val_data.csv").write_text("ID,DR\n1,1\n")
    expect_load_error(tmp_path, "mured", "missing columns")


def test_odir_uses_per_eye_targets_not_patient_columns(tmp_path):
    root = tmp_path / "odir"
    header = "ID,Patient Age,Patient Sex,Left-Fundus,Right-Fundus,Left-Diagnostic Keywords,Right-Diagnostic Keywords,N,D,G,C,A,H,M,O,filepath,labels,target,filename"
    lines = [header]
    for pid in range(8):
        left_target = [0, 0, 0, 1, 0, 0, 0, 0] if pid % 2 == 0 else [0, 1, 0, 0, 0, 0, 0, 0]
        right_target = [1, 0, 0, 0, 0, 0, 0, 0]
        patient = [1 if a or b else 0 for a, b in zip(left_target, right_target)]
        keywords = '"laser spot，moderate non proliferative retinopathy"' if pid == 1 else "cataract"
        for eye, target in (("left", left_target), ("right", right_target)):
            label = "['N']" if eye == "right" else "['C']"
            lines.append(
                f'{pid},69,Female,{pid}_left.jpg,{pid}_right.jpg,{keywords},normal fundus,{",".join(map(str, patient))},../input/x/{pid}_{eye}.jpg,"{label}","{target}",{pid}_{eye}.jpg'
            )
            fundus(root / "preprocessed_images" / f"{pid}_{eye}.jpg", 32, 32)
    (root / "full_df.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset("odir", tmp_path, size=16)
    assert ds.images.shape == (16, 3, 16, 16)
    rights = ds.labels[1::2]
    assert (rights == [1, 0, 0, 0, 0, 0, 0, 0]).all(), "a right eye gets its own target, not the patient's C=1"
    assert ds.labels[0].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
    for patient in np.unique(ds.patient_ids):
        assert len(set(ds.split[ds.patient_ids == patient])) == 1


def test_odir_bad_inputs_name_the_problem(tmp_path):
    expect_load_error(tmp_path, "odir", "ODIR-5K not found")
    root = tmp_path / "odir"
    root.mkdir()
    (root / "full_df.csv").write_text('ID,filename,target\n0,0_left.jpg,"[1, 0]"\n')
    expect_load_error(tmp_path, "odir", "target must be 8 values")
    (root / "full_df.csv").write_text('ID,filename,target\n0,0_left.jpg,"[1, 0, 0, 0, 0, 0, 0, 0]"\n')
    expect_load_error(tmp_path, "odir", "0_left.jpg")
    expect_load_error(tmp_path, "eyepacs", "EyePACS not found")


ODIR_COLUMNS = [
    "ID",
    "Patient Age",
    "Patient Sex",
    "Left-Fundus",
    "Right-Fundus",
    "Left-Diagnostic Keywords",
    "Right-Diagnostic Keywords",
    "N",
    "D",
    "G",
    "C",
    "A",
    "H",
    "M",
    "O",
]


def odir_patient_copy(folder):
    """A data.xlsx with its 'Training Images/' in ``folder``; returns the sheet's rows."""
    import pandas as pd

    rows = []
    for pid in (0, 1, 4, 7):  # some ids are missing, as in the real file
        patient = [0, 0, 0, 1, 0, 0, 0, 0] if pid % 2 == 0 else [1, 0, 0, 0, 0, 0, 0, 0]
        rows.append(
            [pid, 60, "Male", f"{pid}_left.jpg", f"{pid}_right.jpg", "cataract，lens dust", "normal fundus", *patient]
        )
        for eye in ("left", "right"):
            fundus(folder / "Training Images" / f"{pid}_{eye}.jpg", 32, 32)
    pd.DataFrame(rows, columns=ODIR_COLUMNS).to_excel(folder / "data.xlsx", sheet_name="Sheet1", index=False)
    return rows


def test_odir_patient_labels_in_kaggles_nested_folder(tmp_path):
    """Kaggle's download keeps data.xlsx and the images in ODIR-5K/ODIR-5K/ (issue 31): found there."""
    odir_patient_copy(tmp_path / "odir" / "ODIR-5K" / "ODIR-5K")
    ds = load_dataset("odir", tmp_path, size=16, labels="patient")
    assert ds.images.shape == (8, 3, 16, 16) and ds.patient_ids.tolist() == [0, 0, 1, 1, 4, 4, 7, 7]


def test_prepare_passes_loader_parameters_and_reads_a_folder_of_its_own(tmp_path, capsys):
    """`prepare` could not pass labels=patient (issue 31); --data reads a dataset from a folder named as
    downloaded, and a parameter the loader does not take is named."""
    from run_benchmark import main

    odir_patient_copy(tmp_path / "ocular-disease-recognition-odir5k" / "ODIR-5K" / "ODIR-5K")
    (tmp_path / "data").mkdir()
    own = ["--data-root", str(tmp_path / "data"), "--data", f"odir={tmp_path / 'ocular-disease-recognition-odir5k'}"]
    assert (
        main(["prepare", "--dataset", "odir", "--size", "16", "--param", "labels=patient", *own, "--no-progress"]) == 0
    )
    assert "odir: 8 images of 4 patients at 16 px" in capsys.readouterr().out
    assert main(["prepare", "--dataset", "odir", "--param", "label=patient", *own]) == 2
    assert "takes KEY=VALUE with KEY one of seed, labels" in capsys.readouterr().err
    assert (
        main(["prepare", "--dataset", "odir", "--param", "labels=patient", "--data-root", str(tmp_path / "data")]) == 2
    )
    err = capsys.readouterr().err
    assert f"put it in {tmp_path / 'data' / 'odir'}" in err and "--data odir=PATH" in err


def test_odir_patient_labels_from_data_xlsx(tmp_path):
    import pandas as pd

    folder = tmp_path / "odir" / "ODIR-5K"
    rows = odir_patient_copy(folder)
    columns = ODIR_COLUMNS
    ds = load_dataset("odir", tmp_path, size=16, labels="patient")
    assert ds.images.shape == (8, 3, 16, 16) and ds.patient_ids.tolist() == [0, 0, 1, 1, 4, 4, 7, 7]
    assert ds.labels[:2].tolist() == [[0, 0, 0, 1, 0, 0, 0, 0]] * 2, "both eyes carry the patient's labels"
    assert ds.labels[2].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    expect_load_error(
        tmp_path, "odir", "holds full_df.csv.*labels=patient reads data.xlsx"
    )  # per-eye labels need full_df.csv
    expect_load_error(tmp_path, "odir", "labels must be 'eye'", labels="image")
    (folder / "data.xlsx").write_bytes(b"not a workbook")
    expect_load_error(tmp_path, "odir", "data.xlsx: cannot be read as an Excel workbook", labels="patient")
    pd.DataFrame([row[:7] + [2] + row[8:] for row in rows], columns=columns).to_excel(folder / "data.xlsx", index=False)
    expect_load_error(tmp_path, "odir", "must be 0/1", labels="patient")
