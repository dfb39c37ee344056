"""Faults, typos and hostile files (issue 18): each test reproduces one drill that lost work, produced a wrong result
silently or ran foreign code before the fix. docs/faults.md lists the same drills."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from datasets import load_dataset
from medssl.plan.jobs import build_plan
from medssl.pretrain.encoder import ENCODER_FILE, CorruptCheckpoint, encoder_status, load_encoder
from medssl.pretrain.train import run_pretraining
from medssl.record.store import Busy, ResultStore, append_line, exclusive_lock
from medssl.runtime.options import RunOptions
from medssl.suite.config import load_suite
from run_benchmark import main
from tests.fault_suites import cli, tiny_suite

ROOT = Path(__file__).resolve().parent.parent


# 1. resume: tests/test_pretrain_resume.py::test_interrupted_pretraining_resumes (killed between and within epochs)


# 2. divergence -------------------------------------------------------------------------------------------------
def test_diverged_pretraining_is_not_cached_and_the_run_goes_on(tmp_path, capsys):
    suite = tiny_suite(tmp_path, **{"pretrain.optimizer": {"name": "sgd", "lr": 1.0e30, "weight_decay": 1.0e-4}})
    assert main(cli(tmp_path, suite)) == 1
    err = capsys.readouterr().err
    assert "1 pretraining failed" in err and "simclr diverged at step" in err and "non-finite loss (loss nan" in err
    simclr_dir = next((tmp_path / "results" / "checkpoints").glob("simclr-*"))
    assert not (simclr_dir / ENCODER_FILE).exists() and not (simclr_dir / "last.ckpt").exists()
    records = ResultStore(tmp_path / "results" / "tiny").records()
    assert [r["method"] for r in records] == ["supervised"], "the other jobs of the run are evaluated and stored"


# 3. hostile checkpoint -----------------------------------------------------------------------------------------
class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoints_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    encoder = run_dir / ENCODER_FILE
    torch.save({"state_dict": {}, "meta": RunsCode(marker)}, encoder)
    from medssl.pretrain.encoder import ENCODER_SIDECAR
    from medssl.record.provenance import file_sha256

    (run_dir / ENCODER_SIDECAR).write_text(
        json.dumps({"sha256": file_sha256(encoder)})
    )  # even with a matching checksum
    with pytest.raises(CorruptCheckpoint, match=str(encoder)):
        load_encoder(encoder)
    (run_dir / "last.ckpt").write_bytes(pickle.dumps(RunsCode(marker)))
    from medssl.pretrain.rundir import readable_checkpoint

    with pytest.warns(UserWarning, match="cannot be loaded"):
        assert not readable_checkpoint(run_dir / "last.ckpt")
    assert not marker.exists(), "loading a checkpoint ran a shell command"
    sources = [
        p for folder in ("medssl", "methods", "datasets", "benchmarks") for p in (ROOT / folder).glob("*.py")
    ] + [ROOT / "run_benchmark.py"]
    unsafe = [
        f"{p.name}: {line.strip()}"
        for p in sources
        for line in p.read_text().splitlines()
        if "torch.load(" in line and "weights_only=True" not in line
    ]
    assert not unsafe, f"every torch.load must pass weights_only=True: {unsafe}"


# 4. suite schema -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("method_param", {}, "method_param: unknown key; did you mean 'method_params'?"),
        (
            "pretrain.optimizer.weigth_decay",
            1e-4,
            "pretrain.optimizer.weigth_decay: unknown key; did you mean 'weight_decay'?",
        ),
        ("tasks.0.typ", "segmentation", "tasks[0].typ: unknown key; did you mean 'type'?"),
        ("pretrain.epochs", "one", "pretrain.epochs: expected an integer, got 'one'"),
        (
            "pretrain.optimizer.name",
            "adamx",
            "pretrain.optimizer.name: expected one of lars, sgd, adam, adamw, got 'adamx'; did you mean 'adam'?",
        ),
        ("pretrain.augment.blurp", 0.5, "pretrain.augment.blurp: unknown key; did you mean 'blur_p'?"),
        ("pretrain.batch_size", 0, "pretrain.batch_size: expected an integer >= 1, got 0"),
        (
            "method_params.simclr",
            {"temprature": 0.1},
            "method_params.simclr.temprature: unknown key; did you mean 'temperature'?",
        ),
        (
            "tasks.0.dataset.params",
            {"n_image": 96},
            "tasks[0].dataset.params.n_image: unknown key; did you mean 'n_images'?",
        ),
        ("tasks.0.fractions", [0.001, 200], "tasks[0].fractions[1]: expected a number <= 100, got 200"),
        ("evaluation.seeds", [-1], "evaluation.seeds[0]: expected an integer >= 0, got -1"),
    ],
)
def test_suite_typos_are_refused_before_any_work(tmp_path, capsys, key, value, message):
    suite = tiny_suite(tmp_path, **{key: value})
    assert main(cli(tmp_path, suite, "--dry-run")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {suite}: ") and message in err, err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the suite file is empty"),
        ("pretrain: [a, b\nmethods: x\n", "not valid YAML at line 2"),
        ("- just\n- a list\n", "a suite is a mapping of sections"),
    ],
)
def test_empty_or_broken_yaml_is_one_clear_error(tmp_path, capsys, text, message):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    assert main(["--suite", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_every_shipped_suite_passes_the_schema():
    from medssl.suite.config import suite_names

    for name in suite_names():
        load_suite(name)


# 5. missing data -----------------------------------------------------------------------------------------------
def test_every_missing_dataset_is_reported_before_any_work(tmp_path, capsys):
    suite = tiny_suite(
        tmp_path,
        **{
            "pretrain.datasets": {
                "nih": {"name": "nih_chestxray14", "splits": ["train", "val"]},
                "fundus": {"name": "eyepacs", "splits": ["train", "val"]},
            },
            "tasks.0.dataset": {"name": "nih_chestxray14"},
            "tasks.0.pretrain": "nih",
        },
    )
    with open(suite) as fh:
        data = yaml.safe_load(fh)
    data["tasks"].append(
        {
            "name": "Fundus",
            "dataset": {"name": "mured"},
            "pretrain": "fundus",
            "protocols": ["linear"],
            "fractions": [100],
        }
    )
    suite.write_text(yaml.safe_dump(data))
    assert main(cli(tmp_path, suite)) == 2
    err = capsys.readouterr().err
    assert "3 of the suite's datasets cannot be used; nothing has been run" in err
    for name in ("NIH ChestX-ray14 not found", "EyePACS not found", "MuReD not found"):
        assert name in err
    assert not (tmp_path / "results" / "checkpoints").exists() or not any(
        (tmp_path / "results" / "checkpoints").iterdir()
    )


def test_impossible_label_fraction_is_refused_before_pretraining(tmp_path, capsys):
    suite = tiny_suite(tmp_path, **{"tasks.0.fractions": [0.001, 100]})
    assert main(cli(tmp_path, suite)) == 2
    assert "label fraction 0.001% of" in capsys.readouterr().err
    assert not any((tmp_path / "results" / "checkpoints").glob("*/encoder.pt"))


def test_a_fraction_of_one_image_is_refused_before_pretraining(tmp_path, capsys):
    """1 % of the smoke suite's training images is one image, on which the probe's standardisation is NaN and
    L-BFGS raised mid-run (issue 31); two images run every protocol."""
    suite = tiny_suite(tmp_path, **{"tasks.0.fractions": [1, 100]})
    assert main(cli(tmp_path, suite)) == 2
    err = capsys.readouterr().err
    assert "label fraction 1% of" in err and "is 1 image; every protocol needs at least 2" in err
    assert not any((tmp_path / "results" / "checkpoints").glob("*/encoder.pt"))
    suite = tiny_suite(
        tmp_path,
        **{
            "methods": ["supervised"],
            "tasks.0.fractions": [3],
            "tasks.0.protocols": ["linear", "knn", "finetune"],
            "evaluation.knn": {"k": 20, "temperature": 0.07},
        },
    )
    assert main(cli(tmp_path, suite)) == 0
    records = ResultStore(tmp_path / "results" / "tiny").records()
    assert sorted(r["protocol"] for r in records) == ["finetune", "knn", "linear"] and {
        r["n_train"] for r in records
    } == {2}


def test_an_evaluation_that_fails_is_reported_and_the_others_are_stored(tmp_path, capsys, monkeypatch):
    import medssl.run.image as runner

    def broken(*args, **kwargs):
        raise FloatingPointError("the solver gave up")

    monkeypatch.setattr(runner, "knn_classify", broken)
    suite = tiny_suite(
        tmp_path,
        **{
            "methods": ["supervised"],
            "tasks.0.protocols": ["knn", "linear"],
            "evaluation.knn": {"k": 20, "temperature": 0.07},
        },
    )
    assert main(cli(tmp_path, suite)) == 1
    err = capsys.readouterr().err
    assert "1 evaluation failed; everything else is stored" in err and "FloatingPointError: the solver gave up" in err
    assert [r["protocol"] for r in ResultStore(tmp_path / "results" / "tiny").records()] == ["linear"]


def test_a_one_image_last_batch_trains_in_fine_tuning_and_segmentation(synthetic_root):
    """32 px, batches of 8, 33 training images: the last batch of one image made BatchNorm raise "Expected more
    than 1 value per channel when training" (issue 31); it joins the batch before it."""
    from medssl.evaluate.classify import fine_tune
    from medssl.evaluate.inputs import EvalData, EvalRun
    from medssl.evaluate.segment2d import train_segmentation
    from medssl.nn.backbone import ResNetTrunk

    ds = load_dataset("synthetic_cxr", synthetic_root, n_images=64, size=32, seed=0)
    train, val, test = ds.indices("train")[:33], ds.indices("val"), ds.indices("test")
    settings, meta = {"epochs": 1, "lr": 1e-3, "batch_size": 8}, {"mean": [0.5], "std": [0.25]}
    tuned = fine_tune(
        ResNetTrunk(), meta, EvalData(ds.images, ds.labels, train, val, test, 32, ds.class_names), EvalRun(settings, 0)
    )
    assert np.isfinite(tuned["test_scores"]).all()
    segmented = train_segmentation(
        ResNetTrunk(),
        meta,
        EvalData(ds.images, np.asarray(ds.masks), train, val, test, 32),
        EvalRun(settings, 0),
        freeze_encoder=False,
    )
    assert 0 <= segmented["test"]["mean_dice"] <= 1


# 7. concurrent runs --------------------------------------------------------------------------------------------
def test_two_processes_on_one_results_folder_do_each_job_once(tmp_path):
    suite = tiny_suite(tmp_path)
    command = [sys.executable, "run_benchmark.py", *cli(tmp_path, suite)]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    codes = [first.returncode, second.returncode]
    assert sorted(codes) in ([0, 0], [0, 2]), outputs
    for code, (_, err) in zip(codes, outputs):
        assert code == 0 or "another run is using" in err, err
        assert "Traceback" not in err, err
    records = ResultStore(tmp_path / "results" / "tiny").records()
    assert len(records) == len({r["key"] for r in records}) == 2, "each job done once"
    history = (next((tmp_path / "results" / "checkpoints").glob("simclr-*")) / "history.jsonl").read_text().splitlines()
    assert len(history) == len({json.loads(line)["epoch"] for line in history}), "history rows doubled"


def test_lock_names_its_holder_and_is_released(tmp_path):
    with exclusive_lock(tmp_path / ".lock"):
        with pytest.raises(Busy, match=f"pid {os.getpid()}"):
            with exclusive_lock(tmp_path / ".lock"):
                pass
    with exclusive_lock(tmp_path / ".lock"):
        pass


# 8. torn last line ---------------------------------------------------------------------------------------------
def test_a_torn_last_line_never_swallows_the_next_record(tmp_path):
    path = tmp_path / "records.jsonl"
    append_line(path, {"key": "a"})
    with open(path, "a") as fh:
        fh.write('{"key": "b", "val')  # killed while appending
    with pytest.warns(UserWarning, match="cut off"):
        append_line(path, {"key": "c"})
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "c"]
    assert [p.read_text() for p in tmp_path.glob("records.jsonl.partial-*")] == ['{"key": "b", "val'], (
        "the fragment is set aside"
    )
    with open(path, "a") as fh:
        fh.write('{"key": "d"}')  # whole record, only the newline lost: kept
    append_line(path, {"key": "e"})
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "c", "d", "e"]


# 9. corrupt checkpoints ----------------------------------------------------------------------------------------
def test_corrupt_encoder_is_named_shown_and_redone(tmp_path, synthetic_root, capsys):
    from medssl.cli.output import print_plan

    suite = load_suite("smoke")
    job = next(j for j in build_plan(suite).pretrain_jobs if j.method == "simclr")
    dataset = load_dataset("synthetic_cxr", synthetic_root, **suite["pretrain"]["datasets"]["cxr"]["params"])
    path = run_pretraining(job, dataset, tmp_path / "checkpoints", RunOptions(progress=False))
    good = load_encoder(path)[0].state_dict()
    path.write_bytes(path.read_bytes()[:100_000])  # truncated
    assert encoder_status(path) == "corrupt"
    with pytest.raises(CorruptCheckpoint, match=f"{path} is damaged"):
        load_encoder(path)
    print_plan(build_plan(suite), ResultStore(tmp_path / "records"), tmp_path)
    line = next(line for line in capsys.readouterr().out.splitlines() if job.key in line)
    assert "damaged: will be redone" in line, "--dry-run must not show a damaged encoder as done"
    with pytest.warns(UserWarning, match="damaged"):
        redone = run_pretraining(job, dataset, tmp_path / "checkpoints", RunOptions(progress=False))
    for name, tensor in load_encoder(redone)[0].state_dict().items():
        assert torch.equal(tensor, good[name]), name


def test_garbage_last_checkpoint_is_set_aside_and_training_starts_over(tmp_path, synthetic_root):
    suite = load_suite("smoke")
    job = next(j for j in build_plan(suite).pretrain_jobs if j.method == "simclr")
    dataset = load_dataset("synthetic_cxr", synthetic_root, **suite["pretrain"]["datasets"]["cxr"]["params"])
    (tmp_path / job.key).mkdir()
    (tmp_path / job.key / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="last.ckpt cannot be loaded"):
        path = run_pretraining(job, dataset, tmp_path, RunOptions(progress=False))
    assert load_encoder(path)[1]["method"] == "simclr" and (tmp_path / job.key / "last.ckpt.corrupt").exists()


# 10. unwritable folders ----------------------------------------------------------------------------------------
def test_unwritable_results_folder_is_refused_before_any_work(tmp_path, capsys):
    suite = tiny_suite(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = cli(tmp_path, suite)
    args[args.index("--out") + 1] = str(blocker / "results")  # cannot be created, for root as for anyone
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write to") and "a-file" in err
    assert not (tmp_path / "data" / "synthetic_cxr").exists(), "nothing was generated or computed"


# 11. command-line lists ----------------------------------------------------------------------------------------
def test_repeated_command_line_values_run_once(capsys, tmp_path):
    assert (
        main(["--suite", "smoke", "--methods", "simclr,simclr", "--seeds", "0,0", "--out", str(tmp_path), "--dry-run"])
        == 0
    )
    out = capsys.readouterr().out
    assert "1 pretraining jobs, 4 evaluation jobs" in out


# 12. prepare resumes after a fixed file ------------------------------------------------------------------------
def test_prepare_resumes_with_the_fixed_file(tmp_path, monkeypatch):
    from PIL import Image
    from test_nih_chestxray14 import make_fake_nih

    import datasets.nih_chestxray14 as nih
    from datasets.imageio import decode_image

    root = make_fake_nih(tmp_path / "nih_chestxray14")
    broken = root / "images_001/images/00000001_000.png"
    broken.write_bytes(b"\x89PNG garbage")
    args = ["prepare", "--dataset", "nih_chestxray14", "--data-root", str(tmp_path), "--size", "16", "--no-progress"]
    assert main(args) == 2
    Image.fromarray(np.full((40, 40), 123, np.uint8), "L").save(broken)
    decoded = []
    monkeypatch.setattr(nih, "decode_image", lambda path: decoded.append(Path(path).name) or decode_image(path))
    assert main(args) == 0
    assert decoded == [broken.name], "only the fixed file is decoded again"
    dataset = load_dataset("nih_chestxray14", tmp_path, size=16)
    assert sum(bool(np.all(image == 123)) for image in np.asarray(dataset.images)) == 1, (
        "the fixed image is in the cache"
    )


# 13. reports are swapped in whole ------------------------------------------------------------------------------
def test_a_failed_report_write_leaves_the_old_reports_whole(tmp_path, monkeypatch):
    from medssl.report import figures
    from medssl.report.tables import write_reports

    plan = build_plan(load_suite("smoke"))
    folder = tmp_path / "smoke"
    write_reports(plan, [], folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    (folder / "notes.txt").write_text("mine")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(figures, "write_figures", killed)
    monkeypatch.setattr("medssl.report.tables.render_statistics", lambda *a, **k: "NEW\n")
    with pytest.raises(KeyboardInterrupt):
        write_reports(plan, [], folder)
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert after == {**before, "notes.txt": b"mine"}, "a mix of new and old report files"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke"], "no staging folder left behind"
    # killed between the two renames of the swap: the old folder is aside and none is in place; the next write restores it
    os.rename(folder, tmp_path / ".smoke.old-1")
    monkeypatch.undo()
    write_reports(plan, [], folder)
    assert (folder / "notes.txt").read_text() == "mine" and not list(tmp_path.glob(".smoke.*"))
