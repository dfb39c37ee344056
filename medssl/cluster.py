"""Multi-node pretraining: one process per device on every node, started by ``srun`` (SLURM) or ``torchrun``.

Every process walks the same plan and joins each pretraining through Lightning's DDP (``strategy="ddp"``, which
finds the launcher from its environment variables); only global rank 0 writes encoders and records, evaluates and
writes the reports, the other processes stop after the last pretraining. Evaluations are cheap next to 300 epochs
of pretraining and single-device; to spread them over a cluster use ``--shard`` instead.
"""
from __future__ import annotations

import os

from medssl.config import ConfigError

# torchrun sets WORLD_SIZE/RANK; srun sets SLURM_NTASKS/SLURM_PROCID (Lightning reads the same variables)
_LAUNCHERS = (("WORLD_SIZE", "RANK", "torchrun"), ("SLURM_NTASKS", "SLURM_PROCID", "srun"))


def launched_processes() -> tuple:
    """(world size, global rank, launcher name) of a process started by torchrun or srun, else (1, 0, None)."""
    for size_name, rank_name, launcher in _LAUNCHERS:
        if size_name in os.environ and rank_name in os.environ:
            return int(os.environ[size_name]), int(os.environ[rank_name]), launcher
    return 1, 0, None


def check_multi_node(nodes: int, devices: int) -> int:
    """Validate ``--nodes``/``--devices`` against the launcher; returns this process's global rank."""
    if nodes < 1:
        raise ConfigError(f"--nodes must be at least 1, got {nodes}")
    if nodes == 1:
        return 0
    world, rank, launcher = launched_processes()
    example = f"srun --nodes {nodes} --ntasks-per-node {devices} python run_benchmark.py ... --nodes {nodes} --devices {devices}"
    if launcher is None:
        raise ConfigError(f"--nodes {nodes} needs one process per device on every node, started by srun or torchrun, e.g. {example}")
    if world != nodes * devices:
        raise ConfigError(f"--nodes {nodes} --devices {devices} means {nodes * devices} processes, but {launcher} started {world}; e.g. {example}")
    return rank
