"""Lightning's rich progress bar, reading the logged metrics every few steps instead of every step.

The bar shows the loss that the step logged; showing it means turning the device tensor into a Python number, a host
sync that stops the CPU until the GPU has caught up. Reading it every ``metrics_every`` steps (and at each epoch's
end) keeps the training loop free to run ahead; the bar's position still moves every step.
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar


class SparseMetricsProgressBar(RichProgressBar):
    def __init__(self, metrics_every: int = 25, **kwargs: Any):
        super().__init__(**kwargs)
        self.metrics_every = max(1, int(metrics_every))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # a run resumed mid-epoch (as Lightning's own bar does)
        self._update(self.train_progress_bar_id, batch_idx + 1)
        if (batch_idx + 1) % self.metrics_every == 0:
            self._update_metrics(trainer, pl_module)
        self.refresh()
