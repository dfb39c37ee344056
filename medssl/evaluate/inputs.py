"""What an evaluation that trains (fine-tuning, 2D segmentation) is given, as two small objects instead of a dozen
parameters: the data it reads and how it trains."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class EvalData:
    """The images of one task and the rows an evaluation uses.

    Args:
        images: the dataset's cached images (N, C, H, W) uint8, read batch by batch, never copied whole.
        targets: per-image multi-hot labels (N, classes) for classification, masks (N, H, W) for segmentation.
        train: rows trained on (a label fraction's subset of the training split).
        val: rows the epoch (or checkpoint) is selected on.
        test: rows scored.
        image_size: the side the encoder sees (images are resized to it).
        class_names: names of the label columns (classification).
    """

    images: np.ndarray
    targets: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    image_size: int
    class_names: Sequence[str] = ()


@dataclasses.dataclass(frozen=True)
class EvalRun:
    """How an evaluation trains.

    Args:
        settings: the protocol's settings (the suite's ``evaluation.finetune`` or ``evaluation.segmentation``).
        seed: the evaluation seed (head initialisation, batch order, augmentation).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        progress: a progress bar (fine-tuning).
        precision: ``auto``, ``32`` or ``bf16`` (``medssl.runtime.precision``; fine-tuning).
        log_dir: where a Lightning logger writes (fine-tuning), with ``logger`` csv or tensorboard.
    """

    settings: Dict[str, Any]
    seed: int
    device: str = "cpu"
    progress: bool = False
    precision: str = "auto"
    log_dir: Optional[Path] = None
    logger: Optional[str] = None
