"""Issue 21 (first part): CT phantoms and the BTCV / AMOS / FLARE22 loaders on tiny NIfTI files made here."""

import json

import nibabel
import numpy as np
import pytest
from scipy import ndimage

from datasets import DatasetError, load_dataset
from datasets.synthetic_ct import _patient, render_patient
from datasets.volumes import ORGANS
from run_benchmark import main

LIVER, SPLEEN, GALLBLADDER, STOMACH, AORTA, PANCREAS = 6, 1, 4, 7, 8, 11


def test_phantoms_are_deterministic_and_carry_every_organ():
    first, second = render_patient(0, 2), render_patient(0, 2)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(render_patient(0, 3)[0].shape, first[0].shape) or not np.array_equal(
        render_patient(0, 3)[0], first[0]
    )
    with_gallbladder = next(p for p in range(40) if _patient(0, p)["gallbladder"])
    without = next(
        p for p in range(40) if not _patient(0, p)["gallbladder"]
    )  # ~10 % of patients: an empty ground truth
    assert set(np.unique(render_patient(0, with_gallbladder)[1])) == set(range(14))
    assert GALLBLADDER not in np.unique(render_patient(0, without)[1])
    image, labels, _ = first
    liver, spleen = image[labels == LIVER].astype(float), image[labels == SPLEEN].astype(float)
    assert abs(np.median(liver) - np.median(spleen)) < 60  # overlapping intensities: place, not HU, tells them apart


def test_phantom_volumes_come_out_in_ras_whatever_their_affine(tmp_path):
    dataset = load_dataset("synthetic_ct", tmp_path, n_labelled=4, n_unlabelled=1, seed=3)
    written = sorted((tmp_path / "synthetic_ct").glob("*/RawData/Training/img/*.nii.gz"))
    diagonals = [np.diag(nibabel.load(str(p)).affine)[:3] for p in written]
    assert any((d < 0).any() for d in diagonals) and any((d > 0).all() for d in diagonals)  # flipped and plain scans
    for image, labels in zip(dataset.images, dataset.labels):
        assert image.dtype == np.int16 and labels.dtype == np.uint8 and image.shape == labels.shape
        liver, spleen = ndimage.center_of_mass(labels == LIVER), ndimage.center_of_mass(labels == SPLEEN)
        stomach, aorta = ndimage.center_of_mass(labels == STOMACH), ndimage.center_of_mass(labels == AORTA)
        assert liver[0] > spleen[0] and stomach[1] > aorta[1]  # RAS: the liver on the right, the stomach in front
    assert dataset.spacing == (4.0, 4.0, 4.0) and len(set(dataset.patient_ids)) == 4
    unlabelled = load_dataset("synthetic_ct", tmp_path, n_labelled=4, n_unlabelled=1, seed=3, part="unlabelled")
    assert unlabelled.labels is None and not set(unlabelled.patient_ids) & set(dataset.patient_ids)  # other people


def write_case(folder, case_id, labels, affine, image=None, label_name=None):
    """A NIfTI image (body of 40 HU in air) and its label map."""
    image = np.where(labels > 0, 40, -1000).astype(np.int16) if image is None else image
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "label").mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(image, affine), str(folder / "img" / f"img{case_id}.nii.gz"))
    if label_name is not False:
        nibabel.save(
            nibabel.Nifti1Image(labels.astype(np.uint8), affine),
            str(folder / "label" / (label_name or f"label{case_id}.nii.gz")),
        )


def two_organs(shape=(12, 10, 8)):
    """Liver in the high-x half, spleen in the low-x half (in voxel order)."""
    labels = np.zeros(shape, np.uint8)
    labels[7:11, 3:7, 2:6] = LIVER
    labels[1:4, 3:7, 2:6] = SPLEEN
    return labels


def test_btcv_flipped_affine_absent_organ_and_broken_cases(tmp_path):
    training = tmp_path / "btcv" / "RawData" / "Training"
    plain, flipped = np.diag([2.0, 2.0, 3.0, 1.0]), np.diag([-2.0, 2.0, 3.0, 1.0])
    write_case(training, "0001", two_organs(), plain)
    write_case(
        training, "0002", two_organs(), flipped
    )  # stored mirrored: the liver lies in the patient's left half of the array order
    dataset = load_dataset("btcv", tmp_path, spacing=(2.0, 2.0, 3.0))
    first, second = (np.asarray(labels) for labels in dataset.labels)
    assert ndimage.center_of_mass(first == LIVER)[0] > ndimage.center_of_mass(first == SPLEEN)[0]
    assert (
        ndimage.center_of_mass(second == LIVER)[0] < ndimage.center_of_mass(second == SPLEEN)[0]
    )  # RAS undoes the flip
    assert dataset.summary()["voxels_per_organ"]["gallbladder"] == 0  # absent organ: empty, still annotated
    assert dataset.annotated == list(range(1, 14))
    write_case(training, "0003", two_organs(), plain, label_name=False)  # no label file
    write_case(training, "0004", two_organs(), plain, label_name="label0004.nii.gz")
    nibabel.save(
        nibabel.Nifti1Image(np.zeros((5, 5, 5), np.uint8), plain), str(training / "label" / "label0004.nii.gz")
    )  # other shape
    (training / "img" / "img0005.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(DatasetError) as error:
        load_dataset("btcv", tmp_path, spacing=(2.0, 2.0, 3.0))
    text = str(error.value)
    assert "3 of 5 cases cannot be used" in text
    assert "case img0003: label file" in text and "is missing" in text
    assert "case img0004: label" in text and "has shape (5, 5, 5)" in text
    assert "case img0005: image file" in text and "cannot be read" in text


def test_amos_and_flare22_labels_are_mapped_to_btcv(tmp_path):
    amos = tmp_path / "amos22"
    labels = np.zeros((10, 8, 6), np.uint8)
    labels[1:3, 1:3, 1:3] = 10  # AMOS pancreas
    labels[5:7, 1:3, 1:3] = 13  # duodenum: no BTCV id
    labels[5:7, 5:7, 3:5] = 9  # postcava = IVC
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    for folder, number in (("Tr", "0001"), ("Tr", "0501")):
        (amos / f"images{folder}").mkdir(parents=True, exist_ok=True)
        (amos / f"labels{folder}").mkdir(parents=True, exist_ok=True)
        nibabel.save(
            nibabel.Nifti1Image(np.where(labels > 0, 40, -1000).astype(np.int16), affine),
            str(amos / f"images{folder}" / f"amos_{number}.nii.gz"),
        )
        nibabel.save(nibabel.Nifti1Image(labels, affine), str(amos / f"labels{folder}" / f"amos_{number}.nii.gz"))
    (amos / "dataset.json").write_text(
        json.dumps(
            {
                "training": [
                    {"image": f"./imagesTr/amos_{n}.nii.gz", "label": f"./labelsTr/amos_{n}.nii.gz"}
                    for n in ("0001", "0501")
                ]
            }
        )
    )
    dataset = load_dataset("amos", tmp_path, spacing=(1.5, 1.5, 2.0))
    assert dataset.case_ids == ["amos_0001"]  # 0501 is MRI
    assert set(np.unique(dataset.labels[0])) == {0, PANCREAS, 9}
    assert 10 not in dataset.annotated and dataset.summary()["not_annotated"] == [ORGANS[9]]
    flare = tmp_path / "flare22" / "Training" / "FLARE22_LabeledCase50"
    (flare / "images").mkdir(parents=True)
    (flare / "labels").mkdir(parents=True)
    flare_labels = np.zeros((10, 8, 6), np.uint8)
    flare_labels[1:4, 1:4, 1:4] = 1  # FLARE liver
    flare_labels[6:9, 1:4, 1:4] = 3  # FLARE spleen
    nibabel.save(
        nibabel.Nifti1Image(np.where(flare_labels > 0, 40, -1000).astype(np.int16), affine),
        str(flare / "images" / "FLARE22_Tr_0001_0000.nii.gz"),
    )
    nibabel.save(nibabel.Nifti1Image(flare_labels, affine), str(flare / "labels" / "FLARE22_Tr_0001.nii.gz"))
    dataset = load_dataset("flare22", tmp_path, spacing=(1.5, 1.5, 2.0))
    assert set(np.unique(dataset.labels[0])) == {0, LIVER, SPLEEN}


def test_volume_cache_is_reused_and_prepare_reports_it(tmp_path, capsys):
    training = tmp_path / "btcv" / "RawData" / "Training"
    write_case(training, "0001", two_organs(), np.diag([2.0, 2.0, 3.0, 1.0]))
    load_dataset("btcv", tmp_path, spacing=(2.0, 2.0, 3.0))
    cached = next((tmp_path / "btcv").glob(".medssl-cache/volumes-*/img0001.image.npy"))
    before = cached.stat().st_mtime_ns
    assert (
        main(["prepare", "--dataset", "btcv", "--data-root", str(tmp_path), "--spacing", "2,2,3", "--no-progress"]) == 0
    )
    out = capsys.readouterr().out
    assert cached.stat().st_mtime_ns == before  # read from the cache, not preprocessed again
    assert "btcv: 1 volumes of 1 patients" in out and "liver 64" in out
    assert main(["prepare", "--dataset", "btcv", "--data-root", str(tmp_path / "nowhere"), "--no-progress"]) == 2


def test_a_2d_suite_refuses_ct_volumes_before_any_work(tmp_path, capsys):
    args = [
        "--suite",
        "smoke",
        "--methods",
        "simclr",
        "--set",
        "tasks.0.dataset={name: synthetic_ct, params: {n_labelled: 3, n_unlabelled: 1}}",
        "--data-root",
        str(tmp_path),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: task 'CXR': synthetic_ct-labelled holds CT volumes") and err.count("\n") == 1
    assert not (tmp_path / "out" / "checkpoints").exists() or not list((tmp_path / "out" / "checkpoints").iterdir())


def test_an_interrupted_volume_cache_keeps_its_finished_cases(tmp_path):
    training = tmp_path / "btcv" / "RawData" / "Training"
    for case in ("0001", "0002"):
        write_case(training, case, two_organs(), np.diag([2.0, 2.0, 3.0, 1.0]))
    load_dataset("btcv", tmp_path, spacing=(2.0, 2.0, 3.0))
    cache = next((tmp_path / "btcv").glob(".medssl-cache/volumes-*"))
    first = (cache / "img0001.image.npy").stat().st_mtime_ns
    (cache / "manifest.json").unlink()  # as if killed while the second case was being written
    (cache / "img0002.json").unlink()
    (cache / "img0002.image.npy").write_bytes(b"cut short")
    dataset = load_dataset("btcv", tmp_path, spacing=(2.0, 2.0, 3.0))
    assert (cache / "img0001.image.npy").stat().st_mtime_ns == first  # finished case reused
    assert np.asarray(dataset.images[1]).shape == np.asarray(dataset.images[0]).shape  # the cut one redone


def test_official_btcv_folds():
    from datasets.volumes import official_fold_split

    ids = [f"img{n:04d}" for n in list(range(1, 11)) + list(range(21, 41))]  # BTCV's 30 training cases
    shuffled = list(reversed(ids))  # the split follows the sorted ids, whatever order the cases come in
    tests = []
    for fold in range(5):
        split = official_fold_split(shuffled, fold)
        assert [int((split == s).sum()) for s in ("train", "val", "test")] == [23, 1, 6]
        tests += [c for c, s in zip(shuffled, split) if s == "test"]
        assert np.array_equal(split, official_fold_split(shuffled, fold))
    assert sorted(tests) == ids  # the five test sets partition the cases
    with pytest.raises(DatasetError, match="fold must be 0-4"):
        official_fold_split(ids, 5)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--dataset", "synthetic_cxr", "--spacing", "1,1,2"],
            "--spacing is for CT datasets; synthetic_cxr takes --size",
        ),
        (["--dataset", "btcv", "--spacing", "a,b"], "--spacing 'a,b': give three numbers in mm"),
        (["--dataset", "btcv", "--spacing", "1,2"], "spacing must be three positive numbers in mm"),
        (["--dataset", "amos"], "amos: no dataset.json in "),
        (["--dataset", "flare22"], "flare22: no FLARE22_Tr_NNNN_0000.nii.gz"),
    ],
)
def test_prepare_ct_bad_input_is_one_line(tmp_path, capsys, args, message):
    training = tmp_path / "btcv" / "RawData" / "Training"
    write_case(training, "0001", two_organs(), np.diag([2.0, 2.0, 3.0, 1.0]))
    assert main(["prepare", *args, "--data-root", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_synthetic_ct_part_is_checked(tmp_path):
    with pytest.raises(DatasetError, match="part must be 'labelled'"):
        load_dataset("synthetic_ct", tmp_path, part="labeled")


def test_nan_voxels_and_a_cut_nifti_are_named_and_the_other_cases_kept(tmp_path):
    """NaN voxels became 0 HU with only a numpy warning, and a cut .nii.gz passed the header check and ended in a
    MONAI traceback (issue 32)."""
    training = tmp_path / "btcv" / "RawData" / "Training"
    plain = np.diag([2.0, 2.0, 3.0, 1.0])
    write_case(training, "0001", two_organs(), plain)
    image = np.where(two_organs() > 0, 40.0, -1000.0).astype(np.float32)
    image[8, 4, 3] = np.nan  # inside the liver: outside air would be cropped away
    write_case(training, "0002", two_organs(), plain, image=image)
    write_case(
        training,
        "0003",
        two_organs(),
        plain,
        image=np.random.default_rng(0).normal(0, 500, (12, 10, 8)).astype(np.float32),
    )
    cut = training / "img" / "img0003.nii.gz"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(DatasetError) as error:
        load_dataset("btcv", tmp_path, spacing=(2.0, 2.0, 3.0))
    text = str(error.value)
    assert "2 of 3 cases cannot be used (the others are cached and kept)" in text
    assert (
        "case img0002: image" in text
        and "non-finite voxels" in text
        and "case img0003:" in text
        and "cannot be decoded" in text
    )
    assert len(list((tmp_path / "btcv" / ".medssl-cache").glob("volumes-*/img0001.json"))) == 1
