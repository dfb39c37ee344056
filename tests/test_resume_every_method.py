"""Every registered method resumes bit-identically: killed in the middle of its second epoch, its pretraining goes
on from the last epoch's checkpoint and ends with the weights of the run that was never interrupted. It fails for
state a method keeps outside its checkpoint (a memory bank lightly does not save, a host-side queue pointer, a
step counter), so a new method is checked without editing this file."""

import pytest
import torch

from datasets import load_dataset
from medssl.plan.jobs import build_plan
from medssl.pretrain.encoder import load_encoder
from medssl.pretrain.train import run_pretraining
from medssl.runtime.options import RunOptions
from medssl.suite.config import load_suite
from tests.test_methods import SMALL_HEADS, SSL_METHODS
from tests.test_pretrain_resume import Crash


@pytest.mark.parametrize("method", SSL_METHODS)
def test_pretraining_killed_mid_epoch_resumes_to_the_uninterrupted_weights(method, tmp_path, synthetic_root):
    suite = load_suite("smoke")
    suite["pretrain"]["epochs"] = 2
    suite["pretrain"].pop("monitor")
    suite.update(methods=[method], method_params={method: SMALL_HEADS[method]})
    job = next(j for j in build_plan(suite).pretrain_jobs if j.method == method)
    dataset = load_dataset("synthetic_cxr", synthetic_root, **suite["pretrain"]["datasets"]["cxr"]["params"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pretraining(job, dataset, tmp_path / "resumed", RunOptions(progress=False), callbacks=[Crash(1, batch=1)])
    resumed = load_encoder(run_pretraining(job, dataset, tmp_path / "resumed", RunOptions(progress=False)))[
        0
    ].state_dict()
    straight = load_encoder(run_pretraining(job, dataset, tmp_path / "straight", RunOptions(progress=False)))[
        0
    ].state_dict()
    differing = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not differing, f"{method}: {len(differing)} tensors differ after the resume, e.g. {differing[:3]}"
