"""An interrupted pretraining resumes from its last finished epoch instead of starting again."""

import json

import pytest
import pytorch_lightning as pl
import torch

from datasets import load_dataset
from medssl.plan.jobs import build_plan
from medssl.pretrain.encoder import ENCODER_FILE, load_encoder
from medssl.pretrain.train import run_pretraining
from medssl.runtime.options import RunOptions
from medssl.suite.config import load_suite


class Crash(pl.Callback):
    """Raises at the end of epoch ``epoch`` (before its checkpoint) or in the middle of it (at batch ``batch``)."""

    def __init__(self, epoch, batch=None):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.batch is not None and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError("simulated crash")

    def on_train_epoch_end(self, trainer, module):
        if self.batch is None and trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_interrupted_pretraining_resumes(tmp_path, synthetic_root):
    """Killed at an epoch's end and then in the middle of the next epoch, the pretraining resumes from its last
    finished epoch each time, records each resume, and ends bit-identical to the uninterrupted run (issue 18)."""
    suite = load_suite("smoke")
    suite["pretrain"]["epochs"] = 3
    job = next(j for j in build_plan(suite).pretrain_jobs if j.method == "simclr")
    dataset = load_dataset("synthetic_cxr", synthetic_root, **suite["pretrain"]["datasets"]["cxr"]["params"])
    run_dir = tmp_path / job.key
    history = lambda: [row for row in map(json.loads, (run_dir / "history.jsonl").read_text().splitlines())]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pretraining(job, dataset, tmp_path, RunOptions(progress=False), callbacks=[Crash(1)])
    assert (run_dir / "last.ckpt").exists() and not (run_dir / ENCODER_FILE).exists()
    assert [row["epoch"] for row in history()] == [
        -1,
        0,
    ]  # -1: the learning-signal probe of the random initialisation (smoke suite monitors)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pretraining(job, dataset, tmp_path, RunOptions(progress=False), callbacks=[Crash(2, batch=1)])
    path = run_pretraining(job, dataset, tmp_path, RunOptions(progress=False))
    rows = history()
    assert [row["epoch"] for row in rows if not row.get("resumed")] == [-1, 0, 1, 2], (
        "each resumed run trains only the missing epochs"
    )
    assert [row["epoch"] for row in rows if row.get("resumed")] == [1, 2], "history.jsonl records each resume"
    encoder, meta = load_encoder(path)
    assert (
        meta["method"] == "simclr"
        and [h["epoch"] for h in meta["history"]] == [-1, 0, 1, 2]
        and len(meta["resumed"]) == 2
    )
    assert (
        run_pretraining(job, dataset, tmp_path, RunOptions(progress=False)) == path
    )  # finished: reused, not retrained
    # bit-identical to the same pretraining run without the interruptions (docs/reproducibility.md)
    uninterrupted = load_encoder(run_pretraining(job, dataset, tmp_path / "uninterrupted", RunOptions(progress=False)))[
        0
    ].state_dict()
    resumed = encoder.state_dict()
    assert uninterrupted.keys() == resumed.keys() and all(torch.equal(uninterrupted[k], resumed[k]) for k in resumed)


def test_precision_choice():
    from medssl.runtime.precision import cpu_supports_bf16, precision_for
    from medssl.suite.protocol import ConfigError

    assert precision_for("cpu", "32") == "32-true"
    assert precision_for("cpu", "bf16") == "bf16-mixed"
    assert precision_for("cpu", "auto") == ("bf16-mixed" if cpu_supports_bf16() else "32-true")
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        precision_for("cpu", "fp8")


def test_probe_monitor_records_learning_signal_without_changing_training(tmp_path, synthetic_root):
    suite = load_suite("smoke")
    suite["pretrain"]["epochs"] = 2
    dataset = load_dataset("synthetic_cxr", synthetic_root, **suite["pretrain"]["datasets"]["cxr"]["params"])
    plain = next(j for j in build_plan(suite).pretrain_jobs if j.method == "simclr")
    suite["pretrain"]["monitor"] = {"every_epochs": 2, "fraction": 100, "l2": [0.1]}
    monitored = next(j for j in build_plan(suite).pretrain_jobs if j.method == "simclr")
    assert monitored.hash == plain.hash and monitored.monitor
    weights = []
    for job, out in ((plain, tmp_path / "plain"), (monitored, tmp_path / "monitored")):
        weights.append(load_encoder(run_pretraining(job, dataset, out, RunOptions(progress=False)))[0].state_dict())
        history = [json.loads(line) for line in (out / job.key / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [-1, 0, 1]
    assert "probe_auc" in history[0] and "probe_auc" not in history[1] and 0.0 <= history[2]["probe_auc"] <= 1.0
    assert "feature_rank" not in history[1] and all(1.0 <= history[i]["feature_rank"] <= 512 for i in (0, 2))
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


def test_unknown_monitor_setting_is_a_clear_error(tmp_path):
    import yaml

    from medssl.suite.protocol import ConfigError

    suite = load_suite("smoke")
    suite["pretrain"]["monitor"] = {"every": 1}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(ConfigError, match=r"pretrain.monitor.every: unknown key; did you mean 'every_epochs'\?"):
        load_suite(str(path))
