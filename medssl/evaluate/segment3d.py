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
from torch import nn

from medssl.evaluate.classify import FiniteLoss
from methods.vox2vec3d import FPNLinearHead, FPNNonLinearHead, body_mask, sample_box

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


def predict_volume(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    volume: torch.Tensor,
    patch_size: Sequence[int],
    body: torch.Tensor,
    batch_size: int = 2,
    device: str = "cpu",
    overlap: float = 0.5,
) -> torch.Tensor:
    """Sigmoid probabilities (C x X x Y x Z, on the CPU) of a whole windowed volume (1 x X x Y x Z in [0, 1]) by
    MONAI's sliding window (``batch_size`` windows at a time, neighbours overlapping by ``overlap``, official 0.5);
    ``predictor`` maps a batch of patches to logits; zero outside ``body``."""
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        logits = sliding_window_inference(
            volume[None],
            roi_size=tuple(int(p) for p in patch_size),
            sw_batch_size=batch_size,
            predictor=predictor,
            overlap=overlap,
            mode="constant",
            sw_device=device,
            device="cpu",
        )
    return torch.sigmoid(logits[0]) * body.float()


# ----- training a segmentation head (and the FPN) on CT patches ------------------------------------------------------
def window(volume_hu, low: float = -1350.0, high: float = 1000.0) -> torch.Tensor:
    """HU -> [0, 1] with the official evaluation window (MONAI's ``ScaleIntensityRange``, clipped): 1 x X x Y x Z."""
    from monai.transforms import ScaleIntensityRange

    x = torch.as_tensor(np.asarray(volume_hu, dtype=np.float32))[None]
    return torch.as_tensor(
        ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)(x), dtype=torch.float32
    )


def sample_patch_start(
    labels: np.ndarray, patch: Sequence[int], rng: np.random.Generator, class_share: float = 0.5
) -> np.ndarray:
    """A training patch's corner (official eval sampling): with probability ``class_share`` the patch contains a
    voxel of one organ present in the CT (organ and voxel at random), else it lies anywhere in the volume."""

    present = [k for k in np.unique(labels) if k > 0]
    if present and rng.uniform() < class_share:
        where = np.argwhere(labels == present[int(rng.integers(len(present)))])
        return sample_box(labels.shape, patch, where[int(rng.integers(len(where)))], rng)
    return np.array([rng.integers(0, s - p + 1) for s, p in zip(labels.shape, patch)])


def mean_dice(
    model_fn,
    volumes,
    labels,
    bodies,
    patch: Sequence[int],
    annotated: Sequence[int],
    device: str = "cpu",
    heads: int = 1,
    overlap: float = 0.5,
    batch_size: int = 2,
) -> np.ndarray:
    """Per CT and organ (n x 13) Dice of ``model_fn``'s sliding-window prediction; organs the dataset does not
    annotate are NaN. With ``heads`` > 1, ``model_fn`` returns the logits of that many heads side by side (13
    channels each, one encoder pass for all of them) and the result is n x heads x 13."""
    out = []
    for volume, label, body in zip(volumes, labels, bodies):
        probabilities = predict_volume(
            model_fn,
            window(volume),
            patch,
            torch.as_tensor(body)[None],
            batch_size=batch_size,
            device=device,
            overlap=overlap,
        )
        truth = torch.from_numpy(np.array(label))
        scores = np.stack([dice_scores(part, truth) for part in probabilities.split(NUM_ORGANS)])
        scores[:, [k - 1 for k in range(1, NUM_ORGANS + 1) if k not in annotated]] = np.nan
        out.append(scores if heads > 1 else scores[0])
    return np.array(out)


class CTPatches:
    """The CTs of one evaluation as its training reads them: windowed volume, body mask and labels as tensors, made
    once per CT (labels copied out of the read-only cache), and the patches of one step."""

    def __init__(self, volumes, labels, patch: Sequence[int]):
        self.volumes, self.labels, self.patch = volumes, labels, tuple(patch)
        self.made: dict = {}

    def __getitem__(self, i: int):
        if i not in self.made:
            self.made[i] = (
                window(self.volumes[i]),
                torch.as_tensor(body_mask(np.asarray(self.volumes[i])))[None],
                torch.from_numpy(np.array(self.labels[i])),
            )
        return self.made[i]

    def step(self, train_idx, per_step: int, rng: np.random.Generator, device: str):
        """(images, one-hot targets, body masks) of ``per_step`` patches from one random training CT."""
        image, body, organ = self[int(train_idx[int(rng.integers(len(train_idx)))])]
        starts = [sample_patch_start(organ.numpy(), self.patch, rng) for _ in range(per_step)]
        p = self.patch
        crop = lambda t, s: t[..., s[0] : s[0] + p[0], s[1] : s[1] + p[1], s[2] : s[2] + p[2]]
        x = torch.stack([crop(image, s) for s in starts]).to(device)
        y = one_hot_organs(torch.stack([crop(organ, s) for s in starts])).to(device)
        b = torch.stack([crop(body, s) for s in starts]).to(device)
        return x, y, b


def train_fpn_segmentation(
    encoder,
    mode: str,
    volumes,
    labels,
    annotated: Sequence[int],
    train_idx,
    val_idx,
    test_idx,
    settings,
    seed: int,
    device: str = "cpu",
):
    """Train segmentation heads on a FPN3d ``encoder`` and score them; returns ``{head: result}``.

    ``mode``: ``probe`` (the official probing: the encoder frozen in eval mode, so BatchNorm keeps its pretraining
    statistics; the linear and the non-linear head trained together by one Adam; the epoch chosen on the non-linear
    head's validation Dice and both heads tested at it), ``finetune`` (linear head and encoder; the encoder frozen for
    ``freeze_epochs``, then trained with its learning rate rising linearly from a tenth of ``lr`` to ``lr`` over
    ``warmup_epochs``: what the official ``BackboneFinetuning(unfreeze_backbone_at_epoch=50)`` intends; the official
    callback as run instead trains BatchNorm before epoch 50 and the whole model at lr / 5 from epoch 51) or
    ``scratch`` (a fresh encoder given as ``encoder``, trained with its linear head from the start). Per step
    ``patches_per_step`` patches of ``patch_size`` from one random training CT (:func:`sample_patch_start`); Adam at
    ``lr`` (official 3e-4, constant); validation Dice ``validations`` times. Validation and test CTs are predicted
    whole by MONAI's sliding window, windows overlapping by ``inference_overlap`` (official 0.5), ``inference_batch``
    windows at a time; at test the heads of a probe share one encoder pass per window (the same numbers as separate
    passes, tested).
    Result per head: ``val_value``, ``best_epoch``, ``epochs``, ``dice`` (test CTs x 13, NaN for organs the dataset
    does not annotate) and ``mean_dice`` (organs averaged within each CT, then CTs)."""

    if mode not in ("probe", "finetune", "scratch"):
        raise ValueError(f"mode must be probe, finetune or scratch, got {mode!r}")
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 21])
    training = FPNTraining(encoder.to(device), mode, settings, device)
    cts = CTPatches(volumes, labels, settings["patch_size"])
    score = lambda model_fn, idx, heads=1: training.dice(model_fn, cts, idx, annotated, heads)
    epochs = int(settings["epochs"])
    every = max(1, epochs // max(1, int(settings.get("validations", 5))))
    selector = "nonlinear" if mode == "probe" else "linear"
    best = (-np.inf, -1, None)
    for epoch in range(epochs):
        training.train_epoch(epoch, cts, train_idx, rng)
        if (epoch + 1) % every == 0 or epoch == epochs - 1:
            training.eval()
            val = np.nanmean(
                np.nanmean(score(lambda x: training.heads[selector](training.encoder(x)), val_idx), axis=1)
            )
            if val > best[0]:
                best = (float(val), epoch, training.snapshot())
    training.restore(best[2])
    training.eval()
    tested = score(training.all_heads, test_idx, len(training.heads))
    results = {}
    for position, name in enumerate(training.heads):
        dice = tested[:, position] if len(training.heads) > 1 else tested
        results[name] = {
            "val_value": best[0],
            "best_epoch": best[1],
            "epochs": epochs,
            "dice": dice,
            "mean_dice": float(np.nanmean(np.nanmean(dice, axis=1))),
        }
    return results


class FPNTraining:
    """The heads on a FPN3d encoder, their optimiser and the schedule of one ``mode`` (see
    :func:`train_fpn_segmentation`)."""

    def __init__(self, encoder, mode: str, settings, device: str):
        self.encoder, self.mode, self.device = encoder, mode, device
        self.patch = tuple(int(p) for p in settings["patch_size"])
        self.steps, self.per_step = int(settings["steps_per_epoch"]), int(settings.get("patches_per_step", 7))
        self.lr = float(settings.get("lr", 3e-4))
        self.freeze, self.warmup = int(settings.get("freeze_epochs", 0)), max(1, int(settings.get("warmup_epochs", 1)))
        self.inference = {
            "overlap": float(settings.get("inference_overlap", 0.5)),
            "batch_size": int(settings.get("inference_batch", 2)),
        }
        heads = nn.ModuleDict({"linear": FPNLinearHead(encoder.level_channels, NUM_ORGANS)})
        if mode == "probe":
            heads["nonlinear"] = FPNNonLinearHead(encoder.level_channels, NUM_ORGANS)
        self.heads = heads.to(device)
        self.trains_encoder = mode != "probe"
        groups = [{"params": list(self.heads.parameters()), "lr": self.lr}] + (
            [{"params": list(encoder.parameters()), "lr": self.lr}] if self.trains_encoder else []
        )
        self.optimizer = torch.optim.Adam(groups)
        self.finite = FiniteLoss(f"CT segmentation ({mode})")

    def train_epoch(self, epoch: int, cts: CTPatches, train_idx, rng: np.random.Generator) -> None:
        encoder_trains = self.trains_encoder and (self.mode == "scratch" or epoch >= self.freeze)
        if self.mode == "finetune":
            self.optimizer.param_groups[1]["lr"] = (
                self.lr * min(1.0, 0.1 + 0.9 * (epoch - self.freeze) / self.warmup) if encoder_trains else 0.0
            )
        self.encoder.train(encoder_trains)
        self.encoder.requires_grad_(encoder_trains)
        self.heads.train()
        for _ in range(self.steps):
            x, y, b = cts.step(train_idx, self.per_step, rng, self.device)
            with torch.set_grad_enabled(encoder_trains):
                levels = self.encoder(x)
            loss = sum(segmentation_loss(head(levels), y, b) for head in self.heads.values())
            self.finite.update(loss)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.finite.check(epoch)

    def eval(self) -> None:
        self.encoder.eval(), self.heads.eval()

    def all_heads(self, x: torch.Tensor) -> torch.Tensor:
        levels = self.encoder(x)
        return torch.cat([head(levels) for head in self.heads.values()], dim=1)

    def dice(self, model_fn, cts: CTPatches, idx, annotated: Sequence[int], heads: int = 1) -> np.ndarray:
        """:func:`mean_dice` of ``model_fn`` on the CTs ``idx``."""
        return mean_dice(
            model_fn,
            [cts.volumes[i] for i in idx],
            [cts.labels[i] for i in idx],
            [cts[int(i)][1][0].numpy() for i in idx],
            self.patch,
            annotated,
            self.device,
            heads=heads,
            **self.inference,
        )

    def snapshot(self) -> dict:
        return {
            "heads": {k: v.detach().cpu().clone() for k, v in self.heads.state_dict().items()},
            "encoder": {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()},
        }

    def restore(self, state: dict) -> None:
        self.heads.load_state_dict(state["heads"])
        self.encoder.load_state_dict(state["encoder"])
