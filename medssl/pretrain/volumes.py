"""A CT method's pretraining (track ct; medssl/run/ct.py) under Lightning, with the image track's guard, checkpoints,
history and checksummed export."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import pytorch_lightning as pl

from medssl import quiet_lightning
from medssl.plan.jobs import PretrainJob
from medssl.pretrain.callbacks import EpochHistory, check_finished, finished_state, guarded
from medssl.pretrain.encoder import save_encoder
from medssl.pretrain.rundir import corpus_indices, encoder_meta, epoch_checkpoint, resume_from, write_run_files
from medssl.runtime.options import RunOptions
from medssl.runtime.progress import lightning_logger
from medssl.runtime.trainer import TrainerOptions, make_trainer
from medssl.suite.protocol import ConfigError
from methods import build_method
from methods.base import PretrainProtocol
from methods.vox2vec3d import EpochOfSteps, VolumeSteps, architecture


def train_volumes(
    job: PretrainJob,
    dataset,
    run_dir: Path,
    o: RunOptions,
    max_time_s: Optional[float],
    callbacks: Sequence[pl.Callback],
) -> Path:
    """A CT method's pretraining (``track = "ct"``; medssl/run/ct.py): ``steps_per_epoch`` steps per epoch drawn by
    :class:`~methods.vox2vec3d.VolumeSteps` from the corpus's CTs (its ``splits``), on one device in fp32 as the
    official code trains, with the image track's divergence guard, per-epoch checkpoint (a resumed run repeats the
    uninterrupted one bit for bit: the steps are seeded by (seed, epoch, step)), history and checksummed export. The
    exported encoder is the whole FPN3d; its architecture is in the metadata."""
    write_run_files(job, dataset, run_dir)
    volumes = [dataset.images[i] for i in corpus_indices(job, dataset)]
    pretrain = job.config["protocol"]
    protocol = PretrainProtocol(
        backbone="fpn3d",
        in_channels=1,
        epochs=int(pretrain["epochs"]),
        steps_per_epoch=int(pretrain["steps_per_epoch"]),
        optimizer=pretrain["optimizer"],
        schedule=pretrain.get("schedule", {"name": "constant"}),
    )
    quiet_lightning()
    pl.seed_everything(job.seed, workers=True, verbose=False)
    model = build_method(job.method, protocol, job.config.get("params"))
    config = model.config
    try:
        steps = VolumeSteps(
            volumes,
            config.patch_size,
            config.pairs_per_step,
            config.max_voxels_per_pair,
            protocol.steps_per_epoch,
            job.seed,
        )
    except ValueError as err:
        raise ConfigError(f"{job.key}: {err}") from None
    start = time.time()
    trainer = make_trainer(
        TrainerOptions(
            device=o.device,
            epochs=protocol.epochs,
            steps_per_epoch=protocol.steps_per_epoch,
            precision="32-true",
            progress=o.progress,
            logger=lightning_logger(o.logger or "csv", run_dir),
            callbacks=guarded(
                job.method,
                o,
                protocol.steps_per_epoch,
                callbacks,
                EpochOfSteps(steps),
                epoch_checkpoint(run_dir),
                EpochHistory(run_dir / "history.jsonl"),
            ),
            max_time_s=max_time_s,
        )
    )
    trainer.fit(model, steps, ckpt_path=resume_from(run_dir), weights_only=True)
    check_finished(job, trainer.current_epoch, protocol.epochs)
    meta = encoder_meta(
        job,
        run_dir,
        dataset,
        start,
        backbone="fpn3d",
        in_channels=1,
        architecture=architecture(job.config["params"]),
        spacing=list(dataset.spacing),
        pretrain_images=len(volumes),
        precision="32-true",
        devices=1,
        nodes=1,
    )
    return save_encoder(job, run_dir, finished_state(job, model), meta)
