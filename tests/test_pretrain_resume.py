"""An interrupted pretraining resumes from its last finished epoch instead of starting again."""
import json

import pytest
import pytorch_lightning as pl

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
    assert first == [0]
    path = run_pretraining(job, dataset, tmp_path, progress=False)
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert epochs == [0, 1], "the resumed run must train only the missing epoch"
    encoder, meta = load_encoder(path)
    assert meta["method"] == "simclr" and [h["epoch"] for h in meta["history"]] == [0, 1]
    assert run_pretraining(job, dataset, tmp_path, progress=False) == path  # finished: reused, not retrained


def test_precision_choice():
    from medssl.config import ConfigError
    from medssl.pretrain import cpu_supports_bf16, precision_for

    assert precision_for("cpu", "32") == "32-true"
    assert precision_for("cpu", "bf16") == "bf16-mixed"
    assert precision_for("cpu", "auto") == ("bf16-mixed" if cpu_supports_bf16() else "32-true")
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        precision_for("cpu", "fp8")
