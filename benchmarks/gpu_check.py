"""The GPU acceptance check: is every method right and fast on CUDA? (issue 19; design in shared/specs/gpu-readiness.md)

    python benchmarks/gpu_check.py [--out reports/benchmarks/gpu] [--budget 480] [--stages 0,1,2,3,4,5,6]

One script, under 8 minutes on one H200. Every stage writes PASS / FAIL / WARN / SKIP lines to ``summary.md``:

0. Environment: GPU, torch / CUDA / cuDNN versions, /dev/shm size, CPU count; CUDA and bf16 present.
1. Every SSL row of miccai2024 (224 px, batch 64, the papers' heads, LARS, channels_last, bf16) on a uint8 batch
   already on the GPU: 3 warm-up and 20 timed steps in Lightning's order (``throughput.lightning_order_step``:
   views, loss, backward, LARS, EMA, ``on_train_batch_end``), then one step each for FLOPs
   (``FlopCounterMode``), the GPU's busy share (``torch.profiler``) and host syncs (``HostSyncCounter``; on CUDA
   also ``torch.cuda.set_sync_debug_mode``), and the parameters left without a gradient. Checks: finite loss and
   weights, weights changed, EMA targets changed without gradients, channels_last kept; ``steps.csv``.
2. fp16: SimCLR and DiRA through ``Trainer(precision="16-mixed")`` for 10 steps: finite, the gradient scaler's scale
   above 0, DiRA's discriminator trained.
3. Data path: images/s of the pretraining loader (cache reads, pinned, copied to the GPU), of a GPU-resident gather
   and of two batched augmented views; WARN if the loader is below 2x the fastest method; ``data.csv``.
4. End to end: a temporary suite (synthetic chest phantoms, 1,024 images at 256 px and 256 with masks, 224 px,
   batch 64, 2 epochs, miccai2024's optimiser and augmentation; supervised, SimCLR, SwAV, DiRA, CoBooM, PCRLv2;
   linear probe, 20 fine-tuning and 20 segmentation steps, seed 0, 100 %) run with ``run_benchmark.py``; the re-run
   must add no evaluation; the records must name bf16-mixed and the GPU.
5. torch.compile of SimCLR and SwAV's loss computation: compile time, graph breaks, recompiles, eager vs compiled
   ms/step, state_dict keys unchanged; ``compile.csv``.
6. The CT track: the vox2vec3d suite on 14 phantoms with 20 pretraining steps of the official 10 pairs x 1,024
   positives and 10 evaluation steps per row, run twice with ``run_benchmark.py``: six rows recorded with Dice in
   [0, 1], the re-run adds nothing, the records name fp32 and the GPU, the organ table is written.

Without CUDA it runs a dry version of stages 0, 1, 3, 4 and 6 on the CPU at toy sizes (32 px, batch 8, heads and
queues narrowed to 64, one timed step; end to end on 64 images), which checks the script itself and every code path
it drives (the tests run it), and says SKIP for what needs a GPU. A stage that fails is reported and the next one
runs; stages that would start after ``--budget`` seconds are skipped. Stage 1 lives in ``gpu_steps.py``, stages 4 and 6
in ``gpu_runs.py``, what they share (sizes, the summary, building a method) in ``gpu_common.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_common import DRY, FULL, Summary, build, sync, uint8_batch, write_rows  # noqa: E402
from benchmarks.gpu_runs import stage_ct, stage_end_to_end  # noqa: E402
from benchmarks.gpu_steps import stage_methods  # noqa: E402


# ----- 0 -------------------------------------------------------------------------------------------------------
def environment(cuda: bool) -> List[str]:
    import torch

    shm = shutil.disk_usage("/dev/shm").total / 2**20 if os.path.exists("/dev/shm") else float("nan")
    lines = [
        f"- python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
        f"- {os.cpu_count()} CPUs, /dev/shm {shm:.0f} MB, {platform.platform()}",
    ]
    if cuda:
        props = torch.cuda.get_device_properties(0)
        lines.insert(
            0, f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible"
        )
    else:
        lines.insert(0, "- GPU: none (CPU dry run: toy sizes, GPU-only checks skipped)")
    return lines


def stage_environment(summary: Summary, cuda: bool) -> None:
    import torch

    if not cuda:
        summary.add("SKIP", "0 env", "no CUDA device: CUDA and bf16 checks skipped")
        return
    summary.check(torch.cuda.is_available(), "0 env", f"CUDA available: {torch.cuda.get_device_name(0)}")
    summary.check(torch.cuda.is_bf16_supported(), "0 env", "bf16 supported")


# ----- 1 -------------------------------------------------------------------------------------------------------


# ----- 2 -------------------------------------------------------------------------------------------------------
def stage_fp16(summary: Summary, device: str, sizes: dict) -> None:
    import pytorch_lightning as pl
    import torch

    from medssl import quiet_lightning
    from medssl.data.stream import MappedImages, ShuffledBatches
    from medssl.suite.config import load_suite

    quiet_lightning()
    suite = load_suite("miccai2024")
    import numpy as np

    array = np.random.default_rng(0).integers(
        0, 256, size=(10 * sizes["batch"], 1, sizes["cache_size"], sizes["cache_size"]), dtype=np.uint8
    )
    for name in ("simclr", "dira"):
        stage = f"2 fp16 {name}"
        try:
            model, _, _ = build(name, suite, sizes, device, False, 10)
            loader = ShuffledBatches(MappedImages(array), sizes["batch"], torch.Generator().manual_seed(0))
            before = {k: v.detach().clone() for k, v in model.state_dict().items()}
            trainer = pl.Trainer(
                max_steps=10,
                accelerator="gpu",
                devices=1,
                precision="16-mixed",
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                use_distributed_sampler=False,
            )
            trainer.fit(model, loader)
            scale = (
                float(trainer.precision_plugin.scaler.get_scale())
                if getattr(trainer.precision_plugin, "scaler", None) is not None
                else float("nan")
            )
            state = model.state_dict()
            finite = all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
            summary.check(
                finite and scale > 0,
                stage,
                f"10 steps under 16-mixed: weights finite {finite}, gradient scale {scale:g}",
            )
            if name == "dira":
                changed = any(
                    not torch.equal(before[k].cpu(), state[k].cpu()) for k in state if k.startswith("discriminator.")
                )
                discriminator_scale = (
                    float(model.discriminator_scaler.get_scale())
                    if model.discriminator_scaler is not None
                    else float("nan")
                )
                summary.check(
                    changed and discriminator_scale > 0,
                    stage,
                    f"discriminator trained (changed: {changed}, its gradient scale {discriminator_scale:g})",
                )
        except Exception as err:  # noqa: BLE001
            summary.fail(stage, err)


# ----- 3 -------------------------------------------------------------------------------------------------------
def stage_data(summary: Summary, out: Path, device: str, sizes: dict, method_rows: List[Dict]) -> None:
    import numpy as np
    import torch

    from benchmarks.throughput import random_images_file
    from medssl.data.stream import MappedImages, ShuffledBatches
    from medssl.nn.augment import augment_view, view_configs
    from medssl.suite.config import load_suite

    stage = "3 data"
    batches = 40 if device.startswith("cuda") else 4
    with tempfile.TemporaryDirectory() as folder:
        images = MappedImages(
            random_images_file(
                Path(folder) / "images.npy", (batches * sizes["batch"], 1, sizes["cache_size"], sizes["cache_size"])
            )
        )
        cuda = device.startswith("cuda")
        rows = []
        loader = ShuffledBatches(images, sizes["batch"], torch.Generator().manual_seed(0), pin=cuda)
        sync(device)
        start = time.perf_counter()
        for (batch,) in loader:
            batch.to(device, non_blocking=True)
        sync(device)
        rows.append(
            {
                "path": "loader: cache reads" + (", pinned, copied to the GPU" if cuda else ""),
                "images_per_s": len(images) / (time.perf_counter() - start),
            }
        )
        if cuda:
            resident = ShuffledBatches(
                images, sizes["batch"], torch.Generator().manual_seed(0), resident=True, resident_device=device
            )
            list(resident)  # the one-time copy to the GPU
            sync(device)
            start = time.perf_counter()
            for _ in resident:
                pass
            sync(device)
            rows.append(
                {"path": "loader: GPU-resident gather", "images_per_s": len(images) / (time.perf_counter() - start)}
            )
        configs = view_configs(load_suite("miccai2024")["pretrain"]["augment"], 2)
        batch = images[np.arange(sizes["batch"])].to(device)
        sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            for cfg in configs:
                augment_view(batch, sizes["image_size"], cfg)
        sync(device)
        rows.append(
            {
                "path": "two batched augmented views",
                "images_per_s": batches * sizes["batch"] / (time.perf_counter() - start),
            }
        )
    write_rows(out / "data.csv", rows)
    fastest = max((r["images_per_s"] for r in method_rows), default=None)
    for row in rows:
        summary.add("PASS", stage, f"{row['path']}: {row['images_per_s']:.0f} images/s")
    if fastest:
        best_loader = max(r["images_per_s"] for r in rows if r["path"].startswith("loader"))
        summary.check(
            best_loader >= 2 * fastest,
            stage,
            f"fastest loader {best_loader:.0f} images/s vs 2 x the fastest method ({fastest:.0f} images/s)",
            otherwise="WARN",
        )


# ----- 5 -------------------------------------------------------------------------------------------------------
def stage_compile(summary: Summary, out: Path, device: str, precision: str) -> None:
    import torch
    import torch._dynamo

    from medssl.runtime.precision import autocast
    from medssl.suite.config import load_suite

    suite = load_suite("miccai2024")
    rows = []
    for name in ("simclr", "swav"):
        stage = f"5 compile {name}"
        try:
            model, optimizer, scheduler = build(name, suite, FULL, device, False, 40)
            keys = list(model.state_dict())
            images = uint8_batch(FULL, device)

            def loss_step(compute):
                with autocast(device, precision):
                    loss = compute(model.make_views(images), images)["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            def timed(compute, n=10):
                sync(device)
                start = time.perf_counter()
                for _ in range(n):
                    loss_step(compute)
                sync(device)
                return 1e3 * (time.perf_counter() - start) / n

            loss_step(model.compute_loss)
            eager = timed(model.compute_loss)
            torch._dynamo.reset()
            explained = torch._dynamo.explain(model.compute_loss)(model.make_views(images), images)
            compiled = torch.compile(model.compute_loss)
            start = time.perf_counter()
            loss_step(compiled)
            sync(device)
            compile_s = time.perf_counter() - start
            compiled_ms = timed(compiled)
            recompiles = torch._dynamo.utils.counters["stats"].get("unique_graphs", 0)
            row = {
                "method": name,
                "compile_s": compile_s,
                "graph_breaks": explained.graph_break_count,
                "graphs": explained.graph_count,
                "unique_graphs": recompiles,
                "eager_ms": eager,
                "compiled_ms": compiled_ms,
                "speedup": eager / compiled_ms,
            }
            rows.append(row)
            write_rows(out / "compile.csv", rows)
            summary.check(list(model.state_dict()) == keys, stage, "state_dict keys unchanged")
            summary.add(
                "PASS" if compiled_ms <= eager else "WARN",
                stage,
                f"compile {compile_s:.0f} s, {explained.graph_break_count} graph breaks, eager {eager:.1f} ms vs compiled {compiled_ms:.1f} ms",
            )
        except Exception as err:  # noqa: BLE001
            summary.fail(stage, err)


def main(argv=None) -> int:
    import torch

    from medssl.runtime.precision import configure_cuda, precision_for

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=str(ROOT / "reports" / "benchmarks" / "gpu"), help="folder for summary.md and the CSVs"
    )
    parser.add_argument("--budget", type=float, default=480, help="seconds; stages that would start later are skipped")
    parser.add_argument("--stages", default="0,1,2,3,4,5,6")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dry = not cuda
    precision = precision_for(device, "auto") if cuda else "32-true"
    configure_cuda(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary(
        out,
        environment(cuda)
        + [
            f"- device {device}, precision {precision}, {'dry run at toy sizes' if dry else 'full sizes'}; "
            f"command: python benchmarks/gpu_check.py {' '.join(argv if argv is not None else sys.argv[1:])}"
        ],
    )
    summary.write()
    stages = {int(s) for s in args.stages.split(",")}
    sizes = DRY if dry else FULL
    method_rows: List[Dict] = []

    def due(stage: int, needs_cuda: bool, what: str) -> bool:
        if stage not in stages:
            return False
        if needs_cuda and not cuda:
            summary.add("SKIP", str(stage), f"{what}: needs a CUDA device")
            return False
        if time.perf_counter() - started > args.budget:
            summary.add("SKIP", str(stage), f"{what}: the {args.budget:.0f}-s budget is spent")
            return False
        return True

    if due(0, False, "environment"):
        stage_environment(summary, cuda)
    if due(1, False, "per-method steps"):
        method_rows = stage_methods(summary, out, device, dry, precision)
    if due(2, True, "fp16 through Lightning"):
        stage_fp16(summary, device, sizes)
    if due(3, False, "data path"):
        stage_data(summary, out, device, sizes, method_rows)
    if due(4, False, "end to end"):
        stage_end_to_end(summary, device, dry, args.budget - (time.perf_counter() - started))
    if due(5, True, "torch.compile"):
        stage_compile(summary, out, device, precision)
    if due(6, False, "CT track"):
        stage_ct(summary, device, dry, args.budget - (time.perf_counter() - started))
    summary.add("PASS", "total", f"{time.perf_counter() - started:.0f} s")
    print(f"wrote {out / 'summary.md'}")
    return 1 if any(line.startswith("- **FAIL**") for line in summary.lines) else 0


if __name__ == "__main__":
    sys.exit(main())
