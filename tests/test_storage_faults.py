"""Short writes, full disks and kills during a rename (issue 32): nothing lost, nothing half-written, one line
that names the full folder. docs/faults.md lists the same drills."""

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from datasets import load_dataset
from datasets.storage import DiskFull
from medssl.plan.jobs import build_plan
from medssl.pretrain.rundir import read_history
from medssl.pretrain.train import run_pretraining
from medssl.record.store import ResultStore, append_line
from medssl.runtime.options import RunOptions
from medssl.suite.config import load_suite
from run_benchmark import main
from tests.fault_suites import cli, tiny_suite


class Killed(Exception):
    """Stands for kill -9 (a KeyboardInterrupt would make Lightning shut down gracefully)."""


def record(key):
    return {"key": key, "value": 0.5, "pad": "x" * 6000}


def test_a_short_write_on_a_full_disk_loses_no_record_silently(tmp_path, monkeypatch):
    """os.write took 4,096 of 6,381 bytes and the rest of the record was dropped without a word."""
    path = tmp_path / "records.jsonl"
    append_line(path, record("a"))
    real_write, calls = os.write, []

    def nearly_full(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:4096]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", nearly_full)
    with pytest.raises(DiskFull, match=f"{tmp_path} is full"):
        append_line(path, record("b"))
    monkeypatch.setattr(os, "write", real_write)
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a"], (
        "no part of the cut record stays"
    )
    append_line(path, record("c"))
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "c"]


def test_a_full_disk_under_predictions_leaves_no_temporary_and_no_record(tmp_path, monkeypatch):
    store = ResultStore(tmp_path / "suite")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full)
    fields = {
        name: 0
        for name in (
            "suite",
            "method",
            "pretrain_hash",
            "task",
            "dataset",
            "protocol",
            "fraction",
            "seed",
            "metric",
            "value",
            "per_class",
            "excluded_classes",
            "n_train",
            "n_val",
            "n_test",
            "best_epoch",
            "val_value",
            "config_hash",
            "config",
            "git_commit",
            "packages",
            "hardware",
            "wall_time_s",
            "created",
        )
    }
    with pytest.raises(DiskFull, match="predictions is full"):
        store.append({"key": "k", **fields}, predictions={"scores": np.zeros(3)})
    assert not list((tmp_path / "suite" / "predictions").iterdir()) and not store.records()


def test_a_full_disk_while_writing_reports_is_one_line(tmp_path, capsys, monkeypatch):
    suite = tiny_suite(tmp_path, **{"methods": ["supervised"]})
    assert main(cli(tmp_path, suite)) == 0
    capsys.readouterr()
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.suffix == ".md":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    assert main(["report", "--suite", str(suite), "--out", str(tmp_path / "results")]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ")
        and "is full (No space left on device)" in err
        and "Traceback" not in err
        and len(err.strip().splitlines()) == 1
    )


def test_a_kill_while_last_ckpt_is_replaced_keeps_the_old_one(tmp_path, synthetic_root, monkeypatch):
    """With the checkpoint folder on another filesystem than $TMPDIR, Lightning's commit copied its temporary over
    last.ckpt, and a kill during the copy left it truncated: the rerun started over and history.jsonl listed the
    epochs twice. A rename within the folder is atomic: the kill leaves the previous epoch's checkpoint."""
    suite = load_suite("smoke")
    suite["pretrain"]["epochs"] = 3
    job = next(j for j in build_plan(suite).pretrain_jobs if j.method == "simclr")
    dataset = load_dataset("synthetic_cxr", synthetic_root, **suite["pretrain"]["datasets"]["cxr"]["params"])
    real = {"copy": shutil.move, "rename": os.replace}
    saves = []
    for kind, module, name in (("copy", shutil, "move"), ("rename", os, "replace")):
        monkeypatch.setattr(module, name, lambda s, d, _kind=kind: killed_as(_kind, s, d))

    def killed_as(kind, source, destination):
        if not str(destination).endswith("last.ckpt"):
            return real[kind](source, destination)
        saves.append(destination)
        if len(saves) == 2:
            if kind == "copy":
                data = Path(source).read_bytes()
                Path(destination).write_bytes(data[: len(data) // 2])
            raise Killed("kill -9 during the save")
        return real[kind](source, destination)

    with pytest.raises(Killed):
        run_pretraining(job, dataset, tmp_path, RunOptions(progress=False))
    monkeypatch.undo()
    run_pretraining(job, dataset, tmp_path, RunOptions(progress=False))
    rows = [json.loads(line) for line in (tmp_path / job.key / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows if row.get("resumed")] == [1], (
        "resumed after the first epoch, not started over"
    )
    assert [row["epoch"] for row in read_history(tmp_path / job.key)] == [-1, 0, 1, 2]
    assert not (tmp_path / job.key / "history.jsonl.discarded").exists(), "nothing was started over"


def test_a_diverged_evaluation_is_reported_not_stored_as_dice_zero(synthetic_root):
    """--set evaluation.segmentation3d.lr=.inf stored six records of Dice 0.0 (issue 32): a non-finite loss in any
    evaluation's training is EvaluationDiverged, which the runners report and do not store."""
    import torch

    from medssl.evaluate.classify import EvaluationDiverged, fine_tune
    from medssl.evaluate.inputs import EvalData, EvalRun
    from medssl.evaluate.segment2d import train_segmentation
    from medssl.evaluate.segment3d import train_fpn_segmentation
    from medssl.nn.backbone import ResNetTrunk
    from methods.vox2vec3d import FPN3d

    ds = load_dataset("synthetic_cxr", synthetic_root, n_images=64, size=32, seed=0)
    train, val, test = ds.indices("train")[:16], ds.indices("val"), ds.indices("test")
    settings, meta = {"epochs": 1, "lr": float("inf"), "batch_size": 8}, {"mean": [0.5], "std": [0.25]}
    with pytest.raises(EvaluationDiverged, match="segmentation training reached a non-finite loss by epoch 0"):
        train_segmentation(
            ResNetTrunk(),
            meta,
            EvalData(ds.images, np.asarray(ds.masks), train, val, test, 32),
            EvalRun(settings, 0),
            freeze_encoder=False,
        )
    with pytest.raises(EvaluationDiverged, match="fine-tuning reached a non-finite loss"):
        fine_tune(
            ResNetTrunk(),
            meta,
            EvalData(ds.images, ds.labels, train, val, test, 32, ds.class_names),
            EvalRun({**settings, "epochs": 2}, 0),
        )
    ct = load_dataset("synthetic_ct", synthetic_root, n_labelled=8, n_unlabelled=2, spacing=[8.0, 8.0, 8.0])
    torch.manual_seed(0)
    ct_settings = {
        "patch_size": [16, 16, 8],
        "epochs": 1,
        "steps_per_epoch": 2,
        "patches_per_step": 2,
        "validations": 1,
        "lr": float("inf"),
    }
    with pytest.raises(EvaluationDiverged, match=r"CT segmentation \(scratch\)"):
        train_fpn_segmentation(
            FPN3d(base_channels=4, num_levels=3),
            "scratch",
            ct.images,
            ct.labels,
            ct.annotated,
            ct.indices("train"),
            ct.indices("val"),
            ct.indices("test"),
            ct_settings,
            seed=0,
        )


def test_a_suite_name_that_leaves_the_results_folder_is_refused(tmp_path, capsys):
    """--set name=../../x --out O wrote records and reports to O/../../x (issue 32)."""
    assert main(["--suite", "smoke", "--set", "name=../../x", "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    assert "name: '../../x' names the suite's results and reports folders" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_report_names_tampered_duplicated_and_damaged_records(tmp_path, capsys):
    """An edited value was printed as is, a duplicate key silently replaced the earlier record, a deleted or cut
    predictions file vanished from the statistics or raised, a line without a key raised KeyError (issue 32)."""
    suite = tiny_suite(
        tmp_path, **{"methods": ["supervised"], "tasks.0.fractions": [30, 100], "evaluation.seeds": [0, 1]}
    )
    assert main(cli(tmp_path, suite)) == 0
    folder = tmp_path / "results" / "tiny"
    lines = (folder / "records.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    edited = dict(rows[1], value=0.99)
    duplicate = dict(rows[0], value=0.123)
    (folder / "records.jsonl").write_text(
        "\n".join([lines[0], json.dumps(edited), *lines[2:], json.dumps(duplicate), json.dumps({"value": 1.0})]) + "\n"
    )
    (folder / "predictions" / f"{rows[2]['key']}.npz").unlink()
    cut = folder / "predictions" / f"{rows[3]['key']}.npz"
    cut.write_bytes(cut.read_bytes()[:100])
    capsys.readouterr()
    with pytest.warns(UserWarning, match="record 6 has no key and is skipped"):
        assert main(["report", "--suite", str(suite), "--out", str(tmp_path / "results")]) == 0
    err = capsys.readouterr().err
    assert f"record {rows[0]['key']}" in err and "is stored 2 times, values" in err and "the last one is used" in err
    assert f"record {rows[1]['key']}" in err and "says 0.990000 but its predictions give" in err
    assert (
        f"{rows[2]['key']}.npz is missing" in err
        and f"{rows[3]['key']}.npz cannot be read" in err
        and "Traceback" not in err
    )


@pytest.mark.parametrize(
    "setting, message",
    [
        ("x=" + "[" * 20000 + "]" * 20000, "--set x: nested too deeply to read"),
        (
            "x=[&a [1, 1, 1, 1, 1, 1, 1, 1, 1], "
            + ", ".join(f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdef", "bcdefg"))
            + "]",
            "--set x: expands to more than 100000 values",
        ),
        ("tasks.0.fractions=[.nan, 100]", "tasks[0].fractions[0]: expected a finite number, got nan"),
        ("evaluation.finetune.lr=.inf", "evaluation.finetune.lr: expected a finite number, got inf"),
        ("pretrain.datasets.cxr.params.size=-4", "pretrain.datasets.cxr.params.size: expected an integer > 0, got -4"),
    ],
)
def test_hostile_set_values_are_one_line_errors_before_any_work(setting, message, capsys):
    """An alias bomb ran past 60 s into MemoryError, deep nesting raised RecursionError, NaN and inf passed the
    schema, loader parameters had no ranges (issue 32)."""
    assert main(["--suite", "smoke", "--set", setting, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_ct_record_in_an_image_suites_folder_does_not_refuse_its_report():
    """A CT suite's records in the same folder made recorded_plan add vox2vec3d as a row, and the whole 2D report
    was refused ("trains on CT volumes") (issue 32)."""
    from medssl.plan.jobs import recorded_plan

    plan = build_plan(load_suite("smoke"))
    records = [
        {"key": plan.eval_jobs[0].key, "method": plan.eval_jobs[0].pretrain.method},
        {"key": "ct-record", "method": "vox2vec3d"},
    ]
    narrowed = recorded_plan(plan, records)
    assert narrowed is not None and "vox2vec3d" not in narrowed.suite["methods"]


def test_a_full_export_folder_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    import safetensors.torch

    from medssl.nn.backbone import ResNetTrunk
    from medssl.pretrain.export import write_trunk

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise safetensors.SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(DiskFull, match=f"{tmp_path} is full"):
        write_trunk(ResNetTrunk().state_dict(), [0.5], [0.25], tmp_path / "e.safetensors", {"method": "simclr"})
    assert not list(tmp_path.iterdir())


def test_an_unwritable_export_folder_names_the_option(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert (
        main(
            [
                "export",
                "--suite",
                "smoke",
                "--method",
                "simclr",
                "--export-dir",
                str(blocker / "exports"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write to") and "--export-dir" in err
