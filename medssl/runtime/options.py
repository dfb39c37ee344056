"""The options a run carries from the command line to every stage."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional


def print_flushed(message: str) -> None:
    print(message, flush=True)  # flushed: progress stays visible when the output goes to a file


@dataclasses.dataclass
class RunOptions:
    """How a plan runs; nothing here enters a job's key.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        progress: progress bars (pretraining, fine-tuning).
        precision: ``auto``, ``32`` or ``bf16`` (``medssl.runtime.precision``); the CT track trains in fp32.
        devices: devices per node for DDP pretraining.
        nodes: machines of a multi-node pretraining (``medssl.runtime.cluster``).
        global_rank: this process's rank; only rank 0 evaluates and stores.
        compile_loss: ``torch.compile`` each method's loss.
        logger: Lightning logs (``csv`` or ``tensorboard``) next to each pretraining's checkpoint.
        keep_checkpoints: keep a finished pretraining's ``last.ckpt``.
        log: where the run's one-line messages go.
    """

    device: str = "cpu"
    progress: bool = True
    precision: str = "auto"
    devices: int = 1
    nodes: int = 1
    global_rank: int = 0
    compile_loss: bool = False
    logger: Optional[str] = None
    keep_checkpoints: bool = False
    log: Callable[[str], None] = print_flushed
