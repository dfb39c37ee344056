"""VinDr-CXR and RSNA Pneumonia loaders on tiny fake copies (spec sections 6-7)."""

import numpy as np
from fake_dicom import write_dicom
from loader_errors import expect_load_error

from datasets import load_dataset
from datasets.vindr_cxr import CLASS_NAMES as VINDR_CLASSES


def test_vindr_union_of_readers_and_monochrome1_inversion(tmp_path):
    root = tmp_path / "vindr_cxr"
    rows = ["image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"]
    rows += ["img_a,No finding,14,R11,,,,", "img_a,No finding,14,R12,,,,", "img_a,No finding,14,R13,,,,"]
    rows += [
        "img_b,Cardiomegaly,3,R10,691.0,1375.0,1653.0,1831.0",
        "img_b,Cardiomegaly,3,R9,690.0,1370.0,1650.0,1830.0",
        "img_b,No finding,14,R8,,,,",
    ]
    rows += [
        "img_c,Nodule/Mass,8,R1,1,1,5,5",
        "img_c,Nodule/Mass,8,R1,9,9,12,12",
        "img_c,Pleural effusion,10,R2,1,1,2,2",
    ]
    rows += [f"img_{k},No finding,14,R1,,,," for k in "defghij"]
    root.mkdir()
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    ramp = np.tile(np.linspace(0, 4095, 32).astype(np.uint16), (32, 1))
    for name in "abcdefghij":
        photometric = "MONOCHROME1" if name == "a" else "MONOCHROME2"
        write_dicom(root / "train" / f"img_{name}.dicom", ramp, f"1.2.3.{ord(name)}", name, photometric=photometric)
    ds = load_dataset("vindr_cxr", tmp_path, size=32)
    assert ds.images.shape == (10, 1, 32, 32) and ds.class_names == VINDR_CLASSES
    assert ds.labels[0].sum() == 0
    assert np.flatnonzero(ds.labels[1]).tolist() == [VINDR_CLASSES.index("Cardiomegaly")]
    assert np.flatnonzero(ds.labels[2]).tolist() == [
        VINDR_CLASSES.index("Nodule/Mass"),
        VINDR_CLASSES.index("Pleural effusion"),
    ]
    assert ds.images[1, 0, 0, -1] > ds.images[1, 0, 0, 0], "MONOCHROME2: high values bright"
    assert ds.images[0, 0, 0, -1] < ds.images[0, 0, 0, 0], "MONOCHROME1 is inverted so that bone is bright"
    two_readers = load_dataset("vindr_cxr", tmp_path, size=32, min_readers=2)
    assert two_readers.labels[1].sum() == 1 and two_readers.labels[2].sum() == 0  # one reader boxed twice is one reader


def test_rsna_two_labels_deduplicated_classes_and_disagreement(tmp_path):
    root = tmp_path / "rsna_pneumonia"
    root.mkdir()
    labels = [
        "patientId,x,y,width,height,Target",
        "p0,,,,,0",
        "p1,264.0,152.0,213.0,379.0,1",
        "p1,562.0,152.0,256.0,453.0,1",
        "p2,,,,,0",
    ]
    labels += [f"p{k},,,,,0" for k in range(3, 10)]
    classes = ["patientId,class", "p0,Normal", "p1,Lung Opacity", "p1,Lung Opacity", "p2,No Lung Opacity / Not Normal"]
    classes += [f"p{k},Normal" for k in range(3, 10)]
    (root / "stage_2_train_labels.csv").write_text("\n".join(labels) + "\n")
    (root / "stage_2_detailed_class_info.csv").write_text("\n".join(classes) + "\n")
    for k in range(10):
        write_dicom(
            root / "stage_2_train_images" / f"p{k}.dcm", np.full((16, 16), 20 * k, np.uint8), f"1.2.{k}", f"p{k}"
        )
    ds = load_dataset("rsna_pneumonia", tmp_path, size=16)
    assert ds.labels[:3].tolist() == [[0, 0], [1, 0], [0, 1]]
    assert ds.summary()["splits"] == {"train": 7, "val": 1, "test": 2}
    (root / "stage_2_detailed_class_info.csv").write_text(
        "\n".join(classes).replace("p1,Lung Opacity", "p1,Normal") + "\n"
    )
    expect_load_error(tmp_path, "rsna_pneumonia", "disagree")


def test_vindr_and_rsna_bad_inputs_name_the_problem(tmp_path):
    expect_load_error(tmp_path, "vindr_cxr", "VinDr-CXR not found")
    root = tmp_path / "vindr_cxr"
    (root / "train").mkdir(parents=True)
    (root / "train.csv").write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\nimg_a,Other,15,R1,,,,\n"
    )
    expect_load_error(tmp_path, "vindr_cxr", "class_id 15 is outside 0-14")
    (root / "train.csv").write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\nimg_a,No finding,14,R1,,,,\n"
    )
    expect_load_error(tmp_path, "vindr_cxr", "img_a.dicom")
    expect_load_error(tmp_path, "rsna_pneumonia", "RSNA Pneumonia not found")
    rsna = tmp_path / "rsna_pneumonia"
    rsna.mkdir()
    (rsna / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\np0,,,,,0\n")
    (rsna / "stage_2_detailed_class_info.csv").write_text("patientId,class\np0,Healthy\n")
    expect_load_error(tmp_path, "rsna_pneumonia", "unknown class 'Healthy'")
    (rsna / "stage_2_detailed_class_info.csv").write_text("patientId,class\np0,Normal\n")
    expect_load_error(tmp_path, "rsna_pneumonia", "p0.dcm")
