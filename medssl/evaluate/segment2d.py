"""Segmentation evaluation of a pretrained encoder: a U-Net decoder on the ResNet trunk, trained on binary masks
(SIIM-ACR pneumothorax; the phantoms' pneumothorax masks on the embedded default).

* Protocols: ``linear`` freezes the encoder **in eval mode** (the frozen-encoder column of Table 1: only the decoder
  learns) and ``finetune`` trains encoder and decoder (Table 2). The decoder is ``medssl.nn.unet.UNetDecoder`` with
  skip connections and a conv3x3 head to one logit per pixel.
* Loss: BCE + soft Dice (the usual pneumothorax recipe; empty masks contribute through BCE).
* Metric: per-image Dice of the mask thresholded at 0.5, with the SIIM-ACR rule that an empty prediction on an empty
  mask scores 1, averaged over images (``mean_dice``); also the mean over images with a pneumothorax only
  (``dice_positive``, MONAI's ``ignore_empty=True``), the pooled Dice over all pixels of the test set (``dice_global``)
  and the share of empty masks with a false-positive prediction (``false_positive_rate_empty``), as
  ../shared/specs/stats.md section 3 recommends stating the convention. Per-image values are returned for paired tests.
* Model selection: the epoch with the best validation ``mean_dice``; the test split is scored once, with it.
* Training: AdamW, cosine schedule, ``epochs`` but at least ``min_steps`` steps (as fine-tuning), horizontal flip of
  image and mask together as the only augmentation (the mask must stay aligned).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medssl.data.stream import MappedImages, batches_per_epoch, training_batches
from medssl.evaluate.classify import FiniteLoss, epochs_for, is_validation_epoch
from medssl.evaluate.inputs import EvalData, EvalRun
from medssl.nn.augment import Normalize, resize
from medssl.nn.backbone import ResNetTrunk
from medssl.nn.unet import UNetDecoder
from medssl.runtime.precision import autocast, fixed_precision


def per_image_dice(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice per image of binary masks (N x H x W); 1 where both are empty (SIIM-ACR rule)."""
    predicted = predicted.reshape(len(predicted), -1).astype(bool)
    truth = truth.reshape(len(truth), -1).astype(bool)
    overlap = (predicted & truth).sum(1)
    total = predicted.sum(1) + truth.sum(1)
    return np.where(total == 0, 1.0, 2.0 * overlap / np.maximum(total, 1))


def segmentation_metrics(probabilities: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> Dict[str, Any]:
    dice = per_image_dice(probabilities >= threshold, truth > 0)
    positive = truth.reshape(len(truth), -1).any(1)
    predicted = (probabilities >= threshold).reshape(len(truth), -1)
    flat_truth = truth.reshape(len(truth), -1) > 0
    pooled = predicted.sum() + flat_truth.sum()
    return {
        "mean_dice": float(dice.mean()),
        "dice_positive": float(dice[positive].mean()) if positive.any() else float("nan"),
        "n_positive": int(positive.sum()),
        "dice_global": float(2 * (predicted & flat_truth).sum() / pooled) if pooled else 1.0,
        "false_positive_rate_empty": float(predicted[~positive].any(1).mean()) if (~positive).any() else float("nan"),
        "per_image_dice": dice,
    }


class SegmentationModel(nn.Module):
    def __init__(self, encoder: ResNetTrunk, mean, std, image_size: int, freeze_encoder: bool):
        super().__init__()
        self.encoder = encoder
        self.decoder = UNetDecoder(encoder.stage_channels, skips=True)
        self.head = nn.Conv2d(self.decoder.channels[-1], 1, 3, padding=1)
        self.normalize = Normalize(mean, std)
        self.image_size = int(image_size)
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # frozen means frozen BatchNorm statistics too
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(resize(images, self.image_size))
        logits = self.head(self.decoder(self.encoder.stages(x))[-1])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    probabilities = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    overlap = (probabilities * target).sum(1)
    return (1 - (2 * overlap + eps) / (probabilities.sum(1) + target.sum(1) + eps)).mean()


def mask_targets(masks, indices: np.ndarray, size: int) -> torch.Tensor:
    """0/1 masks of the given images (an array or ``MappedImages``) at the training resolution (nearest neighbour
    keeps them binary)."""
    batch = MappedImages.of(masks)[indices].float()[:, None]
    return F.interpolate(batch, size=(size, size), mode="nearest")[:, 0]


@torch.no_grad()
def predict_masks(
    model: SegmentationModel, images: np.ndarray, indices: np.ndarray, device: str, batch_size: int = 64
) -> np.ndarray:
    model.eval()
    source = MappedImages.of(images)
    out = []
    for start in range(0, len(indices), batch_size):
        batch = source[indices[start : start + batch_size]].to(device)
        with autocast(device, fixed_precision(device)):
            out.append(torch.sigmoid(model(batch).float()).cpu())
    return torch.cat(out).numpy()


def train_segmentation(
    encoder: ResNetTrunk, meta: Dict[str, Any], data: EvalData, run: EvalRun, freeze_encoder: bool
) -> Dict[str, Any]:
    """Train the U-Net decoder (and the encoder unless ``freeze_encoder``) on ``data.train`` (masks:
    ``data.targets``) with AdamW, a cosine schedule and horizontal flips, selecting the epoch by validation mean
    Dice; returns the validation value, best epoch, epochs and the test metrics (per-image Dice included)."""
    settings, seed, device, image_size = run.settings, run.seed, run.device, data.image_size
    train_idx, val_idx, test_idx = data.train, data.val, data.test
    torch.manual_seed(seed)
    model = SegmentationModel(encoder, meta["mean"], meta["std"], image_size, freeze_encoder).to(device)
    batch_size = int(settings.get("batch_size", 32))
    epochs = epochs_for(len(train_idx), batch_size, settings)
    steps = epochs * batches_per_epoch(len(train_idx), batch_size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=float(settings["lr"]), weight_decay=float(settings.get("weight_decay", 1e-4))
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    )
    generator = torch.Generator().manual_seed(seed)
    source, masks = (
        MappedImages.of(data.images),
        MappedImages.of(data.targets),
    )  # one reader each for the whole training
    val_truth = mask_targets(masks, val_idx, image_size).numpy()
    best = (-math.inf, -1, None)
    finite = FiniteLoss("segmentation training")
    for epoch in range(epochs):
        model.train()
        for batch in training_batches(torch.randperm(len(train_idx), generator=generator), batch_size):
            idx = train_idx[batch.numpy()]
            x = source[idx].to(device)
            y = mask_targets(masks, idx, image_size).to(device)
            flip = torch.rand(len(idx), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None].to(device), x.flip(-1), x)
            y = torch.where(flip[:, None, None].to(device), y.flip(-1), y)
            with autocast(device, fixed_precision(device)):
                logits = model(x).float()
            loss = F.binary_cross_entropy_with_logits(logits, y) + soft_dice_loss(logits, y)
            finite.update(loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        finite.check(epoch)
        if is_validation_epoch(epoch, epochs, settings):
            value = segmentation_metrics(predict_masks(model, source, val_idx, device), val_truth)["mean_dice"]
            if value > best[0]:
                best = (value, epoch, copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}))
    model.load_state_dict(best[2])
    test = segmentation_metrics(
        predict_masks(model, source, test_idx, device), mask_targets(masks, test_idx, image_size).numpy()
    )
    return {"val_value": best[0], "best_epoch": best[1], "epochs": epochs, "test": test}
