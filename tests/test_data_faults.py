"""Faults of the data under finished results (issue 31): changed labels, a cache built from other files, reports under
other settings, datasets in folders of their own, resume points of finished pretrainings. docs/faults.md lists the
same drills."""

import pytest

from datasets import DatasetError, load_dataset
from medssl.pretrain.encoder import ENCODER_FILE, encoder_status
from medssl.record.store import ResultStore
from run_benchmark import main
from tests.fault_suites import ROOT, cli, nih_suite, tiny_suite


# 12. changed data under finished results (issue 31) -----------------------------------------------------------
def test_results_from_changed_labels_are_refused_not_reused(tmp_path, capsys):
    from tests.test_nih_chestxray14 import make_fake_nih

    root = make_fake_nih(tmp_path / "data" / "nih_chestxray14")
    suite = nih_suite(tmp_path)
    assert main(cli(tmp_path, suite)) == 0
    records = ResultStore(tmp_path / "results" / "tiny").records()
    stamp = records[0]["data"]
    assert stamp["task"]["name"] == "nih_chestxray14" and stamp["task"]["fingerprint"] == stamp["corpus"]["fingerprint"]
    labels = root / "Data_Entry_2017.csv"
    labels.write_text(labels.read_text().replace("Hernia", "Mass"))
    capsys.readouterr()
    assert main(cli(tmp_path, suite)) == 2
    err = capsys.readouterr().err
    assert (
        "nih_chestxray14 has changed since results were computed from it" in err
        and "1 stored evaluations" in err
        and "use a new --out" in err
    )
    assert main(cli(tmp_path, suite, "--dry-run")) == 2, "a dry run says so too"
    assert len(ResultStore(tmp_path / "results" / "tiny").records()) == len(records), "the stored results are kept"


def test_a_label_edit_that_keeps_the_file_size_is_not_served_from_the_old_cache(tmp_path):
    from tests.test_nih_chestxray14 import make_fake_nih

    root = make_fake_nih(tmp_path / "nih_chestxray14")
    before = load_dataset("nih_chestxray14", tmp_path, size=16)
    labels = root / "Data_Entry_2017.csv"
    text = labels.read_text()
    swapped = (
        text.replace("Cardiomegaly,0", "@,0").replace("Infiltration,", "Cardiomegaly,").replace("@,0", "Infiltration,0")
    )
    assert len(swapped) == len(text) and swapped != text
    labels.write_text(swapped)
    with pytest.raises(DatasetError, match="different input files"):
        load_dataset("nih_chestxray14", tmp_path, size=16)
    assert before.fingerprint is not None


def test_report_with_other_settings_than_the_run_names_the_stored_ones(tmp_path, capsys):
    """A report under settings that match none of the stored records wrote empty tables or nothing, and exited 0
    (issue 31): it lists the --set changes of the runs stored there."""
    suite = tiny_suite(tmp_path, **{"methods": ["supervised"]})
    assert main(cli(tmp_path, suite, "--set", "pretrain.image_size=24")) == 0
    capsys.readouterr()
    reports = ["--reports", str(tmp_path / "reports")]
    assert main(["report", "--suite", str(suite), "--out", str(tmp_path / "results"), *reports]) == 2
    err = capsys.readouterr().err
    assert (
        "none of the 1 results stored in" in err and "the runs stored there used: --set pretrain.image_size=24" in err
    )
    assert (
        main(
            [
                "report",
                "--suite",
                str(suite),
                "--out",
                str(tmp_path / "results"),
                "--set",
                "pretrain.image_size=24",
                *reports,
            ]
        )
        == 0
    )


def test_a_dataset_in_a_folder_of_its_own_is_read_with_data(tmp_path, capsys):
    """Kaggle's NIH download unpacks as archive/; the loaders looked only under fixed names below --data-root
    (issue 31). --data nih_chestxray14=PATH reads it where it is, and without it the message says what to do."""
    from tests.test_nih_chestxray14 import make_fake_nih

    archive = make_fake_nih(tmp_path / "downloads" / "archive")
    suite = nih_suite(tmp_path)
    assert main(cli(tmp_path, suite)) == 2
    err = capsys.readouterr().err
    assert f"put it in {tmp_path / 'data' / 'nih_chestxray14'}" in err and "--data nih_chestxray14=PATH" in err
    assert main(cli(tmp_path, suite, "--data", f"nih_chestxray14={archive}")) == 0
    out = capsys.readouterr().out
    assert (
        "note: task 'CXR': 8 of 14 classes have no positive (or no negative) test image and are left out of its macro AUC: Cardiomegaly"
        in out
    )
    reports = tmp_path / "results" / "reports" / "tiny"
    footnote = "Macro AUC leaves out classes without a positive (or without a negative) test image: CXR: Cardiomegaly, Effusion"
    assert footnote in (reports / "table1.md").read_text() and footnote in (reports / "index.html").read_text()
    assert main(cli(tmp_path, suite, "--data", "nih=/nowhere")) == 2
    assert "unknown dataset 'nih'" in capsys.readouterr().err
    assert (
        main(
            [
                "prepare",
                "--dataset",
                "nih_chestxray14",
                "--size",
                "16",
                "--data",
                f"nih_chestxray14={archive}",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        "warning: 8 classes have no positive test image (left out of the test macro AUC): Cardiomegaly, Effusion"
        in capsys.readouterr().out
    )


def test_a_finished_pretraining_drops_its_resume_point_unless_kept(tmp_path):
    """CoBooM's last.ckpt is ~710 MB per pretraining and stayed after the encoder was exported (issue 31)."""
    suite = tiny_suite(tmp_path, **{"methods": ["simclr"]})
    assert main(cli(tmp_path, suite)) == 0
    run_dir = next((tmp_path / "results" / "checkpoints").glob("simclr-*"))
    assert encoder_status(run_dir / ENCODER_FILE) == "done" and not (run_dir / "last.ckpt").exists()
    kept = tiny_suite(tmp_path, name="kept", **{"methods": ["simclr"], "pretrain.epochs": 2})
    assert main(cli(tmp_path, kept, "--keep-checkpoints")) == 0
    assert len(list((tmp_path / "results" / "checkpoints").glob("simclr-*/last.ckpt"))) == 1


def test_the_readme_names_every_real_dataset_folder():
    from datasets.base import dataset_folders

    readme = (ROOT / "docs" / "getting-started.md").read_text()
    for name, (folder, source) in dataset_folders().items():
        assert f"| `{name}` | `{folder}/` | {source} |" in readme, f"docs/getting-started.md lacks {name}'s folder row"
