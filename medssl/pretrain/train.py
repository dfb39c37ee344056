"""Run (or reuse) one pretraining job with pytorch-lightning and export its encoder.

``<out>/checkpoints/<method>-<corpus>-<hash>/`` holds Lightning's ``last.ckpt`` (resume point, rewritten each
epoch), ``history.jsonl`` (one line per finished epoch: mean loss terms and method diagnostics such as CoBooM's
codebook usage) and, once training has finished, ``encoder.pt``. An existing ``encoder.pt`` is reused by every
evaluation; an interrupted run resumes from ``last.ckpt`` (``history.jsonl`` gets a ``resumed`` row each time).

Faults: ``encoder.pt`` is written under a per-process temporary name and renamed, and carries the SHA-256 of its
weights in ``encoder.json``; a file that fails that check, or does not load, is named and redone, never evaluated.
A ``last.ckpt`` that does not load is set aside (``last.ckpt.corrupt``) and the pretraining starts over. Every file
is read with ``torch.load(weights_only=True)``: a crafted checkpoint cannot run code. A non-finite loss stops the
pretraining (:class:`DivergenceGuard`) and nothing is cached.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy

from datasets import ImageDataset
from medssl import quiet_lightning
from medssl.data.stream import MappedImages, ShuffledBatches
from medssl.plan.jobs import PretrainJob
from medssl.pretrain.callbacks import (
    EpochHistory,
    PretrainingFailed,
    RandomStates,
    check_finished,
    finished_state,
    guarded,
)
from medssl.pretrain.encoder import ENCODER_FILE, encoder_status, save_encoder
from medssl.pretrain.monitor import ProbeMonitor
from medssl.pretrain.rundir import (
    corpus_indices,
    encoder_meta,
    epoch_checkpoint,
    read_history,
    resume_from,
    write_run_files,
)
from medssl.pretrain.volumes import train_volumes
from medssl.record.store import exclusive_lock
from medssl.runtime.cluster import check_batch_split, started_by_launcher
from medssl.runtime.options import RunOptions
from medssl.runtime.precision import precision_for
from medssl.runtime.progress import lightning_logger
from medssl.runtime.trainer import TrainerOptions, make_trainer
from medssl.suite.protocol import ConfigError
from methods import build_method
from methods.base import PretrainProtocol


def channel_statistics(
    images: np.ndarray, rows: Optional[np.ndarray] = None, max_images: int = 1000, seed: int = 0
) -> Dict[str, list]:
    """Per-channel mean/std in [0,1] units of a seeded sample of the pretraining images (``rows`` of ``images``,
    sorted; all of them by default); only the sample is read."""
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(rows), size=min(max_images, len(rows)), replace=False))
    sample = MappedImages(images, rows)[pick].numpy().astype(np.float64) / 255.0
    mean = sample.mean(axis=(0, 2, 3))
    std = sample.std(axis=(0, 2, 3)).clip(min=1e-3)
    return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]}


def ddp_strategy(launch: str, model):
    """Lightning's strategy for ``launch`` ("auto", "ddp_spawn" or "ddp"). Under DDP, buffers are not broadcast from
    rank 0 before every forward (DDP's default): SwAV's per-process queue share and MoCo's memory banks are the
    process's own, and a 33 MB bank is not re-sent each step; what must agree across processes is synchronised
    where it changes (CoBooM's codebook and usage, BatchNorm through SyncBatchNorm on GPUs). DDP's search for
    unused parameters only for a method whose step leaves some without a gradient by design."""
    if launch == "auto":
        return "auto"

    return DDPStrategy(
        start_method="spawn" if launch == "ddp_spawn" else "popen",
        broadcast_buffers=False,
        find_unused_parameters=bool(model.ddp_find_unused_parameters),
    )


def run_pretraining(
    job: PretrainJob,
    dataset: ImageDataset,
    checkpoints_dir: Path,
    options: Optional[RunOptions] = None,
    max_time_s: Optional[float] = None,
    callbacks: Sequence[pl.Callback] = (),
) -> Path:
    """Pretrain ``job`` (or resume it) and save its encoder; returns the encoder file (at once if it exists).

    ``options.devices`` > 1 trains with Lightning's DDP in spawned processes (``ddp_spawn``, one per device; CPU processes
    use gloo): the suite's batch size stays the global batch, split evenly, with synchronised BatchNorm on GPUs so that
    the statistics are those of the global batch (except MoCo-based methods, which shuffle keys across processes
    instead: ``SSLMethod.sync_batchnorm``), and the batch-level losses and queues gather across processes. That is why the
    device count is not part of the pretraining hash (CPU processes keep per-process BatchNorm statistics: torch has
    no CPU SyncBatchNorm; that mode is for tests). When srun or torchrun started ``nodes * devices`` processes (any
    number of nodes, ``medssl.runtime.cluster``), this process is one of them: Lightning's ``ddp`` joins them and only global
    rank 0 writes the encoder (the returned path exists once rank 0 has finished). ``options.compile_loss`` compiles each step's
    ``compute_loss`` with ``torch.compile`` (``SSLMethod.setup``). ``options.logger``: csv (default) or tensorboard, under
    the run's ``logs/``.
    """
    o = options or RunOptions()
    run_dir = Path(checkpoints_dir) / job.key
    encoder_path = run_dir / ENCODER_FILE
    if encoder_status(encoder_path) == "done":
        return encoder_path
    run_dir.mkdir(parents=True, exist_ok=True)
    if started_by_launcher(o.nodes, o.devices):  # every process srun/torchrun started; Lightning's ddp joins them
        return train_images(job, dataset, run_dir, o, max_time_s, callbacks)
    # one process per pretraining on this machine: another run sharing this checkpoints folder (another suite with the
    # same pretraining, or the same command started twice) waits here and then reuses the encoder instead of
    # training into the same last.ckpt
    with exclusive_lock(
        run_dir / ".lock",
        wait=True,
        on_wait=lambda holder: print(f"waiting for {job.key}: being pretrained by {holder}", flush=True),
    ):
        status = encoder_status(encoder_path)
        if status == "done":
            return encoder_path
        if status == "corrupt":
            warnings.warn(
                f"{encoder_path} is damaged (fails its SHA-256 check or does not load); redoing that pretraining",
                stacklevel=2,
            )
            encoder_path.unlink()
        if hasattr(dataset, "case_ids"):  # CT volumes (datasets/volumes.py): a CT method's pretraining
            return train_volumes(job, dataset, run_dir, o, max_time_s, callbacks)
        return train_images(job, dataset, run_dir, o, max_time_s, callbacks)


def batch_size(job: PretrainJob) -> int:
    return int(job.config.get("protocol", {}).get("batch_size", 1))


def image_protocol(job: PretrainJob, dataset: ImageDataset, n_images: int, stats: Dict, o: RunOptions):
    """The shared protocol a method is built with, after the checks that the corpus fills a batch and the batch
    splits over the processes."""
    pretrain = job.config.get("protocol", {})
    if job.trains and n_images < batch_size(job):
        raise ConfigError(
            f"{job.key}: {n_images} pretraining images are fewer than one batch of {batch_size(job)}; lower batch_size or use more data"
        )
    if job.trains:
        check_batch_split(batch_size(job), o.devices * o.nodes, job.key)
    return PretrainProtocol(
        backbone=job.config.get("protocol", job.config).get("backbone", "resnet18"),
        in_channels=dataset.channels,
        image_size=int(pretrain.get("image_size", dataset.native_size)),
        epochs=int(pretrain.get("epochs", 0)),
        steps_per_epoch=n_images // batch_size(job) if job.trains else 0,
        optimizer=pretrain.get("optimizer", {"name": "lars", "lr": 0.0}),
        schedule=pretrain.get("schedule", {}),
        augment=pretrain.get("augment", {}),
        mean=stats["mean"],
        std=stats["std"],
        channels_last=o.device.startswith("cuda"),
    )


def train_images(
    job: PretrainJob,
    dataset: ImageDataset,
    run_dir: Path,
    o: RunOptions,
    max_time_s: Optional[float],
    callbacks: Sequence[pl.Callback],
) -> Path:
    """An image method's pretraining and export (a random-init job exports its initialisation)."""
    write_run_files(job, dataset, run_dir)
    indices = corpus_indices(job, dataset)
    images = MappedImages(dataset.images, indices)  # read batch by batch from the cache, never copied whole
    stats = channel_statistics(dataset.images, indices, seed=job.seed)
    protocol = image_protocol(job, dataset, len(images), stats, o)
    quiet_lightning()
    pl.seed_everything(job.seed, workers=True, verbose=False)
    model = build_method(job.method, protocol, job.config.get("params"))
    start = time.time()
    if job.trains and not fit_images(job, model, images, dataset, run_dir, o, max_time_s, callbacks):
        return run_dir / ENCODER_FILE  # not global rank 0, which writes the encoder
    # after fit Lightning has moved the model back to the CPU: statistics passes run on the training device
    model.to(torch.device(o.device))
    model.finish_encoder(images, batch_size(job), job.seed)
    meta = encoder_meta(
        job,
        run_dir,
        dataset,
        start,
        backbone=protocol.backbone,
        in_channels=protocol.in_channels,
        image_size=protocol.image_size,
        mean=stats["mean"],
        std=stats["std"],
        pretrain_images=int(len(images)),
        precision=precision_for(o.device, o.precision),
        devices=o.devices,
        nodes=o.nodes,
    )
    return save_encoder(job, run_dir, finished_state(job, model), meta)


def fit_images(job: PretrainJob, model, images, dataset, run_dir: Path, o: RunOptions, max_time_s, callbacks) -> bool:
    """Train ``model`` to its last epoch (resuming from ``last.ckpt``); True on the process that exports it."""
    protocol = model.protocol
    # processes started by srun/torchrun exist already and each maps the cache itself; otherwise Lightning spawns one
    # per device
    strategy = "ddp" if started_by_launcher(o.nodes, o.devices) else ("ddp_spawn" if o.devices > 1 else "auto")
    monitor = None
    if job.monitor and dataset.labels is not None and len(dataset.indices("val")):
        monitor = ProbeMonitor(dataset, protocol.image_size, protocol.mean, protocol.std, job.monitor)
    generator = torch.Generator().manual_seed(job.seed)
    if o.compile_loss:
        model.compile_backend = "inductor"  # compiled in each training process (SSLMethod.setup)
    if strategy == "ddp_spawn":
        # the model's tensors travel to the spawned processes through shared memory (the images do not: they
        # are re-mapped from the cache); run_benchmark.py launches through torchrun instead
        torch.multiprocessing.set_sharing_strategy("file_system")
    cuda = o.device.startswith("cuda")
    loader = ShuffledBatches(
        images, batch_size(job), generator, drop_last=True, pin=cuda, resident="auto" if cuda else False
    )
    trainer = make_trainer(
        TrainerOptions(
            device=o.device,
            epochs=protocol.epochs,
            steps_per_epoch=protocol.steps_per_epoch,
            precision=precision_for(o.device, o.precision),
            progress=o.progress,
            logger=lightning_logger(o.logger or "csv", run_dir),  # OUT/checkpoints/<key>/logs/version_N
            callbacks=guarded(
                job.method,
                o,
                protocol.steps_per_epoch,
                callbacks,
                RandomStates(generator, job.seed),
                epoch_checkpoint(run_dir),
                EpochHistory(run_dir / "history.jsonl", monitor, images, batch_size(job)),
            ),
            devices=o.devices,
            nodes=o.nodes,
            strategy=ddp_strategy(strategy, model),
            # torch's SyncBatchNorm has no CPU kernel; MoCo-based methods shuffle keys across processes instead
            sync_batchnorm=o.devices * o.nodes > 1 and cuda and model.sync_batchnorm,
            distributed_sampler=False,  # ShuffledBatches gives each process its share of every global batch
            max_time_s=max_time_s,
        )
    )
    try:
        trainer.fit(model, loader, ckpt_path=resume_from(run_dir), weights_only=True)
    except Exception as err:  # noqa: BLE001
        # under ddp_spawn a worker's PretrainingFailed arrives as torch's ProcessRaisedException carrying its text
        text = str(err)
        if isinstance(err, PretrainingFailed) or "PretrainingFailed: " not in text:
            raise
        raise PretrainingFailed(text.split("PretrainingFailed: ", 1)[1].strip().splitlines()[0]) from None
    # ddp_spawn trains in child processes and returns the weights but not the loop's progress: count the
    # epochs that rank 0 wrote to the history instead
    finished = (
        trainer.current_epoch
        if strategy != "ddp_spawn"
        else 1 + max((row["epoch"] for row in read_history(run_dir)), default=-1)
    )
    if trainer.global_rank != 0:
        return False
    check_finished(job, finished, protocol.epochs)
    return True
