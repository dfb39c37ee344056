"""Multi-node pretraining: one process per device on every node, started by ``srun`` (SLURM) or ``torchrun``.

On one node ``--devices N`` starts the same kind of run itself (``single_node_launch``: torchrun, one process per
device, each reading the dataset cache itself), so no corpus is spawned through shared memory.

Every process walks the same plan and joins each pretraining through Lightning's DDP (``strategy="ddp"``, which
finds the launcher from its environment variables); only global rank 0 writes encoders and records, evaluates and
writes the reports, the other processes stop after the last pretraining. Evaluations are cheap next to 300 epochs
of pretraining and single-device; to spread them over a cluster use ``--shard`` instead.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

from medssl.suite.protocol import ConfigError

# torchrun sets WORLD_SIZE/RANK; srun sets SLURM_NTASKS/SLURM_PROCID (Lightning reads the same variables)
_LAUNCHERS = (("WORLD_SIZE", "RANK", "torchrun"), ("SLURM_NTASKS", "SLURM_PROCID", "srun"))


def launched_processes() -> tuple:
    """(world size, global rank, launcher name) of a process started by torchrun or srun, else (1, 0, None)."""
    for size_name, rank_name, launcher in _LAUNCHERS:
        if size_name in os.environ and rank_name in os.environ:
            return int(os.environ[size_name]), int(os.environ[rank_name]), launcher
    return 1, 0, None


def started_by_launcher(nodes: int, devices: int) -> bool:
    """Whether this process is one of the ``nodes * devices`` (> 1) that srun or torchrun started: they join each
    pretraining through Lightning's ``ddp``; otherwise one process spawns the others (``ddp_spawn``)."""
    world, _, launcher = launched_processes()
    return launcher is not None and world > 1 and world == nodes * devices


def single_node_launch(nodes: int, devices: int, script: str, args: List[str]) -> Optional[List[str]]:
    """The command that starts ``script args`` once per device through torchrun, for ``--devices N`` (N > 1) on one
    node when no launcher started this process; None when nothing needs launching. Each process then maps the
    dataset cache itself and joins each pretraining through Lightning's ``ddp``: nothing is spawned through
    shared memory, so a small ``/dev/shm`` (Docker's 64 MB) does not matter."""
    if nodes != 1 or devices <= 1 or launched_processes()[2] is not None:
        return None
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(devices),
        script,
        *args,
    ]


def check_batch_split(batch_size: int, processes: int, what: str = "") -> None:
    """The suite's batch size is the global batch: it must split evenly over the processes."""
    if processes > 1 and batch_size % processes:
        raise ConfigError(
            f"{what + ': ' if what else ''}batch size {batch_size} does not split evenly over {processes} devices; use a device count that divides it"
        )


def check_multi_node(nodes: int, devices: int) -> int:
    """Validate ``--nodes``/``--devices`` against the launcher; returns this process's global rank."""
    if nodes < 1:
        raise ConfigError(f"--nodes must be at least 1, got {nodes}")
    world, rank, launcher = launched_processes()
    if nodes == 1:
        if launcher is None or world == 1:
            return 0
        if world != devices:
            raise ConfigError(
                f"{launcher} started {world} processes but --devices is {devices}; pass --devices {world} (one process per device)"
            )
        return rank
    example = f"srun --nodes {nodes} --ntasks-per-node {devices} python run_benchmark.py ... --nodes {nodes} --devices {devices}"
    if launcher is None:
        raise ConfigError(
            f"--nodes {nodes} needs one process per device on every node, started by srun or torchrun, e.g. {example}"
        )
    if world != nodes * devices:
        raise ConfigError(
            f"--nodes {nodes} --devices {devices} means {nodes * devices} processes, but {launcher} started {world}; e.g. {example}"
        )
    return rank
