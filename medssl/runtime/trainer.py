"""The one way a Lightning Trainer is built: pretraining (both tracks) and fine-tuning share these settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from datasets.storage import write_atomic
from medssl.runtime.precision import lightning_devices


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but the temporary file is in the checkpoint's own folder and renamed over it.
    Lightning's writes through an fsspec transaction whose temporary lives in ``$TMPDIR``: on another filesystem
    its commit is a copy over the old ``last.ckpt``, so a kill during it left a truncated resume point."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        write_atomic(Path(path), lambda tmp: torch.save(checkpoint, tmp))


@dataclasses.dataclass
class TrainerOptions:
    """What differs between the trainers of a run.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        epochs: epochs to train.
        steps_per_epoch: optimiser steps per epoch (sets how often Lightning logs: every step up to every 50).
        precision: a Lightning precision string (``32-true``, ``bf16-mixed``, ``16-mixed``).
        progress: show Lightning's progress bar.
        logger: a Lightning logger, or False for none.
        callbacks: Lightning callbacks, in order.
        devices: devices per node; with ``nodes`` the processes of a DDP run.
        nodes: machines of a multi-node run.
        strategy: a Lightning strategy (``auto`` or a configured DDP strategy).
        sync_batchnorm: synchronise BatchNorm statistics across processes (CUDA only).
        distributed_sampler: let Lightning shard the loader (off where the loader shards itself).
        checkpoints: write checkpoints, through :class:`AtomicCheckpointIO`.
        max_time_s: stop after this many seconds (the run then resumes from its last checkpoint).
    """

    device: str
    epochs: int
    steps_per_epoch: int
    precision: str
    progress: bool
    logger: Any = False
    callbacks: Sequence[pl.Callback] = ()
    devices: int = 1
    nodes: int = 1
    strategy: Any = "auto"
    sync_batchnorm: bool = False
    distributed_sampler: bool = True
    checkpoints: bool = True
    max_time_s: Optional[float] = None


def make_trainer(options: TrainerOptions) -> pl.Trainer:
    """A Trainer with the project's fixed choices: no sanity validation, no model summary, logs every
    ``min(50, steps_per_epoch)`` steps, checkpoints written atomically."""
    return pl.Trainer(
        max_epochs=options.epochs,
        accelerator="gpu" if options.device.startswith("cuda") else "cpu",
        devices=lightning_devices(options.device, options.devices),
        num_nodes=options.nodes,
        strategy=options.strategy,
        use_distributed_sampler=options.distributed_sampler,
        sync_batchnorm=options.sync_batchnorm,
        precision=options.precision,
        callbacks=list(options.callbacks),
        logger=options.logger,
        enable_progress_bar=options.progress,
        enable_model_summary=False,
        enable_checkpointing=options.checkpoints,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, options.steps_per_epoch)),
        max_time={"seconds": options.max_time_s} if options.max_time_s else None,
        plugins=[AtomicCheckpointIO()] if options.checkpoints else None,
    )
