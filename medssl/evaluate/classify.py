"""Downstream evaluation of a pretrained encoder: linear probing and fine-tuning for multi-label classification.

Both protocols train on a nested label fraction of the task's training split (medssl.data.splits), select the epoch
with the best **validation** macro AUC and report the test split at that epoch; the test split is never used for
any choice (spec, "Decisions").

* Linear probing: the encoder is frozen **in eval mode** (BatchNorm uses its running statistics; the official
  CoBooM/MLVICX notebooks probe in train mode, which lets BN statistics drift). Features of all images are
  extracted once per (encoder, task) and cached; a linear layer is trained on standardised features with BCE.
* Fine-tuning: encoder + linear layer trained end to end with AdamW, light crop/flip/intensity augmentation,
  cosine schedule, pytorch-lightning loop.

Both protocols train for ``epochs`` epochs but at least ``min_steps`` optimiser steps, so the smallest label
fractions are not under-trained for lack of batches, and validate ``validations`` times per run (default 10).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from medssl import quiet_lightning
from medssl.data.stream import MappedImages, ShuffledBatches, batches_per_epoch, training_batches
from medssl.evaluate.inputs import EvalData, EvalRun
from medssl.evaluate.metrics import multilabel_auc
from medssl.nn.augment import AugmentConfig, Normalize, augment_view, resize
from medssl.nn.backbone import ResNetTrunk
from medssl.runtime.precision import autocast, fixed_precision, precision_for
from medssl.runtime.progress import SparseMetricsProgressBar, lightning_logger
from medssl.runtime.trainer import TrainerOptions, make_trainer


class EvaluationDiverged(RuntimeError):
    """An evaluation's training reached a non-finite loss: its result would be noise (Dice 0, AUC 0.5), so it is
    reported and not stored, as a diverged pretraining is (medssl/run/image.py)."""


def check_finite_features(features: np.ndarray) -> None:
    """Raise :class:`EvaluationDiverged` when an encoder's features are not all finite: a probe or kNN on them would
    fail inside L-BFGS ("value cannot be converted to type float without overflow") or score noise."""
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        raise EvaluationDiverged(
            f"the encoder's features are not finite for {int((~finite).sum())} of {len(features)} images: its weights have diverged; pretrain it again with a lower lr or --precision 32"
        )


class FiniteLoss:
    """Whether every loss of an evaluation's training was finite, kept on the device (no host sync per step) and
    checked once per epoch: :meth:`check` raises :class:`EvaluationDiverged`."""

    def __init__(self, what: str):
        self.what, self.finite = what, None

    def update(self, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        self.finite = finite if self.finite is None else self.finite & finite

    def check(self, epoch: int) -> None:
        if self.finite is not None and not bool(self.finite):
            raise EvaluationDiverged(
                f"{self.what} reached a non-finite loss by epoch {epoch}; lower its lr (evaluation settings) or use --precision 32"
            )


def epochs_for(n_train: int, batch_size: int, settings: Dict[str, Any]) -> int:
    steps_per_epoch = batches_per_epoch(n_train, batch_size)
    return max(int(settings["epochs"]), math.ceil(int(settings.get("min_steps", 0)) / steps_per_epoch))


def is_validation_epoch(epoch: int, epochs: int, settings: Dict[str, Any]) -> bool:
    """Validate ``validations`` times per run (default 10), evenly spaced, and always after the last epoch."""
    every = max(1, epochs // max(1, int(settings.get("validations", 10))))
    return (epoch + 1) % every == 0 or epoch == epochs - 1


@torch.no_grad()
def extract_features(
    encoder: ResNetTrunk, images: np.ndarray, image_size: int, mean, std, device: str = "cpu", batch_size: int = 256
) -> np.ndarray:
    encoder = encoder.to(device).eval()
    normalize = Normalize(mean, std).to(device)
    source = MappedImages.of(images)
    chunks = []
    for start in range(0, len(source), batch_size):
        batch = source[start : start + batch_size].to(device)
        with autocast(device, fixed_precision(device)):
            chunks.append(encoder(normalize(resize(batch, image_size))).float().cpu())
    return torch.cat(chunks).numpy()


def _predict(model: nn.Module, inputs, batch_size: int = 512) -> np.ndarray:
    """Sigmoid scores of ``inputs`` (a tensor, or images read batch by batch: ``MappedImages``) on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        return (
            torch.cat(
                [
                    torch.sigmoid(model(inputs[i : i + batch_size].to(device)).float())
                    for i in range(0, len(inputs), batch_size)
                ]
            )
            .cpu()
            .numpy()
        )


def linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    test_idx: np.ndarray,
    class_names,
    settings: Dict[str, Any],
    seed: int,
) -> Dict[str, Any]:
    """Fit a linear classifier on frozen, standardised features and score the test split.

    ``solver: lbfgs`` (default): L2-regularised logistic regression fitted exactly (full batch, L-BFGS) for each
    strength in ``l2`` and the strength with the best validation macro AUC is kept (the linear-evaluation protocol
    of Kornblith et al., CVPR 2019, also used by SimCLR and BYOL). Tuning the regularisation on validation matters
    at small label fractions: a fixed setting favours whichever encoder happens to suit it.
    ``solver: adamw``: mini-batch AdamW for ``epochs`` epochs, the epoch chosen by validation macro AUC (the
    official CoBooM notebooks' style of probe).
    """
    check_finite_features(features)
    torch.manual_seed(seed)
    x_train = torch.from_numpy(features[train_idx]).float()
    mu, sd = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    standardize = lambda idx: (torch.from_numpy(features[idx]).float() - mu) / sd
    x_train, x_val, x_test = standardize(train_idx), standardize(val_idx), standardize(test_idx)
    y_train = torch.from_numpy(labels[train_idx]).float()
    solver = settings.get("solver", "lbfgs")
    if solver == "lbfgs":
        return _lbfgs_probe(
            x_train,
            y_train,
            x_val,
            labels[val_idx],
            x_test,
            class_names,
            [float(v) for v in settings.get("l2", DEFAULT_L2_GRID)],
        )
    if solver != "adamw":
        raise ValueError(f"unknown linear-probe solver {solver!r}; choose lbfgs or adamw")
    head = nn.Linear(features.shape[1], labels.shape[1])
    batch_size = int(settings.get("batch_size", 256))
    epochs = epochs_for(len(train_idx), batch_size, settings)
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=float(settings["lr"]), weight_decay=float(settings.get("weight_decay", 0.0))
    )
    generator = torch.Generator().manual_seed(seed)
    best = (-math.inf, -1, None)
    for epoch in range(epochs):
        head.train()
        for batch in training_batches(torch.randperm(len(x_train), generator=generator), batch_size):
            loss = F.binary_cross_entropy_with_logits(head(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if is_validation_epoch(epoch, epochs, settings):
            val_auc = multilabel_auc(labels[val_idx], _predict(head, x_val), class_names)["macro_auc"]
            if val_auc > best[0]:
                best = (val_auc, epoch, copy.deepcopy(head.state_dict()))
    head.load_state_dict(best[2])
    return {"val_value": best[0], "best_epoch": best[1], "epochs": epochs, "test_scores": _predict(head, x_test)}


DEFAULT_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def knn_classify(
    features: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    test_idx: np.ndarray,
    class_names,
    settings: Dict[str, Any],
    chunk: int = 1024,
) -> Dict[str, Any]:
    """Weighted cosine kNN on frozen features, the evaluation of lightly's ``knn_predict`` and solo-learn's
    ``WeightedKNNClassifier`` (Wu et al., CVPR 2018): features L2-normalised, the ``k`` most similar training images
    vote with weight exp(cosine / ``temperature``). Multi-label: a class's score is the weighted share of neighbours
    that have it (both references sum the weighted one-hot votes without dividing, which ranks the classes of one
    image the same but makes scores of different images incomparable, as AUC needs them). Nothing is tuned, so the
    validation AUC is reported only; the label subset (and so the seed) decides the neighbours."""
    check_finite_features(features)
    k = min(int(settings["k"]), len(train_idx))
    temperature = float(settings["temperature"])
    bank = F.normalize(torch.from_numpy(features[train_idx]).float(), dim=1)
    bank_labels = torch.from_numpy(labels[train_idx]).float()

    def scores(idx: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(idx), chunk):
            query = F.normalize(torch.from_numpy(features[idx[start : start + chunk]]).float(), dim=1)
            similarity, neighbour = (query @ bank.t()).topk(k, dim=1)
            # shifted by each query's best similarity (topk's first): the same shares, without exp overflowing
            # to inf (and the scores to NaN) for temperatures below about 0.011
            weight = ((similarity - similarity[:, :1]) / temperature).exp()
            out.append((weight[:, :, None] * bank_labels[neighbour]).sum(1) / weight.sum(1, keepdim=True))
        return torch.cat(out).numpy()

    val_auc = multilabel_auc(labels[val_idx], scores(val_idx), class_names)["macro_auc"]
    return {"val_value": val_auc, "best_epoch": None, "epochs": None, "test_scores": scores(test_idx)}


def _lbfgs_probe(x_train, y_train, x_val, val_labels, x_test, class_names, l2_grid) -> Dict[str, Any]:
    """Per class: logistic regression, mean BCE over images + l2/2 * ||w||^2 (bias not penalised; classes share
    nothing, so one fit solves all), for each strength from strongest to
    weakest, each fit warm-started from the previous one; the strength with the best validation AUC is kept."""
    head = nn.Linear(x_train.shape[1], y_train.shape[1])
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    best = (-math.inf, None, None)
    for l2 in sorted(l2_grid, reverse=True):
        optimizer = torch.optim.LBFGS(
            head.parameters(),
            lr=1.0,
            max_iter=500,
            tolerance_grad=1e-6,
            tolerance_change=1e-9,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure():
            optimizer.zero_grad()
            loss = (
                F.binary_cross_entropy_with_logits(head(x_train), y_train, reduction="sum") / len(x_train)
                + 0.5 * l2 * head.weight.pow(2).sum()
            )
            loss.backward()
            return loss

        optimizer.step(closure)
        val_auc = multilabel_auc(val_labels, _predict(head, x_val), class_names)["macro_auc"]
        if val_auc > best[0]:
            best = (val_auc, l2, copy.deepcopy(head.state_dict()))
    head.load_state_dict(best[2])
    return {
        "val_value": best[0],
        "best_epoch": None,
        "epochs": None,
        "selected_l2": best[1],
        "test_scores": _predict(head, x_test),
    }


class FineTuner(pl.LightningModule):
    """Encoder + linear head trained end to end; keeps the weights of the best validation epoch."""

    def __init__(
        self,
        encoder: ResNetTrunk,
        n_classes: int,
        meta: Dict[str, Any],
        image_size: int,
        settings: Dict[str, Any],
        val_images: torch.Tensor,
        val_labels: np.ndarray,
        class_names,
        total_steps: int,
    ):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, n_classes)
        self.normalize = Normalize(meta["mean"], meta["std"])
        self.image_size = int(image_size)
        self.settings = settings
        self.augment = AugmentConfig.from_dict(
            settings.get(
                "augment",
                {"crop_scale": (0.7, 1.0), "blur_p": 0.0, "intensity_p": 0.5, "brightness": 0.2, "contrast": 0.2},
            )
        )
        self.val_images, self.val_labels, self.class_names = val_images, val_labels, class_names
        self.total_steps = total_steps
        self.best_val, self.best_epoch, self.best_state = -math.inf, -1, None
        self.finite_loss = FiniteLoss("fine-tuning")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.normalize(resize(images, self.image_size))))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        x = self.normalize(augment_view(images, self.image_size, self.augment))
        loss = F.binary_cross_entropy_with_logits(self.head(self.encoder(x)).float(), labels.float())
        self.log("loss", loss.detach(), prog_bar=True, batch_size=len(images))
        self.finite_loss.update(loss)
        return loss

    def on_train_epoch_end(self) -> None:
        self.finite_loss.check(self.current_epoch)
        if not is_validation_epoch(self.current_epoch, self.trainer.max_epochs, self.settings):
            return
        scores = _predict(self, self.val_images)
        val_auc = multilabel_auc(self.val_labels, scores, self.class_names)["macro_auc"]
        self.log("val_auc", val_auc, prog_bar=True)
        if val_auc > self.best_val:
            self.best_val, self.best_epoch = val_auc, self.current_epoch
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}
        self.train()

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.parameters(),
            lr=float(self.settings["lr"]),
            weight_decay=float(self.settings.get("weight_decay", 1e-4)),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fine_tune(encoder: ResNetTrunk, meta: Dict[str, Any], data: EvalData, run: EvalRun) -> Dict[str, Any]:
    """Fine-tune ``encoder`` with a linear head on ``data.train`` (labels: ``data.targets``), selecting the epoch by
    validation macro AUC; returns the validation value, best epoch, epochs and test scores. ``run.logger`` (csv or
    tensorboard) keeps the run's logs under ``run.log_dir/logs`` (training loss per step, validation AUC)."""
    images, labels, device, settings, seed = data.images, data.targets, run.device, run.settings, run.seed
    quiet_lightning()
    pl.seed_everything(seed, workers=True, verbose=False)
    batch_size = int(settings.get("batch_size", 64))
    epochs = epochs_for(len(data.train), batch_size, settings)
    steps = epochs * batches_per_epoch(len(data.train), batch_size)
    cuda = device.startswith("cuda")
    loader = ShuffledBatches(
        MappedImages(images, data.train),
        batch_size,
        torch.Generator().manual_seed(seed),
        labels=labels[data.train],
        drop_last=False,
        pin=cuda,
        resident="auto" if cuda else False,
    )
    val_images = MappedImages(images, data.val)
    module = FineTuner(
        encoder, labels.shape[1], meta, data.image_size, settings, val_images, labels[data.val], data.class_names, steps
    )
    module.train()  # Lightning keeps the modes it is given; the encoder may arrive in eval mode from feature extraction
    if device.startswith("cuda"):
        module = module.to(memory_format=torch.channels_last)
    trainer = make_trainer(
        TrainerOptions(
            device=device,
            epochs=epochs,
            steps_per_epoch=steps // epochs,
            precision=precision_for(device, run.precision),
            progress=run.progress,
            logger=lightning_logger(run.logger, run.log_dir) if run.log_dir is not None else False,
            callbacks=[SparseMetricsProgressBar(leave=False)] if run.progress else [],
            checkpoints=False,
        )
    )
    trainer.fit(module, loader)
    module.load_state_dict(module.best_state)
    module = module.to(device)
    test_scores = _predict(module, MappedImages(images, data.test))
    return {"val_value": module.best_val, "best_epoch": module.best_epoch, "epochs": epochs, "test_scores": test_scores}
