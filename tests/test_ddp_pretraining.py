"""--devices 2 on CPU: Lightning DDP (ddp_spawn, gloo) pretrains one method, the history is written once, and the
encoder comes back to the main process and is saved as with one device. CoBooM runs collectives inside its forward
pass (one codebook for all processes); MLVICX re-estimates its exported statistics in the main process afterwards."""

import hashlib
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from datasets import load_dataset
from medssl.nn.backbone import ResNetTrunk
from medssl.plan.jobs import build_plan
from medssl.pretrain.callbacks import rank_seed
from medssl.pretrain.encoder import load_encoder
from medssl.pretrain.train import run_pretraining
from medssl.runtime.options import RunOptions
from medssl.suite.config import load_suite
from tests.test_methods import SMALL_HEADS, SSL_METHODS

# under ddp_spawn: the methods with collectives in their step or a step that leaves parameters without gradient;
# every other registered method (a new one too) runs in the torchrun test below
SPAWNED = [m for m in ("simclr", "coboom", "mlvicx", "swav", "pcrlv2") if m in SSL_METHODS]
OTHER_METHODS = [m for m in SSL_METHODS if m not in SPAWNED]


class RecordEachRank(pl.Callback):
    """Writes, per process, a digest of torch's generator state at every batch start (the views are drawn from it)
    and, at the end, whether DDP broadcast buffers and SwAV's queue share."""

    def __init__(self, folder):
        self.folder = str(folder)

    def _path(self, trainer, name):
        return Path(self.folder) / f"{name}-rank{trainer.global_rank}"

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        with open(self._path(trainer, "rng"), "a") as fh:
            fh.write(hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest() + "\n")

    def on_train_end(self, trainer, module):
        self._path(trainer, "broadcast_buffers").write_text(str(trainer.strategy.model.broadcast_buffers))


@pytest.mark.parametrize("method", SPAWNED)
def test_two_process_pretraining_saves_a_trained_encoder(method, tmp_path, synthetic_root):
    """SwAV (prototypes frozen at the start) and PCRLv2 (one random decoder level per step) crashed under DDP before
    issue 19: 'parameters that were not used in producing the loss'."""
    suite = load_suite("smoke")
    suite["methods"] = [method]
    suite["method_params"] = {method: SMALL_HEADS[method]}
    job = next(j for j in build_plan(suite).pretrain_jobs if j.method == method)
    corpus = job.config["corpus"]
    dataset = load_dataset(corpus["name"], synthetic_root, **corpus["params"])
    (tmp_path / "ranks").mkdir()
    path = run_pretraining(
        job, dataset, tmp_path, RunOptions(progress=False, devices=2), callbacks=[RecordEachRank(tmp_path / "ranks")]
    )
    encoder, meta = load_encoder(path)
    assert meta["devices"] == 2
    torch.manual_seed(job.seed)
    fresh = ResNetTrunk().state_dict()
    trained = encoder.state_dict()
    assert all(torch.isfinite(v).all() for v in trained.values())
    assert any(not torch.equal(fresh[k], v) for k, v in trained.items() if k.endswith("weight")), (
        "the weights came back trained"
    )
    rows = [json.loads(line) for line in (path.parent / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [-1, 0], "one history row per epoch, written by rank 0 only"
    # every process draws its own views: at each batch position the generator states differ between the ranks,
    # and rank 1's stream is the one derived from (seed, rank, epoch), so a second run draws it again
    streams = [(tmp_path / "ranks" / f"rng-rank{rank}").read_text().split() for rank in (0, 1)]
    assert len(streams[0]) == len(streams[1]) > 0 and all(a != b for a, b in zip(*streams))
    torch.manual_seed(rank_seed(job.seed, 1, 0))
    assert streams[1][0] == hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()
    # buffers (SwAV's queue share, MoCo banks) stay each process's own: DDP does not broadcast them from rank 0
    assert {(tmp_path / "ranks" / f"broadcast_buffers-rank{rank}").read_text() for rank in (0, 1)} == {"False"}


def test_monitor_statistics_pass_never_waits_for_other_processes():
    """Under DDP on GPUs the trunk has SyncBatchNorm; the learning-signal monitor re-estimates statistics on a copy in
    train mode on rank 0 only, where SyncBatchNorm would wait for processes that never join (a hang). The copy gets
    plain BatchNorm with the same weights and statistics (no process group is needed to see that: the old copy kept
    its SyncBatchNorm layers)."""
    from medssl.pretrain.callbacks import EpochHistory
    from methods import build_method
    from tests.test_methods import fixed_batch, tiny_protocol

    model = build_method("simclr", tiny_protocol(), SMALL_HEADS["simclr"])
    model.backbone = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.backbone)
    history = EpochHistory(Path("unused.jsonl"), images=fixed_batch(n=8), batch_size=4)
    trunk = history._trunk_with_corpus_statistics(model)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in trunk.modules())
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.backbone.modules()), (
        "the training model keeps its SyncBatchNorm"
    )
    weights = {
        k: v
        for k, v in trunk.state_dict().items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in weights.items())


def test_device_number_and_cuda_settings_reach_lightning_and_torch():
    """--device cuda:1 once trained on GPU 0 (Lightning's devices=1 means 'the first one'); CUDA runs get cuDNN
    autotuning and TF32 fp32 matmuls, CPU runs nothing."""
    from medssl.runtime.precision import configure_cuda, lightning_devices
    from medssl.suite.protocol import ConfigError

    assert lightning_devices("cuda:1") == [1] and lightning_devices("cuda:2", 2) == [2, 3]
    assert lightning_devices("cuda", 2) == 2 and lightning_devices("cpu") == 1
    with pytest.raises(ConfigError, match="write cuda:N"):
        lightning_devices("cuda:x")
    before = (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision())
    try:
        configure_cuda("cpu")
        assert (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()) == before
        configure_cuda("cuda:0")
        assert torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cudnn.benchmark = before[0]
        torch.set_float32_matmul_precision(before[1])


def test_devices_2_launches_through_torchrun_and_pretrains_the_other_methods(tmp_path):
    """Every other registered SSL method (those above run under ddp_spawn) with ``--devices 2``: run_benchmark.py
    starts itself once per device through torchrun, Lightning's ``ddp`` joins the processes (each maps the dataset
    cache itself, nothing goes through /dev/shm), rank 0 alone writes encoders, histories and records, the other
    rank stops after the pretrainings."""
    import subprocess
    import sys

    import yaml

    from medssl.record.store import ResultStore

    root = Path(__file__).resolve().parent.parent
    suite = yaml.safe_load((root / "benchmarks" / "suites" / "smoke.yaml").read_text())
    suite.update(name="ddp-roster", methods=OTHER_METHODS, method_params={m: SMALL_HEADS[m] for m in OTHER_METHODS})
    suite["pretrain"].pop("monitor")
    suite["tasks"][0].update(protocols=["linear"], fractions=[100])
    suite["evaluation"]["seeds"] = [0]
    (tmp_path / "data").mkdir()
    path = tmp_path / "ddp-roster.yaml"
    path.write_text(yaml.safe_dump(suite))
    command = [
        sys.executable,
        "run_benchmark.py",
        "--suite",
        str(path),
        "--device",
        "cpu",
        "--devices",
        "2",
        "--data-root",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "results"),
        "--no-progress",
    ]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    store = ResultStore(tmp_path / "results" / "ddp-roster")
    assert sorted(r["method"] for r in store.records()) == sorted(OTHER_METHODS), (
        "each evaluation stored once, by rank 0"
    )
    for method in OTHER_METHODS:
        encoder_dir = next((tmp_path / "results" / "checkpoints").glob(f"{method}-cxr-*"))
        encoder, meta = load_encoder(encoder_dir / "encoder.pt")
        assert meta["devices"] == 2 and all(torch.isfinite(v).all() for v in encoder.state_dict().values())
        history = [json.loads(line) for line in (encoder_dir / "history.jsonl").read_text().splitlines()]
        assert [row["epoch"] for row in history] == [0], f"{method}: one history row, written by rank 0 only"
    assert "starting 2 processes (torchrun" in done.stdout and done.stdout.count("done:") == 1
