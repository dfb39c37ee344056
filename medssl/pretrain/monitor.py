"""Learning-signal monitor for pretraining: a linear probe of the encoder every few epochs.

Like solo-learn's online linear evaluation, but exact and side-effect free: every ``every_epochs`` epochs (and after
the last one) the online encoder is frozen in eval mode, features of the corpus's labelled images are extracted,
an L2 logistic regression (``medssl.evaluate.classify.linear_probe``) is fitted on a fixed ``fraction`` % of the corpus's
training split and scored on its validation split. The macro AUC goes to ``history.jsonl`` as ``probe_auc``, next
to the loss, so a run shows when its representation starts to beat (or falls below) the random encoder of epoch 0.
With it goes ``feature_rank``, the effective rank (centred RankMe, ``medssl.evaluate.metrics.effective_rank``) of the same
validation features: it shows dimensional collapse, the usual reason a short non-contrastive run (BYOL, CoBooM)
probes below its own initialisation.

It is a diagnostic: nothing is selected on it, the random number generators are forked around it and the
encoder's train/eval mode is restored, so a run with and without the monitor trains the same weights (tested).
That is why the monitor settings are not part of the pretraining hash.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch

from datasets import ImageDataset
from medssl.data.splits import label_fraction_indices
from medssl.evaluate.classify import extract_features, linear_probe
from medssl.evaluate.metrics import effective_rank, multilabel_auc
from medssl.suite.protocol import MONITOR_DEFAULTS


class ProbeMonitor:
    """Called by ``medssl.pretrain.callbacks.EpochHistory``, which writes its results into the epoch rows."""

    def __init__(self, dataset: ImageDataset, image_size: int, mean, std, settings: Optional[Dict[str, Any]] = None):
        self.settings = {**MONITOR_DEFAULTS, **(settings or {})}
        self.dataset, self.image_size, self.mean, self.std = dataset, int(image_size), mean, std
        labels = np.asarray(dataset.labels)
        train = dataset.indices("train")
        fraction = float(self.settings["fraction"])
        self.train_idx = label_fraction_indices(
            train, labels, dataset.patient_ids, [fraction], int(self.settings["seed"])
        )[fraction]
        self.val_idx = dataset.indices("val")

    def probe(self, encoder: torch.nn.Module, device: str) -> Dict[str, float]:
        """``probe_auc`` (validation macro AUC of the probe) and ``feature_rank`` (effective rank of the validation
        features) of ``encoder``; leaves RNG state and the encoder's mode as they were."""
        was_training = encoder.training
        rows = np.union1d(self.train_idx, self.val_idx)
        labels = np.asarray(self.dataset.labels)[rows]
        train, val = np.searchsorted(rows, self.train_idx), np.searchsorted(rows, self.val_idx)
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.startswith("cuda") else []):
            features = extract_features(
                encoder, self.dataset.images[rows], self.image_size, self.mean, self.std, device=device
            )
            encoder.train(was_training)
            if not np.isfinite(features).all():
                # a diagnostic must not stop the run: the evaluations refuse these features, saying why
                return {"probe_auc": None, "feature_rank": None, "probe_error": "non-finite features"}
            result = linear_probe(
                features,
                labels,
                train,
                val,
                val,
                self.dataset.class_names,
                {"solver": "lbfgs", "l2": self.settings["l2"]},
                seed=int(self.settings["seed"]),
            )
        auc = multilabel_auc(labels[val], result["test_scores"], self.dataset.class_names)["macro_auc"]
        return {"probe_auc": round(auc, 6), "feature_rank": round(effective_rank(features[val]), 3)}

    def due(self, epoch: int, last_epoch: int) -> bool:
        return (epoch + 1) % int(self.settings["every_epochs"]) == 0 or epoch == last_epoch
