"""The encoder every registered method exports is self-consistent: run in eval mode on its own pretraining corpus, each
BatchNorm layer sees inputs whose variance matches the running variance it stores.

A frozen encoder is probed in eval mode, so its BatchNorm layers normalise with the stored running statistics. If
those were collected on a different network path (MLVICX trains its trunk with an attention block after every stage
and exports the trunk without them), every layer normalises inputs it never saw, and the linear probe measures a
broken network. Each method pretrains through the real pipeline (``run_pretraining``, which writes ``encoder.pt``)
at the quick suite's 48 px, then the exported trunk runs on corpus images as evaluation feeds them (whole image,
resized, normalised with the stored mean/std).

The running statistics must have settled first: at BatchNorm's default momentum 0.1 that takes about 100 steps
(after 6 steps they still hold mostly PyTorch's initial values). Running statistics never enter training (train-mode
BatchNorm normalises with the batch's own statistics), so the test raises the momentum to 0.3 during pretraining,
which settles them within its 31 steps (0.7^31 < 2e-5 of the initial values remain, less for methods with several
passes per step), at a third of the cost. At 32 px SwAV's 14-px local crops leave layer3 a 1x1 map, whose
statistics differ from the global views' by an artefact of the size (17x there, 5x at 48 px).
"""

import pytest
import pytorch_lightning as pl
import torch
from test_methods import SMALL_HEADS

from datasets import load_dataset
from medssl.nn.augment import Normalize, resize
from medssl.plan.jobs import build_plan
from medssl.pretrain.encoder import load_encoder
from medssl.pretrain.train import run_pretraining
from medssl.runtime.options import RunOptions
from medssl.suite.config import load_suite
from methods import REGISTRY, track_methods

SIZE = 48
# Measured with this test: the worst layer is within 2.1x for the methods with one view size; SwAV and PCRLv2, whose
# trunks also see 20-px local crops (as officially at 224/96 px), reach 7x at layer4. MLVICX's trunk exported with the
# statistics of its attention path failed without bound (the running variance of layer2.0.bn2 rounded to 0).
TOLERANCE = 10.0


class SettleBatchNorm(pl.Callback):
    """BatchNorm momentum 0.3 while pretraining (see the module docstring)."""

    def on_fit_start(self, trainer, module):
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.3


def variance_ratios(trunk: torch.nn.Module, inputs: torch.Tensor) -> dict:
    """Per BatchNorm layer of ``trunk`` in eval mode: (mean input variance per channel) / (mean running variance)."""
    ratios, hooks = {}, []
    for name, module in trunk.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):

            def record(module, args, name=name):
                seen = args[0].float().transpose(0, 1).flatten(1).var(dim=1).mean()
                ratios[name] = float(seen / module.running_var.float().mean())

            hooks.append(module.register_forward_pre_hook(record))
    trunk.eval()
    with torch.no_grad():
        trunk(inputs)
    for hook in hooks:
        hook.remove()
    return ratios


@pytest.fixture(scope="module")
def corpus(synthetic_root):
    suite = load_suite("smoke")
    params = {"n_images": 320, "size": SIZE, "seed": 0}
    suite["pretrain"]["datasets"]["cxr"]["params"] = params
    suite["pretrain"].update(
        image_size=SIZE,
        batch_size=8,
        epochs=1,
        optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    )
    suite["pretrain"].pop("monitor", None)
    suite["methods"] = track_methods("2d")
    suite["method_params"] = {name: SMALL_HEADS[name] for name in REGISTRY if name in SMALL_HEADS}
    return suite, load_dataset("synthetic_cxr", synthetic_root, **params)


@pytest.mark.parametrize("name", track_methods("2d"))
def test_exported_encoder_batchnorm_matches_its_inputs(name, corpus, tmp_path):
    suite, dataset = corpus
    job = next(j for j in build_plan(suite).pretrain_jobs if j.method == name)
    trunk, meta = load_encoder(
        run_pretraining(job, dataset, tmp_path, RunOptions(progress=False), callbacks=[SettleBatchNorm()])
    )
    images = torch.from_numpy(dataset.images[dataset.indices("train")][:256])
    ratios = variance_ratios(trunk, Normalize(meta["mean"], meta["std"])(resize(images, meta["image_size"])))
    assert len(ratios) == 20  # every BatchNorm layer of ResNet-18 was seen
    worst = max(ratios, key=lambda k: max(ratios[k], 1 / ratios[k]))
    factor = max(ratios[worst], 1 / ratios[worst])
    assert factor < TOLERANCE, f"{name}: BatchNorm {worst} sees {ratios[worst]:.3g}x its running variance"
