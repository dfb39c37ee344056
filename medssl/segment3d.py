"""Organ segmentation on CT volumes for the 3D track (vox2vec's evaluation, ../shared/specs/vox2vec3d.md), with MONAI.

* Targets: the 13 organs of BTCV (datasets/volumes.py) as 13 one-hot sigmoid channels, no background channel.
* Loss (nn/functional/segmentation.py of the official code): BCE over the body voxels plus the mean over (patch,
  class) of 1 - 2 sum(p g) / (sum(p^2) + sum(g^2) + 1), predictions and targets zeroed outside the body = MONAI's
  ``DiceLoss(sigmoid=False, squared_pred=True, smooth_nr=0, smooth_dr=1)`` on the body-masked sigmoid (tested
  against the formula).
* Inference: MONAI's ``sliding_window_inference`` over the whole volume with the training patch, overlap 0.5 (the
  official windows overlap by half a patch too). Deviation: the official code lets each window write only its
  centre; MONAI averages the overlapping windows (``mode="constant"``). Probabilities are multiplied by the body mask.
* Dice per CT and class at p >= 0.5 with the official convention that an organ absent from the ground truth scores 1
  if nothing is predicted and 0 otherwise = MONAI's ``DiceMetric(include_background=True, ignore_empty=False)``;
  the official formula adds 1e-5 to numerator and denominator, a difference below 1e-5 / (|P| + |G|) (tested).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

NUM_ORGANS = 13


def one_hot_organs(labels: torch.Tensor, num_classes: int = NUM_ORGANS) -> torch.Tensor:
    """(N x X x Y x Z) integer labels 0..num_classes -> (N x num_classes x X x Y x Z) float targets, no background."""
    return F.one_hot(labels.long(), num_classes + 1)[..., 1:].movedim(-1, 1).float()


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
    """The official loss (module docstring): ``logits``/``targets`` N x C x X x Y x Z, ``body`` N x 1 x X x Y x Z."""
    from monai.losses import DiceLoss

    body = body.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    bce = (bce * body).sum() / (body.sum() * logits.shape[1]).clamp(min=1)
    dice = DiceLoss(sigmoid=False, squared_pred=True, smooth_nr=0.0, smooth_dr=1.0, reduction="mean")
    return bce + dice(torch.sigmoid(logits) * body, targets * body)


def dice_scores(probabilities: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """Dice of each class (C) of one volume: ``probabilities`` C x X x Y x Z, ``labels`` X x Y x Z (0..C); an organ
    absent from ``labels`` scores 1 when nothing of it is predicted, 0 otherwise."""
    from monai.metrics import DiceMetric

    predicted = (probabilities >= threshold).float()[None]
    truth = one_hot_organs(labels[None], probabilities.shape[0])
    metric = DiceMetric(include_background=True, ignore_empty=False, reduction="none")
    return metric(predicted, truth)[0].cpu().numpy()


def predict_volume(predictor: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor, patch_size: Sequence[int], body: torch.Tensor, batch_size: int = 2,
                   device: str = "cpu") -> torch.Tensor:
    """Sigmoid probabilities (C x X x Y x Z, on the CPU) of a whole windowed volume (1 x X x Y x Z in [0, 1]) by
    MONAI's sliding window; ``predictor`` maps a batch of patches to logits; zero outside ``body``."""
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        logits = sliding_window_inference(volume[None], roi_size=tuple(int(p) for p in patch_size), sw_batch_size=batch_size, predictor=predictor,
                                          overlap=0.5, mode="constant", sw_device=device, device="cpu")
    return torch.sigmoid(logits[0]) * body.float()
