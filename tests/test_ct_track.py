"""The CT track end to end on tiny phantoms (medssl/run/ct.py, medssl/report/ct.py): plan keys, bad input refused
before any work, records and reports, reuse of finished work, resumed pretraining, and the ranking statistics."""

import json

import numpy as np
import pytest
import torch
import yaml

import run_benchmark
from medssl.run.ct import RANDOM_INIT, build_ct_plan
from medssl.suite.config import load_suite

TINY = {
    "name": "tinyct",
    "track": "ct",
    "pretrain": {
        "datasets": {
            "ct": {
                "name": "synthetic_ct",
                "params": {"n_labelled": 8, "n_unlabelled": 2, "spacing": [8.0, 8.0, 8.0], "part": "unlabelled"},
                "splits": ["train", "val", "test"],
            }
        },
        "epochs": 2,
        "steps_per_epoch": 2,
        "optimizer": {"name": "adam", "lr": 3.0e-4},
        "seeds": [0],
    },
    "methods": ["vox2vec3d"],
    "method_params": {
        "vox2vec3d": {
            "base_channels": 4,
            "num_levels": 3,
            "patch_size": [16, 16, 8],
            "pairs_per_step": 2,
            "max_voxels_per_pair": 64,
        }
    },
    "tasks": [
        {
            "name": "Organs",
            "dataset": {
                "name": "synthetic_ct",
                "params": {"n_labelled": 8, "n_unlabelled": 2, "spacing": [8.0, 8.0, 8.0]},
            },
            "pretrain": "ct",
            "protocols": ["scratch", "probe", "finetune", "random_probe"],
        }
    ],
    "evaluation": {
        "seeds": [0],
        "segmentation3d": {
            "patch_size": [16, 16, 8],
            "epochs": 2,
            "steps_per_epoch": 2,
            "patches_per_step": 2,
            "validations": 1,
            "lr": 3.0e-3,
            "freeze_epochs": 1,
            "warmup_epochs": 1,
        },
    },
}


def write_suite(path, suite=TINY):
    path.write_text(yaml.safe_dump(suite))
    return str(path)


def run(args, capsys):
    code = run_benchmark.main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic_root):
    """The tiny CT suite run once: (suite path, results folder, reports folder, run output)."""
    folder = tmp_path_factory.mktemp("ct")
    suite = write_suite(folder / "tinyct.yaml")
    args = [
        "--suite",
        suite,
        "--out",
        str(folder / "out"),
        "--reports",
        str(folder / "reports"),
        "--data-root",
        str(synthetic_root),
        "--no-progress",
        "--device",
        "cpu",
    ]
    code = run_benchmark.main(args)
    assert code == 0
    return suite, folder, args


def test_ct_suite_runs_end_to_end_with_a_record_per_row_and_reports(finished):
    suite, folder, _ = finished
    records = [json.loads(line) for line in (folder / "out" / "tinyct" / "records.jsonl").read_text().splitlines()]
    rows = sorted((r["method"], r["protocol"], r["head"]) for r in records)
    assert rows == sorted(
        [
            (RANDOM_INIT, "scratch", "linear"),
            ("vox2vec3d", "probe", "linear"),
            ("vox2vec3d", "probe", "nonlinear"),
            ("vox2vec3d", "finetune", "linear"),
            (RANDOM_INIT, "random_probe", "linear"),
            (RANDOM_INIT, "random_probe", "nonlinear"),
        ]
    )
    for record in records:
        assert len(record["per_class"]) == 13 and 0 <= record["value"] <= 1 and record["n_test"] == 1
        assert record["packages"]["monai"] != "not installed" and record["key"].startswith(record["config_hash"])
        predictions = np.load(folder / "out" / "tinyct" / "predictions" / f"{record['key']}.npz")
        # the record's mean is the per-CT mean over organs, then over test CTs
        assert predictions["dice"].shape == (1, 13)
        assert record["value"] == pytest.approx(
            float(np.mean(np.nanmean(predictions["dice"].astype(np.float64), axis=1))), abs=1e-6
        )
    assert {r["pretrain_hash"] is None for r in records if r["method"] == RANDOM_INIT} == {True}
    table = (folder / "reports" / "tinyct" / "ct_table.md").read_text()
    for label in (
        "FPN3d from scratch",
        "vox2vec linear probe",
        "vox2vec non-linear probe",
        "vox2vec fine-tuned",
        "random-init linear probe",
        "random-init non-linear probe",
    ):
        assert f"| {label} |" in table
    assert "**" in table and "| Row | spleen | right kidney |" in table and table.rstrip().count("\n") >= 9
    statistics = (folder / "reports" / "tinyct" / "ct_statistics.md").read_text()
    assert (
        "vox2vec fine-tuned ≥ FPN3d from scratch" in statistics
        and "vox2vec linear probe > random-init linear probe" in statistics
    )
    for name in ("ct_table.csv", "ct_table.tex", "ct_organs.png", "pretraining.md", "index.html"):
        assert (folder / "reports" / "tinyct" / name).exists()
    encoder = next((folder / "out" / "checkpoints").glob("vox2vec3d-ct-*/encoder.pt"))
    assert json.loads(encoder.with_name("encoder.json").read_text())["sha256"]


def test_a_second_run_reuses_everything_and_report_rewrites_the_same_tables(finished, capsys):
    suite, folder, args = finished
    before = (folder / "reports" / "tinyct" / "ct_table.md").read_text()
    code, out, _ = run(args, capsys)
    assert code == 0 and "4 evaluations in the plan, 4 already done, 0 to run" in out
    code, out, _ = run(
        ["report", "--suite", suite, "--out", str(folder / "out"), "--reports", str(folder / "reports")], capsys
    )
    assert code == 0 and (folder / "reports" / "tinyct" / "ct_table.md").read_text() == before


def test_random_init_rows_do_not_depend_on_the_pretraining_and_folds_are_runs():
    plan = build_ct_plan(TINY)
    longer = build_ct_plan({**TINY, "pretrain": {**TINY["pretrain"], "epochs": 3}})
    keys = {(j.protocol, j.key) for j in plan.eval_jobs}
    changed = {(j.protocol, j.key) for j in longer.eval_jobs} - keys
    assert {protocol for protocol, _ in changed} == {"probe", "finetune"}  # scratch and random_probe keep their records
    assert plan.pretrain_jobs[0].key != longer.pretrain_jobs[0].key
    btcv = build_ct_plan(load_suite("btcv"))
    folds = sorted({j.fold for j in btcv.eval_jobs})
    assert folds == [0, 1, 2, 3, 4] and len(btcv.eval_jobs) == 5 * 4
    assert {j.task["dataset"]["params"]["fold"] for j in btcv.eval_jobs} == set(folds)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"methods": ["simclr"]}, "simclr trains on 2D images and this suite on CT volumes"),
        (
            {
                "tasks": [
                    {**TINY["tasks"][0], "dataset": {"name": "synthetic_cxr", "params": {"n_images": 200, "size": 64}}}
                ]
            },
            "holds 2D images; a CT suite",
        ),
        (
            {
                "evaluation": {
                    **TINY["evaluation"],
                    "segmentation3d": {**TINY["evaluation"]["segmentation3d"], "patch_size": [128, 128, 32]},
                }
            },
            "smaller than the evaluation patch_size",
        ),
        ({"tasks": [{**TINY["tasks"][0], "folds": [0, 1]}]}, "has no official fold split"),
        # the first job of the task is a random-init one, which has no pretraining patch: the probe's must still be checked
        (
            {"method_params": {"vox2vec3d": {**TINY["method_params"]["vox2vec3d"], "patch_size": [128, 16, 8]}}},
            "smaller than the pretraining patch_size [128, 16, 8]",
        ),
        (
            {"tasks": [{**TINY["tasks"][0], "protocols": ["probe", "linear"]}]},
            "expected one of probe, finetune, scratch, random_probe",
        ),
    ],
)
def test_bad_ct_suites_are_refused_in_one_line_before_any_work(tmp_path, synthetic_root, capsys, change, message):
    suite = write_suite(tmp_path / "bad.yaml", {**TINY, **change})
    code, out, err = run(
        [
            "--suite",
            suite,
            "--out",
            str(tmp_path / "out"),
            "--data-root",
            str(synthetic_root),
            "--no-progress",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out" / "checkpoints").exists() or not any((tmp_path / "out" / "checkpoints").iterdir())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--fractions", "10"], "a CT suite has no label fractions"),
        (["--encoder", "mine=x.pt"], "--encoder brings 2D ResNet encoders"),
        (["--devices", "2"], "trains on one device in fp32"),
        (["--precision", "bf16"], "--precision bf16: CT suite tinyct trains on one device in fp32"),
    ],
)
def test_image_only_options_are_refused_for_ct_suites(tmp_path, capsys, extra, message):
    suite = write_suite(tmp_path / "tinyct.yaml")
    code, _, err = run(["--suite", suite, "--out", str(tmp_path / "out"), *extra], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_an_image_suite_refuses_the_ct_method(capsys):
    code, _, err = run(["--suite", "smoke", "--methods", "vox2vec3d", "--dry-run"], capsys)
    assert code == 2 and "vox2vec3d trains on CT volumes and this suite on 2D images" in err and err.count("\n") == 1


def test_ct_pretraining_through_the_runner_resumes_bit_identically(tmp_path, synthetic_root):
    """run_pretraining's CT branch killed in its second epoch and run again ends with the weights of an
    uninterrupted run (the steps are seeded by (seed, epoch, step); Lightning's last.ckpt restores the rest)."""
    import pytorch_lightning as pl

    from datasets import load_dataset
    from medssl.pretrain.encoder import load_encoder
    from medssl.pretrain.train import run_pretraining
    from medssl.runtime.options import RunOptions

    class CrashInSecondEpoch(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1:
                raise RuntimeError("simulated crash")

    job = build_ct_plan(TINY).pretrain_jobs[0]
    corpus = load_dataset("synthetic_ct", synthetic_root, **TINY["pretrain"]["datasets"]["ct"]["params"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pretraining(job, corpus, tmp_path / "crashed", RunOptions(progress=False), callbacks=[CrashInSecondEpoch()])
    resumed, meta = load_encoder(run_pretraining(job, corpus, tmp_path / "crashed", RunOptions(progress=False)))
    whole, _ = load_encoder(run_pretraining(job, corpus, tmp_path / "whole", RunOptions(progress=False)))
    assert (
        meta["backbone"] == "fpn3d"
        and len(meta["resumed"]) == 1
        and [row["epoch"] for row in meta["history"]] == [0, 1]
    )
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()))


def test_ranking_tests_pair_test_cts_and_judge_each_relation():
    from scipy import stats as scipy_stats

    from medssl.report.ct import RowRuns, ranking_tests

    plan = build_ct_plan(TINY)
    cases = [f"img{i:04d}" for i in range(10)]
    base = np.linspace(0.3, 0.7, 10)
    rows = {
        (RANDOM_INIT, "scratch", "linear"): base + 0.10,
        ("vox2vec3d", "finetune", "linear"): base + 0.10 + 0.001 * (-1.0) ** np.arange(10),
        ("vox2vec3d", "probe", "nonlinear"): base,
        ("vox2vec3d", "probe", "linear"): base - 0.05 - 0.01 * np.arange(10),
        (RANDOM_INIT, "random_probe", "linear"): base + 0.02,
        (RANDOM_INIT, "random_probe", "nonlinear"): base - 0.2,
    }
    runs = {}
    for row, values in rows.items():
        # two evaluation seeds whose per-CT values average to ``values``
        runs[("Organs", row)] = RowRuns(
            per_ct={(0, -1, 0): dict(zip(cases, values - 0.01)), (0, -1, 1): dict(zip(cases, values + 0.01))}
        )
    tests = {(t.first, t.second): t for t in ranking_tests(plan, runs)}
    nonlinear_vs_linear = tests[(("vox2vec3d", "probe", "nonlinear"), ("vox2vec3d", "probe", "linear"))]
    expected = scipy_stats.wilcoxon(rows[("vox2vec3d", "probe", "nonlinear")] - rows[("vox2vec3d", "probe", "linear")])
    assert (
        nonlinear_vs_linear.n_cts == 10
        and nonlinear_vs_linear.p == pytest.approx(expected.pvalue)
        and nonlinear_vs_linear.verdict == "holds"
    )
    assert tests[((RANDOM_INIT, "scratch", "linear"), ("vox2vec3d", "probe", "nonlinear"))].verdict == "holds"
    assert (
        tests[(("vox2vec3d", "finetune", "linear"), (RANDOM_INIT, "scratch", "linear"))].verdict == "holds"
    )  # ≥: not significantly lower
    assert (
        tests[(("vox2vec3d", "probe", "linear"), (RANDOM_INIT, "random_probe", "linear"))].verdict
        == "does not hold (significantly reversed)"
    )
    assert tests[(("vox2vec3d", "probe", "nonlinear"), (RANDOM_INIT, "random_probe", "nonlinear"))].verdict == "holds"
    adjusted = sorted(t.p_adjusted for t in tests.values())
    assert all(a >= t for a, t in zip(adjusted, sorted(t.p for t in tests.values())))


def test_heads_sharing_one_encoder_pass_score_as_separate_passes():
    from medssl.evaluate.segment3d import mean_dice
    from methods.vox2vec3d import FPN3d, FPNLinearHead, FPNNonLinearHead, body_mask
    from tests.test_vox2vec3d import toy_ct

    volumes, labels = toy_ct(2)
    torch.manual_seed(0)
    encoder = FPN3d(1, 4, 3).eval()
    linear, nonlinear = (
        FPNLinearHead(encoder.level_channels, 13).eval(),
        FPNNonLinearHead(encoder.level_channels, 13).eval(),
    )
    bodies = [body_mask(v) for v in volumes]
    args = (volumes, labels, bodies, (16, 16, 8), list(range(1, 14)))
    together = mean_dice(
        lambda x: (lambda levels: torch.cat([linear(levels), nonlinear(levels)], 1))(encoder(x)),
        *args,
        heads=2,
        overlap=0.25,
        batch_size=4,
    )
    apart = [
        mean_dice(lambda x, head=head: head(encoder(x)), *args, overlap=0.25, batch_size=4)
        for head in (linear, nonlinear)
    ]
    assert (
        together.shape == (2, 2, 13)
        and np.array_equal(together[:, 0], apart[0])
        and np.array_equal(together[:, 1], apart[1])
    )


def test_missing_btcv_and_amos_are_named_once_each_before_any_work(tmp_path, capsys):
    """The btcv suite's five folds read one folder: a missing BTCV is one problem, not five."""
    (tmp_path / "data").mkdir()
    code, _, err = run(
        ["--suite", "btcv", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out")], capsys
    )
    lines = err.strip().splitlines()
    assert code == 2 and lines[0] == "error: 2 of the suite's datasets cannot be used; nothing has been run:"
    assert (
        lines[1].startswith("  amos: ")
        and lines[2].startswith("  btcv: neither ")
        and "--data btcv=PATH" in lines[2]
        and len(lines) == 3
    )


def test_each_patch_is_checked_against_the_volumes_it_is_cut_from(synthetic_root):
    """A task whose CTs are smaller than the pretraining patch, but not than the evaluation patch, is valid: the
    pretraining patch is cut from the corpus only."""
    from medssl.data.loaded import DatasetCache
    from medssl.run.ct import check_ct_tasks

    coarse = {**TINY["tasks"][0]["dataset"]["params"], "spacing": [16.0, 16.0, 16.0]}
    suite = {
        **TINY,
        "tasks": [{**TINY["tasks"][0], "dataset": {"name": "synthetic_ct", "params": coarse}}],
        "evaluation": {
            **TINY["evaluation"],
            "segmentation3d": {**TINY["evaluation"]["segmentation3d"], "patch_size": [8, 8, 8]},
        },
    }
    datasets = DatasetCache(synthetic_root)
    task_shapes = [v.shape for v in datasets.get(suite["tasks"][0]["dataset"]).images]
    assert any(s < p for shape in task_shapes for s, p in zip(shape, (16, 16, 8)))  # the case this test is about
    check_ct_tasks(build_ct_plan(suite).eval_jobs, datasets)


def test_a_ct_run_on_a_busy_results_folder_names_the_holder(tmp_path, synthetic_root, capsys):
    """A second CT run on a busy --out ended in AttributeError: 'NoneType' object has no attribute 'directory'."""
    from medssl.record.store import ResultStore

    suite = write_suite(tmp_path / "tinyct.yaml")
    with ResultStore(tmp_path / "out" / "tinyct").lock():
        code, _, err = run(
            [
                "--suite",
                suite,
                "--out",
                str(tmp_path / "out"),
                "--data-root",
                str(synthetic_root),
                "--no-progress",
                "--device",
                "cpu",
            ],
            capsys,
        )
    assert code == 2 and f"another run is using {tmp_path / 'out' / 'tinyct'}: pid" in err and "Traceback" not in err


def test_a_ct_report_without_a_predictions_file_or_per_class_warns_and_is_written(finished, tmp_path, capsys):
    """One .npz deleted, or an older record without per_class: FileNotFoundError / KeyError ended the report and
    every CT run that met it (issue 32)."""
    import shutil

    suite, folder, _ = finished
    out = tmp_path / "out"
    shutil.copytree(folder / "out" / "tinyct", out / "tinyct")
    records = out / "tinyct" / "records.jsonl"
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    (out / "tinyct" / "predictions" / f"{rows[0]['key']}.npz").unlink()
    rows[1].pop("per_class")
    records.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, _, err = run(["report", "--suite", suite, "--out", str(out), "--reports", str(tmp_path / "reports")], capsys)
    assert (
        code == 0
        and f"warning: record {rows[0]['key']}" in err
        and "its predictions cannot be read (FileNotFoundError)" in err
    )
    assert (tmp_path / "reports" / "tinyct" / "ct_table.md").exists()
