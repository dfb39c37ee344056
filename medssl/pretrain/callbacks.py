"""What watches a pretraining under Lightning: the divergence guard (a non-finite loss stops it before a checkpoint
sees it), the random streams saved with every checkpoint (bit-identical resume, per-rank view streams under DDP)
and the per-epoch history with the optional probe."""

from __future__ import annotations

import copy
import datetime as _dt
import random
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch

from medssl.plan.jobs import PretrainJob
from medssl.record.store import append_line
from medssl.runtime.options import RunOptions
from medssl.runtime.progress import SparseMetricsProgressBar
from medssl.suite.protocol import stable_hash

DIVERGENCE_ADVICE = (
    "no encoder is cached. Lower the learning rate (pretrain.optimizer.lr) or use fp32 (--precision 32), then run again"
)


class PretrainingFailed(RuntimeError):
    """A pretraining that cannot produce a usable encoder (diverged, or a corrupt file the user must act on); the
    run goes on with the other jobs and lists these at the end."""


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


def finished_state(job: PretrainJob, model) -> Dict[str, torch.Tensor]:
    """The trained encoder's weights; :class:`PretrainingFailed` if any is not finite (nothing is cached then)."""
    state = model.encoder_state_dict()
    broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise PretrainingFailed(
            f"{job.method} ({job.key}) ended with non-finite weights in {', '.join(broken[:3])}{' ...' if len(broken) > 3 else ''}; {DIVERGENCE_ADVICE}"
        )
    return state


def guarded(method: str, options: RunOptions, steps_per_epoch: int, given: Sequence[pl.Callback], *then) -> list:
    """A pretraining's callbacks: the divergence guard first (at an epoch's end it must stop a diverged run before
    the history and the checkpoint see it; read every step on the CPU, every 50 on a GPU), the caller's ``given``,
    ``then`` (random streams or step sampler, checkpoint, history) and the progress bar."""
    every = 1 if options.device == "cpu" else max(1, min(50, steps_per_epoch))
    bar = [SparseMetricsProgressBar(leave=False)] if options.progress else []
    return [DivergenceGuard(method, check_every=every), *given, *then, *bar]


def check_finished(job: PretrainJob, finished: int, epochs: int) -> None:
    """A fit that returned before its last epoch (``max_time_s``) is not exported: the next run resumes it."""
    if finished < epochs:
        raise RuntimeError(f"{job.key}: pretraining stopped at epoch {finished} of {epochs}; run again to resume")
