"""Command-line behaviour: plan printing, clear one-line errors with non-zero exit codes."""

import subprocess
import sys

import pytest
import yaml

from medssl.cli.parser import COMMANDS
from medssl.plan.jobs import build_plan
from medssl.suite.config import load_suite
from medssl.suite.protocol import ConfigError
from run_benchmark import main

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "run_benchmark.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_dry_run_lists_every_job(tmp_path, capsys):
    assert main(["--suite", "smoke", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 pretraining jobs, 32 evaluation jobs" in out
    assert out.count("[pending]") == 3 + 32 and "[random init]" in out
    assert "coboom" in out and "finetune" in out and "100%" in out


def test_dry_run_checks_the_data_layout_without_generating_phantoms(tmp_path, capsys):
    """A dry run refuses what the run would refuse before any work (issue 31): a missing dataset under --data-root
    is named after the plan is printed, with a non-zero exit; the check generates no phantom."""
    root = tmp_path / "data"
    root.mkdir()
    args = ["--suite", "smoke", "--dry-run", "--out", str(tmp_path / "out"), "--data-root", str(root)]
    assert main(args) == 0 and not any(root.iterdir())
    capsys.readouterr()
    assert main(args + ["--set", "tasks.0.dataset={name: nih_chestxray14}"]) == 2
    captured = capsys.readouterr()
    assert "evaluation jobs" in captured.out and "NIH ChestX-ray14 not found" in captured.err


def test_dry_run_respects_overrides(tmp_path, capsys):
    assert (
        main(
            [
                "--suite",
                "smoke",
                "--dry-run",
                "--methods",
                "simclr",
                "--seeds",
                "0",
                "--fractions",
                "30",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "1 pretraining jobs, 2 evaluation jobs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--suite", "nope"], "unknown suite 'nope'; known suites:"),
        (["--suite", "smoke", "--methods", "simclr,nope"], "unknown method 'nope'; known methods:"),
        (["--suite", "smoke", "--fractions", "0"], "label fraction 0% is impossible"),
        (["--suite", "smoke", "--fractions", "150"], "label fraction 150% is impossible"),
        (["--suite", "smoke", "--data-root", "/does/not/exist"], "data root /does/not/exist does not exist"),
        (["report", "--suite", "smoke", "--out", "/does/not/exist"], "no stored results"),
        (["--suite", "smoke", "--device", "cpu", "--devices", "0"], "--devices must be at least 1"),
        (["--suite", "smoke", "--dry-run", "--shard", "3/2"], "need 1 <= K <= N"),
        (
            ["report", "--suite", "smoke", "--shard", "1/2"],
            "'report' does not take --shard 1/2; 'python run_benchmark.py report --help' lists its options",
        ),
        (
            ["--suite", "smoke", "--dry-run", "--encoder", "simclr=/tmp/x.pth"],
            "encoder name 'simclr' is the name of a method",
        ),
        (
            ["--suite", "smoke", "--dry-run", "--encoder", "mine=/does/not/exist.pth"],
            "encoder mine: /does/not/exist.pth does not exist",
        ),
        (
            ["--suite", "smoke", "--dry-run", "--set", "pretrain.epochs"],
            "--set 'pretrain.epochs': write KEY.PATH=VALUE",
        ),
        (
            ["--suite", "smoke", "--dry-run", "--set", "tasks.0.protocols=[knn]"],
            "lists the knn protocol but the suite has no evaluation.knn settings",
        ),
        (
            ["--suite", "smoke", "--dry-run", "--seeds=-1"],
            "--seeds: seeds must be integers from 0 to 4294967295, got [-1]",
        ),
        (["--suite", "smoke", "--dry-run", "--methods", ""], "--methods is empty"),
        (["--suite", "smoke", "--dry-run", "--seeds", " , "], "--seeds is empty"),
        (
            ["--suite", "smoke", "--dry-run", "--fractions", "0.001"],
            "--fractions 0.001: no task of suite 'smoke' has this fraction; its tasks have 30, 100",
        ),
        (
            ["--suite", "smoke", "--dry-run", "--pretrain-seeds", "a"],
            "cannot read 'a' as a comma-separated list of int",
        ),
    ],
)
def test_bad_input_gives_one_line_error(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1


def test_help_and_list_in_a_fresh_process():
    result = run_cli("--help")
    assert result.returncode == 0 and all(
        command in result.stdout for command in ("run", "report", "export", "examples", "prepare")
    )
    result = run_cli("--list")
    assert result.returncode == 0
    for word in ("quick", "smoke", "miccai2024", "coboom-nodf", "synthetic_cxr"):
        assert word in result.stdout
    result = run_cli("--suite", "nope")
    assert result.returncode == 2 and result.stderr.strip().startswith("error: unknown suite")


def test_narrowing_the_suite_keeps_job_keys():
    """--methods/--seeds/--fractions select jobs; they must not change the keys of the jobs they keep."""
    from medssl.plan.jobs import build_plan
    from medssl.suite.config import apply_overrides, load_suite

    suite = load_suite("smoke")
    full = {j.key for j in build_plan(suite).eval_jobs}
    narrow = build_plan(apply_overrides(suite, methods=["byol"], seeds=[1], fractions=[30]))
    assert len(narrow.eval_jobs) == 2 and {j.key for j in narrow.eval_jobs} <= full


def test_batch_larger_than_pretraining_data_is_a_clear_error(tmp_path, capsys):
    import yaml

    suite = yaml.safe_load((ROOT / "benchmarks" / "suites" / "smoke.yaml").read_text())
    suite["pretrain"]["batch_size"] = 4096
    path = tmp_path / "big_batch.yaml"
    path.write_text(yaml.safe_dump(suite))
    (tmp_path / "data").mkdir()
    args = [
        "--suite",
        str(path),
        "--methods",
        "simclr",
        "--data-root",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert main(args) == 2
    assert "fewer than one batch of 4096" in capsys.readouterr().err


def test_a_batch_that_does_not_split_over_the_devices_is_refused(tmp_path, capsys):
    args = [
        "--suite",
        "smoke",
        "--methods",
        "simclr",
        "--device",
        "cpu",
        "--devices",
        "3",
        "--data-root",
        str(tmp_path),
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
    ]
    assert main(args) == 2
    assert "batch size 16 does not split evenly over 3 devices" in capsys.readouterr().err


def test_random_init_batchnorm_comparison_needs_the_suite_run_first(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/random_init_batchnorm.py",
            "--suite",
            "smoke",
            "--out",
            str(tmp_path),
            "--reports",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert f"no stored linear-probe records of 'supervised' in {tmp_path}/smoke; run the suite first" in done.stderr
    assert not (tmp_path / "smoke-bn-init").exists()


def test_exported_batchnorm_comparison_needs_a_reestimating_method_and_the_suite_run_first(tmp_path):
    script = [
        sys.executable,
        "benchmarks/exported_batchnorm.py",
        "--suite",
        "smoke",
        "--out",
        str(tmp_path),
        "--reports",
        str(tmp_path),
    ]
    done = subprocess.run(script + ["--method", "simclr"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (
        done.returncode == 2
        and "method 'simclr' exports the statistics of its training: there is nothing to compare" in done.stderr
    )
    done = subprocess.run(script + ["--method", "mlvicx"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "run the suite first: no stored records or last.ckpt for mlvicx-cxr-" in done.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: run_benchmark.py {command}")
    own = {
        "run": "--dry-run",
        "report": "--reports",
        "export": "--export-dir",
        "examples": "--image",
        "prepare": "--size",
    }
    assert own[command] in text
    assert (
        ("--dry-run" in text) == (command == "run")
        and ("--size" in text) == (command == "prepare")
        and ("--set" in text) == (command in ("run", "report", "export"))
    )


def test_set_hashes_like_the_edited_suite(tmp_path):
    edits = ["pretrain.epochs=2", "tasks.0.fractions=[100]", "method_params.simclr.temperature=0.2"]
    overridden = build_plan(load_suite("smoke", settings=edits))
    written = yaml.safe_load((ROOT / "benchmarks" / "suites" / "smoke.yaml").read_text())
    written["pretrain"]["epochs"] = 2
    written["tasks"][0]["fractions"] = [100]
    written["method_params"]["simclr"]["temperature"] = 0.2
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(written))
    edited = build_plan(load_suite(str(tmp_path / "smoke.yaml")))
    keys = lambda plan: ([j.key for j in plan.pretrain_jobs], [j.key for j in plan.eval_jobs])
    assert keys(overridden) == keys(edited) and keys(overridden) != keys(build_plan(load_suite("smoke")))
    with pytest.raises(ConfigError, match="pretrain.epochs: expected an integer"):
        load_suite("smoke", settings=["pretrain.epochs=two"])
    with pytest.raises(ConfigError, match="unknown key; did you mean 'weight_decay'"):
        load_suite("smoke", settings=["pretrain.optimizer.weigth_decay=0.1"])
    with pytest.raises(ConfigError, match="address an item by its position"):
        load_suite("smoke", settings=["tasks.3.fractions=[1]"])
