"""The multi-node path: two "nodes" of one CPU process each, started by torchrun on this machine (gloo)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medssl.record.store import ResultStore
from medssl.runtime.cluster import check_multi_node
from medssl.suite.protocol import ConfigError
from tests.distributed import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_two_nodes_pretrain_together_and_rank_zero_evaluates(tmp_path):
    port = free_port()
    (tmp_path / "data").mkdir()
    suite_args = [
        "--suite",
        "smoke",
        "--methods",
        "simclr",
        "--seeds",
        "0",
        "--fractions",
        "100",
        "--device",
        "cpu",
        "--nodes",
        "2",
        "--devices",
        "1",
        "--data-root",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "results"),
        "--reports",
        str(tmp_path / "reports"),
        "--no-progress",
    ]

    def node(rank):
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node-rank",
            str(rank),
            "--nproc-per-node",
            "1",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
        ]
        return subprocess.Popen(
            launcher + ["run_benchmark.py"] + suite_args,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    nodes = [node(0), node(1)]
    outputs = [p.communicate(timeout=600)[0] for p in nodes]
    for p, out in zip(nodes, outputs):
        assert p.returncode == 0, out[-3000:]
    # a process that never joined would leave the other waiting in DDP's rendezvous: both finishing shows they trained together
    store = ResultStore(tmp_path / "results" / "smoke")
    records = store.records()
    assert len(records) == 2 and len(store.keys()) == 2, "each evaluation must be stored once, by rank 0"
    assert [key.split("-cxr-")[0] for key in store.pretraining_records()] == ["simclr"]
    assert len(store.pretraining_path.read_text().splitlines()) == 1
    encoder_dir = next((tmp_path / "results" / "checkpoints").glob("simclr-cxr-*"))
    history = [json.loads(line) for line in (encoder_dir / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [-1, 0]  # the initial probe, then the one epoch
    assert (tmp_path / "reports" / "smoke" / "table1.md").exists()
    assert "done: 2 evaluations run" in outputs[0] and "done:" not in outputs[1]


def test_multi_node_needs_a_launcher(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert check_multi_node(1, 4) == 0
    with pytest.raises(ConfigError, match="started by srun or torchrun"):
        check_multi_node(2, 4)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    with pytest.raises(ConfigError, match="means 8 processes, but srun started 4"):
        check_multi_node(2, 4)
    assert check_multi_node(2, 2) == 3
    # one node started by torchrun: its process count must be --devices
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.delenv("SLURM_PROCID")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert check_multi_node(1, 2) == 1
    with pytest.raises(ConfigError, match="torchrun started 2 processes but --devices is 4; pass --devices 2"):
        check_multi_node(1, 4)
    with pytest.raises(ConfigError, match="at least 1"):
        check_multi_node(0, 1)
