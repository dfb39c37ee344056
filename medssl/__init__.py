"""medssl-bench engine: suite config -> plan -> pretrain -> checkpoint -> evaluate -> result record -> report."""

import logging as _logging
import warnings as _warnings


def quiet_lightning() -> None:
    """Keep Lightning's start-up banners and tips out of the benchmark log (errors and warnings still show)."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric"):
        _logging.getLogger(name).setLevel(_logging.WARNING)
    _warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    _warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    _warnings.filterwarnings("ignore", message=".*litlogger.*")
    _warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
