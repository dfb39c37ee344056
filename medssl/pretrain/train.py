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

import copy
import datetime as _dt
import json
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy

from datasets import ImageDataset
from datasets.storage import write_atomic
from medssl import quiet_lightning
from medssl.data.stream import MappedImages, ShuffledBatches
from medssl.nn.backbone import ResNetTrunk
from medssl.plan.jobs import PretrainJob
from medssl.pretrain.monitor import ProbeMonitor
from medssl.record.provenance import file_sha256
from medssl.record.store import append_line, exclusive_lock, read_lines
from medssl.runtime.cluster import check_batch_split, started_by_launcher
from medssl.runtime.precision import precision_for
from medssl.runtime.progress import SparseMetricsProgressBar, lightning_logger
from medssl.runtime.trainer import TrainerOptions, make_trainer
from medssl.suite.protocol import ConfigError, stable_hash
from methods import build_method
from methods.base import PretrainProtocol
from methods.vox2vec3d import EpochOfSteps, FPN3d, VolumeSteps, architecture

ENCODER_FILE = "encoder.pt"
ENCODER_SIDECAR = "encoder.json"  # the encoder's metadata and the SHA-256 of encoder.pt
DATA_FILE = "data.json"  # the corpus's name and data fingerprint, written when the pretraining starts


DIVERGENCE_ADVICE = (
    "no encoder is cached. Lower the learning rate (pretrain.optimizer.lr) or use fp32 (--precision 32), then run again"
)


class PretrainingFailed(RuntimeError):
    """A pretraining that cannot produce a usable encoder (diverged, or a corrupt file the user must act on); the
    run goes on with the other jobs and lists these at the end."""


class CorruptCheckpoint(RuntimeError):
    """A stored checkpoint that fails its checksum or does not load."""


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


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of process ``rank``'s view stream in ``epoch`` of a multi-process pretraining (rank > 0)."""
    return int(stable_hash(["views", int(seed), int(rank), int(epoch)], 8), 16)


class RandomStates(pl.Callback):
    """The random streams a pretraining step draws from, saved with every checkpoint and restored on resume: torch's
    global generator (the views), CUDA's, numpy's and Python's, and the data loader's (the batch order). Without
    them a run resumed from ``last.ckpt`` restarted the loader's order and drew other views than the uninterrupted
    run, and its weights differed. Nothing is drawn here, so an uninterrupted run is unchanged.

    Under DDP every process starts from the same state (ddp_spawn copies the parent's, srun/torchrun processes all
    seed with the job's seed), so each would draw the same crops, flips and blur at the same batch position. Rank 0
    keeps the single-process stream (one device trains exactly as before); every other rank reseeds torch's
    generators at each epoch's start from (seed, rank, epoch). That needs no per-rank state in the checkpoint, which
    only rank 0 writes: a resumed multi-process run draws what the uninterrupted one drew."""

    def __init__(self, loader_generator: torch.Generator, seed: int = 0):
        self.loader_generator, self.seed = loader_generator, seed

    def on_train_epoch_start(self, trainer: pl.Trainer, module) -> None:
        if trainer.world_size > 1 and trainer.global_rank > 0:
            torch.manual_seed(rank_seed(self.seed, trainer.global_rank, trainer.current_epoch))

    def state_dict(self) -> Dict[str, Any]:
        name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "loader": self.loader_generator.get_state(),
            "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        self.loader_generator.set_state(state["loader"])
        random.setstate(state["python"])
        name, keys, position, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


class DivergenceGuard(pl.Callback):
    """Stops a pretraining at its first non-finite loss, before that epoch's checkpoint is written.

    Every step notes, on the device and without a host sync, the first step whose loss terms are not all finite
    and their values; the note is read (one sync) every ``check_every`` steps and at the end of each epoch, so on a
    GPU the check costs nothing per step while the message still names the exact first step. On the CPU it is read
    every step. Runs before the other callbacks of the epoch's end, so neither the history nor ``last.ckpt`` sees the
    diverged weights."""

    def __init__(self, method: str, check_every: int = 1):
        self.method, self.check_every = method, max(1, check_every)
        self.first_step: Optional[torch.Tensor] = None
        self.first_terms: Optional[torch.Tensor] = None
        self.names: Sequence[str] = ()

    def on_train_batch_end(self, trainer: pl.Trainer, module, outputs, batch, batch_idx: int) -> None:
        terms = getattr(module, "last_loss_terms", None)
        if not terms:
            return
        values = torch.stack([v.float().reshape(()) for v in terms.values()])
        if self.first_step is None or self.first_terms is None or self.first_terms.shape != values.shape:
            self.names = list(terms)
            self.first_step = torch.full((), -1, dtype=torch.long, device=values.device)
            self.first_terms = torch.zeros_like(values)
        newly = ~torch.isfinite(values).all() & (self.first_step < 0)
        self.first_step = torch.where(newly, torch.full_like(self.first_step, trainer.global_step), self.first_step)
        self.first_terms = torch.where(newly, values, self.first_terms)
        if trainer.global_step % self.check_every == 0:
            self.check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, module) -> None:
        self.check(trainer)

    def check(self, trainer: pl.Trainer) -> None:
        if self.first_step is None or self.first_terms is None:
            return
        diverged = trainer.strategy.reduce_boolean_decision(bool(self.first_step >= 0), all=False)
        if diverged:
            step = int(self.first_step)
            terms = ", ".join(f"{name} {value:.4g}" for name, value in zip(self.names, self.first_terms.tolist()))
            where = f"at step {step} of {trainer.estimated_stepping_batches}" if step >= 0 else "on another process"
            raise PretrainingFailed(f"{self.method} diverged {where}: non-finite loss ({terms}); {DIVERGENCE_ADVICE}")


class EpochHistory(pl.Callback):
    """Appends one JSON line per finished epoch to ``history.jsonl`` (survives resumption). With a
    :class:`~medssl.pretrain.monitor.ProbeMonitor`, rows of monitored epochs carry ``probe_auc`` and ``feature_rank`` and an
    ``epoch: -1`` row holds those of the random initialisation, probed with the BatchNorm statistics of the
    pretraining corpus (``images``, seen through the method's training views) as the suite's random-init row is
    (``methods/supervised.py``), on a copy: the training run itself is untouched. A method that re-estimates its
    exported trunk's statistics (``reestimate_exported_batchnorm``) is probed the same way at every epoch, so the
    probe sees the encoder that would be exported."""

    def __init__(self, path: Path, monitor=None, images: Optional[torch.Tensor] = None, batch_size: int = 64):
        self.path, self.monitor, self.images, self.batch_size = path, monitor, images, batch_size

    def _write(self, row: Dict[str, Any]) -> None:
        append_line(self.path, row)

    def on_train_start(self, trainer: pl.Trainer, module) -> None:
        if trainer.global_rank == 0 and trainer.current_epoch > 0:
            self._write(
                {
                    "resumed": True,
                    "epoch": trainer.current_epoch,
                    "step": trainer.global_step,
                    "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                }
            )
        if (
            self.monitor is not None
            and trainer.global_rank == 0
            and trainer.current_epoch == 0
            and not self.path.exists()
        ):
            self._write(
                {
                    "epoch": -1,
                    "step": 0,
                    **self.monitor.probe(self._trunk_with_corpus_statistics(module), str(module.device)),
                }
            )

    def _trunk_with_corpus_statistics(self, module):
        """A copy of the trunk with the BatchNorm statistics of one pass over the corpus (seed 0)."""
        trunk = plain_batchnorm(copy.deepcopy(module.backbone))
        if self.images is not None:
            module.estimate_trunk_statistics(trunk, self.images, self.batch_size, seed=0)
        return trunk

    def on_train_epoch_end(self, trainer: pl.Trainer, module) -> None:
        if trainer.global_rank != 0:
            return
        row: Dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for name, value in trainer.callback_metrics.items():
            if name.startswith("train/") and name.endswith("_epoch"):
                row[name[len("train/") : -len("_epoch")]] = round(float(value), 6)
        row.update({k: round(float(v), 6) for k, v in module.epoch_statistics().items()})
        if self.monitor is not None and self.monitor.due(trainer.current_epoch, trainer.max_epochs - 1):
            trunk = (
                self._trunk_with_corpus_statistics(module) if module.reestimate_exported_batchnorm else module.backbone
            )
            row.update(self.monitor.probe(trunk, str(module.device)))
        self._write(row)


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


def plain_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every SyncBatchNorm replaced by a BatchNorm2d carrying the same weights and statistics: a copy
    that one process runs in train mode (the monitor's statistics pass, on rank 0 only) must not wait for the
    others in SyncBatchNorm's all-reduce, which they never join."""
    if isinstance(module, torch.nn.SyncBatchNorm):
        plain = torch.nn.BatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        plain.load_state_dict(module.state_dict())
        plain.train(module.training)
        return plain.to(next(iter(module.state_dict().values())).device)
    for name, child in module.named_children():
        setattr(module, name, plain_batchnorm(child))
    return module


def read_history(run_dir: Path) -> list:
    path = Path(run_dir) / "history.jsonl"
    if not path.exists():
        return []
    rows = read_lines(path)
    latest = {
        row["epoch"]: row for row in rows if not row.get("resumed")
    }  # a resumed epoch may appear twice; the last one counts
    return [latest[e] for e in sorted(latest)]


def resumes(run_dir: Path) -> list:
    """The ``resumed`` rows of ``history.jsonl``: when and at which epoch the pretraining was resumed."""
    path = Path(run_dir) / "history.jsonl"
    return [row for row in read_lines(path) if row.get("resumed")] if path.exists() else []


def encoder_status(path: Path) -> str:
    """'done', 'missing' or 'corrupt' for an ``encoder.pt`` path. An encoder written before checksums existed (no
    ``encoder.json``) counts as done if it loads, and gets its sidecar then."""
    path = Path(path)
    if not path.exists():
        return "missing"
    sidecar = path.with_name(ENCODER_SIDECAR)
    if not sidecar.exists():
        try:
            _read_encoder(path)
        except Exception:  # noqa: BLE001 - unreadable: corrupt
            return "corrupt"
        _write_json(sidecar, {"sha256": file_sha256(path)})
        return "done"
    try:
        expected = json.loads(sidecar.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return "corrupt"
    return "done" if file_sha256(path) == expected else "corrupt"


def _read_encoder(path: Path) -> tuple:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    meta = payload["meta"]
    if meta["backbone"] == "fpn3d":  # a CT method's encoder (medssl/run/ct.py)
        encoder = FPN3d(**meta["architecture"])
    else:
        encoder = ResNetTrunk(meta["backbone"], meta["in_channels"])
    encoder.load_state_dict(payload["state_dict"])
    return encoder, meta


def _write_json(path: Path, payload: Dict[str, Any]) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=1)))


def load_encoder(path: Path) -> tuple:
    """(ResNetTrunk with weights, checkpoint metadata); :class:`CorruptCheckpoint` naming the file when it fails its
    checksum or does not load. Loaded with ``weights_only=True``: tensors and plain types only, never code."""
    path = Path(path)
    if encoder_status(path) != "done":
        raise CorruptCheckpoint(
            f"{path} is damaged (it fails its SHA-256 check or does not load); delete the folder {path.parent} and run again to redo that pretraining"
        )
    try:
        return _read_encoder(path)
    except Exception as err:  # noqa: BLE001 - any failure to read our own file is reported with its name
        raise CorruptCheckpoint(
            f"{path} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]}); delete the folder {path.parent} and run again"
        ) from None


def readable_checkpoint(path: Path) -> bool:
    """Whether Lightning's ``last.ckpt`` loads (tensors and plain types only); a damaged one is renamed to
    ``last.ckpt.corrupt`` with a warning so that the pretraining starts over instead of failing in torch."""
    if not path.exists():
        return False
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception as err:  # noqa: BLE001
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        warnings.warn(
            f"{path} cannot be loaded ({type(err).__name__}); moved to {aside.name}, starting this pretraining over",
            stacklevel=2,
        )
        return False


def corpus_indices(job: PretrainJob, dataset) -> np.ndarray:
    """The corpus images (or CTs) a pretraining reads: those of the corpus's ``splits`` (default train and val), sorted."""
    return np.sort(np.concatenate([dataset.indices(s) for s in job.config["corpus"].get("splits", ["train", "val"])]))


def write_run_files(job: PretrainJob, dataset, run_dir: Path) -> None:
    """``config.json`` and :data:`DATA_FILE` in the run's folder, before any training: a resumed or reused
    pretraining is checked against the data it started from (medssl/runner.check_unchanged)."""
    write_atomic(run_dir / "config.json", lambda tmp: tmp.write_text(json.dumps(job.config, indent=1, sort_keys=True)))
    if not (run_dir / DATA_FILE).exists() or not (run_dir / "last.ckpt").exists():  # a resumed run keeps its start's
        _write_json(run_dir / DATA_FILE, {"dataset": dataset.name, "fingerprint": dataset.fingerprint})


def discard_resume_point(run_dir: Path) -> int:
    """Delete a finished pretraining's ``last.ckpt`` (optimizer state, momentum copies, queues: several times the
    encoder; CoBooM's is ~710 MB) once ``encoder.pt`` has passed its checksum; returns the bytes freed. Nothing needs
    it after the export: the encoder is never pretrained again, and a rerun with other epochs is another job."""
    run_dir = Path(run_dir)
    resume = run_dir / "last.ckpt"
    if not resume.exists() or encoder_status(run_dir / ENCODER_FILE) != "done":
        return 0
    size = resume.stat().st_size
    resume.unlink()
    return size


def resume_from(run_dir: Path) -> Optional[str]:
    """The ``ckpt_path`` a pretraining continues from: its readable ``last.ckpt``, else None (it starts over), and
    then the rows of an earlier start in ``history.jsonl`` are set aside (``history.jsonl.discarded``), so the
    history lists each epoch of this start once."""
    resume = Path(run_dir) / "last.ckpt"
    if readable_checkpoint(resume):
        return str(resume)
    history = Path(run_dir) / "history.jsonl"
    if history.exists():
        os.replace(history, history.with_name("history.jsonl.discarded"))
    return None


def epoch_checkpoint(run_dir: Path) -> pl.callbacks.ModelCheckpoint:
    """Lightning's ``last.ckpt`` in the run's folder, rewritten after every epoch: the resume point."""
    return pl.callbacks.ModelCheckpoint(
        dirpath=run_dir, filename="last", save_top_k=1, every_n_epochs=1, enable_version_counter=False
    )


def run_pretraining(
    job: PretrainJob,
    dataset: ImageDataset,
    checkpoints_dir: Path,
    device: str = "cpu",
    progress: bool = True,
    max_time_s: Optional[float] = None,
    callbacks: Sequence[pl.Callback] = (),
    precision: str = "auto",
    devices: int = 1,
    compile_loss: bool = False,
    nodes: int = 1,
    logger: Optional[str] = None,
) -> Path:
    """Pretrain ``job`` (or resume it) and save its encoder; returns the encoder file (at once if it exists).

    ``devices`` > 1 trains with Lightning's DDP in spawned processes (``ddp_spawn``, one per device; CPU processes
    use gloo): the suite's batch size stays the global batch, split evenly, with synchronised BatchNorm on GPUs so that
    the statistics are those of the global batch (except MoCo-based methods, which shuffle keys across processes
    instead: ``SSLMethod.sync_batchnorm``), and the batch-level losses and queues gather across processes. That is why the
    device count is not part of the pretraining hash (CPU processes keep per-process BatchNorm statistics: torch has
    no CPU SyncBatchNorm; that mode is for tests). When srun or torchrun started ``nodes * devices`` processes (any
    number of nodes, ``medssl.runtime.cluster``), this process is one of them: Lightning's ``ddp`` joins them and only global
    rank 0 writes the encoder (the returned path exists once rank 0 has finished). ``compile_loss`` compiles each step's
    ``compute_loss`` with ``torch.compile`` (``SSLMethod.setup``). ``logger``: csv (default) or tensorboard, under
    the run's ``logs/``.
    """
    run_dir = Path(checkpoints_dir) / job.key
    encoder_path = run_dir / ENCODER_FILE
    if encoder_status(encoder_path) == "done":
        return encoder_path
    run_dir.mkdir(parents=True, exist_ok=True)
    if started_by_launcher(
        nodes, devices
    ):  # every process started by srun/torchrun comes here; Lightning's ddp joins them
        return _train_and_export(
            job,
            dataset,
            run_dir,
            device,
            progress,
            max_time_s,
            callbacks,
            precision,
            devices,
            compile_loss,
            nodes,
            logger,
        )
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
            return _train_volumes_and_export(job, dataset, run_dir, device, progress, max_time_s, callbacks, logger)
        return _train_and_export(
            job,
            dataset,
            run_dir,
            device,
            progress,
            max_time_s,
            callbacks,
            precision,
            devices,
            compile_loss,
            nodes,
            logger,
        )


def _train_and_export(
    job: PretrainJob,
    dataset: ImageDataset,
    run_dir: Path,
    device: str,
    progress: bool,
    max_time_s: Optional[float],
    callbacks: Sequence[pl.Callback],
    precision: str,
    devices: int,
    compile_loss: bool,
    nodes: int,
    logger: Optional[str],
) -> Path:
    encoder_path = run_dir / ENCODER_FILE
    write_run_files(job, dataset, run_dir)
    indices = corpus_indices(job, dataset)
    images = MappedImages(dataset.images, indices)  # read batch by batch from the cache, never copied whole
    stats = channel_statistics(dataset.images, indices, seed=job.seed)
    pretrain = job.config.get("protocol", {})
    batch_size = int(pretrain.get("batch_size", 1))
    if job.trains and len(images) < batch_size:
        raise ConfigError(
            f"{job.key}: {len(images)} pretraining images are fewer than one batch of {batch_size}; lower batch_size or use more data"
        )
    processes = devices * nodes
    # processes started by srun/torchrun exist already and each maps the cache itself; otherwise Lightning spawns one
    # per device
    strategy = "ddp" if started_by_launcher(nodes, devices) else ("ddp_spawn" if devices > 1 else "auto")
    if job.trains:
        check_batch_split(batch_size, processes, job.key)
    steps_per_epoch = len(images) // batch_size if job.trains else 0
    protocol = PretrainProtocol(
        backbone=job.config.get("protocol", job.config).get("backbone", "resnet18"),
        in_channels=dataset.channels,
        image_size=int(pretrain.get("image_size", dataset.native_size)),
        epochs=int(pretrain.get("epochs", 0)),
        steps_per_epoch=steps_per_epoch,
        optimizer=pretrain.get("optimizer", {"name": "lars", "lr": 0.0}),
        schedule=pretrain.get("schedule", {}),
        augment=pretrain.get("augment", {}),
        mean=stats["mean"],
        std=stats["std"],
        channels_last=device.startswith("cuda"),
    )
    quiet_lightning()
    pl.seed_everything(job.seed, workers=True, verbose=False)
    model = build_method(job.method, protocol, job.config.get("params"))
    amp = precision_for(device, precision)
    start = time.time()
    if job.trains:
        monitor = None
        if job.monitor and dataset.labels is not None and len(dataset.indices("val")):
            monitor = ProbeMonitor(dataset, protocol.image_size, stats["mean"], stats["std"], job.monitor)
        generator = torch.Generator().manual_seed(job.seed)
        if compile_loss:
            model.compile_backend = "inductor"  # compiled in each training process (SSLMethod.setup)
        if strategy == "ddp_spawn":
            # the model's tensors travel to the spawned processes through shared memory (the images do not: they
            # are re-mapped from the cache); run_benchmark.py launches through torchrun instead
            torch.multiprocessing.set_sharing_strategy("file_system")
        cuda = device.startswith("cuda")
        loader = ShuffledBatches(
            images, batch_size, generator, drop_last=True, pin=cuda, resident="auto" if cuda else False
        )
        # the guard first: at an epoch's end it must stop a diverged run before the history and checkpoint see it
        guard = DivergenceGuard(job.method, check_every=1 if device == "cpu" else max(1, min(50, steps_per_epoch)))
        callbacks = (
            [guard]
            + list(callbacks)
            + [
                RandomStates(generator, job.seed),
                epoch_checkpoint(run_dir),
                EpochHistory(run_dir / "history.jsonl", monitor, images, batch_size),
            ]
        )
        if progress:
            callbacks.append(SparseMetricsProgressBar(leave=False))
        trainer = make_trainer(
            TrainerOptions(
                device=device,
                epochs=protocol.epochs,
                steps_per_epoch=steps_per_epoch,
                precision=amp,
                progress=progress,
                logger=lightning_logger(logger or "csv", run_dir),  # OUT/checkpoints/<key>/logs/version_N
                callbacks=callbacks,
                devices=devices,
                nodes=nodes,
                strategy=ddp_strategy(strategy, model),
                # torch's SyncBatchNorm has no CPU kernel; MoCo-based methods shuffle keys across processes instead
                sync_batchnorm=processes > 1 and device.startswith("cuda") and model.sync_batchnorm,
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
            return encoder_path
        if finished < protocol.epochs:
            raise RuntimeError(
                f"{job.key}: pretraining stopped at epoch {finished} of {protocol.epochs}; run again to resume"
            )
    # after fit Lightning has moved the model back to the CPU: statistics passes run on the training device
    model.to(torch.device(device))
    model.finish_encoder(images, batch_size, job.seed)
    state = _finished_state(job, model)
    meta = {
        "method": job.method,
        "hash": job.hash,
        "backbone": protocol.backbone,
        "in_channels": protocol.in_channels,
        "image_size": protocol.image_size,
        "mean": stats["mean"],
        "std": stats["std"],
        "pretrain_images": int(len(images)),
        "wall_time_s": round(time.time() - start, 2),
        "precision": amp,
        "devices": devices,
        "nodes": nodes,
        "history": read_history(run_dir),
        "resumed": resumes(run_dir),
        "data_fingerprint": dataset.fingerprint,
    }
    return _save_encoder(job, run_dir, state, meta)


def _finished_state(job: PretrainJob, model) -> Dict[str, torch.Tensor]:
    """The trained encoder's weights; :class:`PretrainingFailed` if any is not finite (nothing is cached then)."""
    state = model.encoder_state_dict()
    broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise PretrainingFailed(
            f"{job.method} ({job.key}) ended with non-finite weights in {', '.join(broken[:3])}{' ...' if len(broken) > 3 else ''}; {DIVERGENCE_ADVICE}"
        )
    return state


def _save_encoder(job: PretrainJob, run_dir: Path, state: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Path:
    encoder_path = run_dir / ENCODER_FILE

    def save(tmp: Path) -> None:  # a per-process temporary name: two runs sharing a checkpoints folder never mix files
        torch.save({"state_dict": state, "meta": meta}, tmp)
        _write_json(
            run_dir / ENCODER_SIDECAR,
            {"sha256": file_sha256(tmp), "key": job.key, "method": job.method, "hash": job.hash},
        )

    write_atomic(encoder_path, save)  # renamed last: an encoder.pt is never visible before its checksum
    return encoder_path


def _train_volumes_and_export(
    job: PretrainJob,
    dataset,
    run_dir: Path,
    device: str,
    progress: bool,
    max_time_s: Optional[float],
    callbacks: Sequence[pl.Callback],
    logger: Optional[str],
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
    guard = DivergenceGuard(job.method, check_every=1 if device == "cpu" else max(1, min(50, protocol.steps_per_epoch)))
    callbacks = [
        guard,
        *callbacks,
        EpochOfSteps(steps),
        epoch_checkpoint(run_dir),
        EpochHistory(run_dir / "history.jsonl"),
    ]
    if progress:
        callbacks.append(SparseMetricsProgressBar(leave=False))
    trainer = make_trainer(
        TrainerOptions(
            device=device,
            epochs=protocol.epochs,
            steps_per_epoch=protocol.steps_per_epoch,
            precision="32-true",
            progress=progress,
            logger=lightning_logger(logger or "csv", run_dir),
            callbacks=callbacks,
            max_time_s=max_time_s,
        )
    )
    trainer.fit(model, steps, ckpt_path=resume_from(run_dir), weights_only=True)
    if trainer.current_epoch < protocol.epochs:
        raise RuntimeError(
            f"{job.key}: pretraining stopped at epoch {trainer.current_epoch} of {protocol.epochs}; run again to resume"
        )
    state = _finished_state(job, model)
    meta = {
        "method": job.method,
        "hash": job.hash,
        "backbone": "fpn3d",
        "in_channels": 1,
        "architecture": architecture(job.config["params"]),
        "spacing": list(dataset.spacing),
        "pretrain_images": len(volumes),
        "wall_time_s": round(time.time() - start, 2),
        "precision": "32-true",
        "devices": 1,
        "nodes": 1,
        "history": read_history(run_dir),
        "resumed": resumes(run_dir),
        "data_fingerprint": dataset.fingerprint,
    }
    return _save_encoder(job, run_dir, state, meta)
