"""What a training run shows and keeps: Lightning's rich progress bar (metrics read every few steps) and the optional
Lightning logger of pretraining and fine-tuning (``--logger csv|tensorboard``).

The bar shows the loss that the step logged; showing it means turning the device tensor into a Python number, a host
sync that stops the CPU until the GPU has caught up. Reading it every ``metrics_every`` steps (and at each epoch's
end) keeps the training loop free to run ahead; the bar's position still moves every step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

from medssl.suite.protocol import ConfigError


class SparseMetricsProgressBar(RichProgressBar):
    def __init__(self, metrics_every: int = 25, **kwargs: Any):
        super().__init__(**kwargs)
        self.metrics_every = max(1, int(metrics_every))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # a run resumed mid-epoch (as Lightning's own bar does)
        self._update(self.train_progress_bar_id, batch_idx + 1)
        if (batch_idx + 1) % self.metrics_every == 0:
            self._update_metrics(trainer, pl_module)
        self.refresh()


LOGGERS = ("csv", "tensorboard")


def check_logger(kind: Optional[str]) -> None:
    """Refuse a logger that cannot be made here before any work (TensorBoard's writer is a separate package)."""

    if kind is None:
        return
    if kind not in LOGGERS:
        raise ConfigError(f"unknown logger {kind!r}; choose {' or '.join(LOGGERS)}")
    if kind == "tensorboard":
        import importlib.util

        if importlib.util.find_spec("tensorboardX") is None and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError(
                "--logger tensorboard needs the tensorboardX (or tensorboard) package: pip install tensorboardX, or use --logger csv"
            )


def lightning_logger(kind: Optional[str], directory: Path, name: str = "logs"):
    """A Lightning logger writing under ``directory/name`` (``version_N`` per (re)start, so a resume keeps the
    earlier logs), or False for none."""
    if kind is None:
        return False
    check_logger(kind)
    if kind == "csv":
        return pl.loggers.CSVLogger(directory, name=name)
    return pl.loggers.TensorBoardLogger(directory, name=name, default_hp_metric=False)
