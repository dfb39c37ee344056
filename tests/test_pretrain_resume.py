"""An interrupted pretraining resumes from its last finished epoch instead of starting again."""
import json

import pytest
import pytorch_lightning as pl
import torch

from datasets import load_dataset
from medssl.config import load_suite
from medssl.plan import build_plan
from medssl.pretrain import ENCODER_FILE, load_encoder, run_pretraining


class FailAtEpoch(pl.Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_interrupted_pretraining_resumes(tmp_path, synthetic_root):
    suite = load_suite("smoke")
    suite["pretrain"]["epochs"] = 2
    job = next(j for j in build_plan(suite).pretrain_jobs if j.method == "simclr")
    dataset = load_dataset("synthetic_cxr", synthetic_root, **suite["pretrain"]["datasets"]["cxr"]["params"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pretraining(job, dataset, tmp_path, progress=False, callbacks=[FailAtEpoch(1)])
    run_dir = tmp_path / job.key
    assert (run_dir / "last.ckpt").exists() and not (run_dir / ENCODER_FILE).exists()
    first = [json.loads(line)["epoch"] for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert first == [-1, 0]  # -1: the learning-signal probe of the random initialisation (smoke suite monitors)
    path = run_pretraining(job, dataset, tmp_path, progress=False)
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert epochs == [-1, 0, 1], "the resumed run must train only the missing epoch"
    encoder, meta = load_encoder(path)
    assert meta["method"] == "simclr" and [h["epoch"] for h in meta["history"]] == [-1, 0, 1]
    assert run_pretraining(job, dataset, tmp_path, progress=False) == path  # finished: reused, not retrained
    # bit-identical to the same pretraining run without the interruption (README "Reproducibility")
    uninterrupted = load_encoder(run_pretraining(job, dataset, tmp_path / "uninterrupted", progress=False))[0].state_dict()
    resumed = encoder.state_dict()
    assert uninterrupted.keys() == resumed.keys() and all(torch.equal(uninterrupted[k], resumed[k]) for k in resumed)


def test_precision_choice():
    from medssl.config import ConfigError
    from medssl.precision import cpu_supports_bf16, precision_for

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
        weights.append(load_encoder(run_pretraining(job, dataset, out, progress=False))[0].state_dict())
        history = [json.loads(line) for line in (out / job.key / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [-1, 0, 1]
    assert "probe_auc" in history[0] and "probe_auc" not in history[1] and 0.0 <= history[2]["probe_auc"] <= 1.0
    assert "feature_rank" not in history[1] and all(1.0 <= history[i]["feature_rank"] <= 512 for i in (0, 2))
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


def test_unknown_monitor_setting_is_a_clear_error(tmp_path):
    import yaml

    from medssl.config import ConfigError

    suite = load_suite("smoke")
    suite["pretrain"]["monitor"] = {"every": 1}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(ConfigError, match=r"pretrain.monitor has unknown settings \['every'\]"):
        load_suite(str(path))
