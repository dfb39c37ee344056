"""ResNet-50 trunks (the paper's backbone): every decoder method builds and steps on one, and a segmentation suite
runs on it end to end."""

import json

import pytest
import torch
import yaml
from conftest import ROOT

from run_benchmark import main


@pytest.mark.parametrize("method", ["pcrlv2", "dira", "mlvicx", "vox2vec2d", "coboom"])
def test_decoder_methods_build_on_resnet50(method):
    from methods import build_method
    from methods.base import PretrainProtocol

    protocol = PretrainProtocol(
        backbone="resnet50",
        image_size=32,
        epochs=1,
        steps_per_epoch=1,
        optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
    )
    params = {
        "pcrlv2": {"n_local_views": 1},
        "mlvicx": {"hidden_dim": 32, "output_dim": 32, "dense_channels": 8},
        "coboom": {"hidden_dim": 32, "output_dim": 32, "codebook_size": 8},
        "dira": {"hidden_dim": 32, "output_dim": 16, "queue_size": 16},
        "vox2vec2d": {"hidden_dim": 32, "output_dim": 16, "points_per_image": 4},
    }[method]
    model = build_method(method, protocol, params)
    images = (torch.rand(4, 1, 40, 40) * 255).to(torch.uint8)
    loss = model.compute_loss(model.make_views(images), images)["loss"]
    assert torch.isfinite(loss)


def test_resnet50_segmentation_on_a_tiny_suite(tmp_path, synthetic_root):
    out = tmp_path / "out"
    suite = yaml.safe_load((ROOT / "benchmarks" / "suites" / "smoke.yaml").read_text())
    data = {"name": "synthetic_cxr", "params": {"n_images": 48, "size": 32, "seed": 0}}
    suite.update(
        name="tiny50",
        methods=["supervised"],
        method_params={},
        tasks=[
            {
                "name": "PTX",
                "type": "segmentation",
                "dataset": data,
                "pretrain": "cxr",
                "protocols": ["linear", "finetune"],
                "fractions": [100],
            }
        ],
    )
    suite["pretrain"].update(backbone="resnet50", datasets={"cxr": {**data, "splits": ["train", "val"]}})
    suite["evaluation"].update(seeds=[0], segmentation={"epochs": 1, "lr": 1e-3, "batch_size": 8})
    (tmp_path / "tiny50.yaml").write_text(yaml.safe_dump(suite))
    assert (
        main(
            [
                "--suite",
                str(tmp_path / "tiny50.yaml"),
                "--data-root",
                str(synthetic_root),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    found = [json.loads(line) for line in (out / "tiny50" / "records.jsonl").read_text().splitlines()]
    assert {r["protocol"] for r in found} == {"linear", "finetune"} and all(
        r["metric"] == "mean_dice" and 0 <= r["value"] <= 1 for r in found
    )
    assert all(r["pretrain_config"]["protocol"]["backbone"] == "resnet50" for r in found)
