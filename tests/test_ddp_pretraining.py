"""--devices 2 on CPU: Lightning DDP (ddp_spawn, gloo) pretrains one method, the history is written once, and the
encoder comes back to the main process and is saved as with one device. CoBooM runs collectives inside its forward
pass (one codebook for all processes); MLVICX re-estimates its exported statistics in the main process afterwards."""
import json

import pytest
import torch

from datasets import load_dataset
from medssl.backbone import ResNetTrunk
from medssl.config import load_suite
from medssl.plan import build_plan
from medssl.pretrain import load_encoder, run_pretraining
from tests.test_methods import SMALL_HEADS


@pytest.mark.parametrize("method", ["simclr", "coboom", "mlvicx"])
def test_two_process_pretraining_saves_a_trained_encoder(method, tmp_path, synthetic_root):
    suite = load_suite("smoke")
    suite["methods"] = [method]
    suite["method_params"] = {method: SMALL_HEADS[method]}
    job = next(j for j in build_plan(suite).pretrain_jobs if j.method == method)
    corpus = job.config["corpus"]
    dataset = load_dataset(corpus["name"], synthetic_root, **corpus["params"])
    path = run_pretraining(job, dataset, tmp_path, progress=False, devices=2)
    encoder, meta = load_encoder(path)
    assert meta["devices"] == 2
    torch.manual_seed(job.seed)
    fresh = ResNetTrunk().state_dict()
    trained = encoder.state_dict()
    assert all(torch.isfinite(v).all() for v in trained.values())
    assert any(not torch.equal(fresh[k], v) for k, v in trained.items() if k.endswith("weight")), "the weights came back trained"
    rows = [json.loads(line) for line in (path.parent / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [-1, 0], "one history row per epoch, written by rank 0 only"
