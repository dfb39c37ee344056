"""Segmentation protocol: the SIIM Dice rule, frozen vs fine-tuned encoders, learning on phantom pneumothorax masks."""

import numpy as np
import torch

from datasets import load_dataset
from medssl.evaluate.inputs import EvalData, EvalRun
from medssl.evaluate.segment2d import per_image_dice, segmentation_metrics, train_segmentation
from medssl.nn.backbone import ResNetTrunk


def test_dice_follows_the_siim_rule():
    empty = np.zeros((2, 2), bool)
    half = np.array([[1, 1], [0, 0]], bool)
    full = np.ones((2, 2), bool)
    dice = per_image_dice(np.stack([empty, empty, half, full]), np.stack([empty, half, half, half]))
    assert dice.tolist() == [1.0, 0.0, 1.0, 2 * 2 / 6]
    metrics = segmentation_metrics(np.stack([empty, full]).astype(float), np.stack([empty, half]))
    assert (
        metrics["mean_dice"] == (1.0 + 2 / 3) / 2 and metrics["dice_positive"] == 2 / 3 and metrics["n_positive"] == 1
    )


def test_frozen_encoder_stays_fixed_and_finetuning_changes_it(synthetic_root):
    ds = load_dataset("synthetic_cxr", synthetic_root, n_images=64, size=32, seed=0)
    masks = np.asarray(ds.masks)
    train, val, test = ds.indices("train"), ds.indices("val"), ds.indices("test")
    settings = {"epochs": 1, "lr": 1e-3, "batch_size": 16}
    meta = {"mean": [0.5], "std": [0.25]}
    torch.manual_seed(0)
    encoder = ResNetTrunk()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    result = train_segmentation(
        encoder, meta, EvalData(ds.images, masks, train, val, test, 32), EvalRun(settings, 0), freeze_encoder=True
    )
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items()), (
        "weights and BN statistics must not move"
    )
    assert len(result["test"]["per_image_dice"]) == len(test) and 0 <= result["test"]["mean_dice"] <= 1
    tuned = ResNetTrunk()
    tuned.load_state_dict(before)
    train_segmentation(
        tuned, meta, EvalData(ds.images, masks, train, val, test, 32), EvalRun(settings, 0), freeze_encoder=False
    )
    assert not torch.equal(tuned.state_dict()["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"])


def test_decoder_learns_phantom_pneumothorax_masks(synthetic_root):
    ds = load_dataset("synthetic_cxr", synthetic_root, n_images=96, size=32, seed=0)
    masks = np.asarray(ds.masks)
    train = ds.indices("train")
    positives = train[masks[train].reshape(len(train), -1).any(1)]
    settings = {"epochs": 40, "lr": 3e-3, "batch_size": 16, "validations": 4}
    torch.manual_seed(0)
    result = train_segmentation(
        ResNetTrunk(),
        {"mean": [0.5], "std": [0.25]},
        EvalData(ds.images, masks, positives, positives, positives, 32),
        EvalRun(settings, 0),
        freeze_encoder=False,
    )
    # fitting the rims it was trained on: far above predicting nothing (Dice 0 on positive images)
    assert result["test"]["dice_positive"] > 0.5, result["test"]["dice_positive"]
