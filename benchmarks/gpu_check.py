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
runs; stages that would start after ``--budget`` seconds are skipped.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FULL = {"image_size": 224, "batch": 64, "warmup": 3, "timed": 20, "cache_size": 256}
DRY = {"image_size": 32, "batch": 8, "warmup": 1, "timed": 1, "cache_size": 48}
NARROW = 64  # dry mode: head widths, queues, codebooks and prototypes at most this large
E2E_METHODS = ["supervised", "simclr", "swav", "dira", "coboom", "pcrlv2"]


class Summary:
    """PASS / FAIL / WARN / SKIP lines, written to summary.md after every stage (a check stopped half-way keeps
    what it found)."""

    def __init__(self, out: Path, header: List[str]):
        self.out, self.header, self.lines = out, header, []

    def add(self, verdict: str, stage: str, text: str) -> None:
        self.lines.append(f"- **{verdict}** [{stage}] {text}")
        print(f"{verdict:<4} [{stage}] {text}", flush=True)
        self.write()

    def fail(self, stage: str, err: Exception) -> None:
        """A stage that raised: FAIL with the error's first line, traceback on the console; the next stage runs."""
        text = str(err).splitlines()[0][:300] if str(err) else ""
        self.add("FAIL", stage, f"{type(err).__name__}: {text}")
        traceback.print_exception(err)

    def check(self, condition: bool, stage: str, text: str, otherwise: str = "FAIL") -> bool:
        self.add("PASS" if condition else otherwise, stage, text)
        return condition

    def write(self) -> None:
        counts = {
            v: sum(line.startswith(f"- **{v}**") for line in self.lines) for v in ("PASS", "FAIL", "WARN", "SKIP")
        }
        totals = ", ".join(f"{n} {v}" for v, n in counts.items())
        (self.out / "summary.md").write_text(
            "\n".join(["# GPU check", "", *self.header, "", f"Result: {totals}", "", *self.lines, ""])
        )


def write_rows(path: Path, rows: List[Dict]) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


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
def method_params(name: str, suite: dict, dry: bool) -> dict:
    """The suite's settings of ``name``; in dry mode every width, queue, codebook and prototype count at most 64."""
    from methods import resolve_config

    params = dict((suite.get("method_params") or {}).get(name) or {})
    if not dry:
        return params
    config = resolve_config(name, params)
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        sized = field.name.endswith("_dim") or field.name in (
            "queue_size",
            "queue_length",
            "codebook_size",
            "n_prototypes",
            "points_per_image",
            "dense_channels",
        )
        if sized and isinstance(value, int) and not isinstance(value, bool) and value > NARROW:
            params[field.name] = NARROW
    return params


def build(name: str, suite: dict, sizes: dict, device: str, dry: bool, steps: int):
    import torch

    from methods import build_method
    from methods.base import PretrainProtocol

    torch.manual_seed(0)
    pretrain = suite["pretrain"]
    protocol = PretrainProtocol(
        image_size=sizes["image_size"],
        epochs=1,
        steps_per_epoch=steps,
        optimizer=dict(pretrain["optimizer"]),
        schedule=dict(pretrain["schedule"]),
        augment=dict(pretrain["augment"]),
        channels_last=device.startswith("cuda"),
    )
    model = build_method(name, protocol, method_params(name, suite, dry)).to(device)
    model.train()
    model.setup("fit")
    config = model.configure_optimizers()
    return model, config["optimizer"], config["lr_scheduler"]["scheduler"]


def busy_share(step: Callable[[], None], device: str) -> float:
    """Share of one step's wall time in which the GPU ran kernels (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        sync(device)
    wall = time.perf_counter() - start
    kernels = sum(
        getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in prof.key_averages()
    )
    return kernels / 1e6 / wall if wall else float("nan")


def stage_methods(summary: Summary, out: Path, device: str, dry: bool, precision: str) -> List[Dict]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.throughput import lightning_order_step
    from medssl.runtime.host_sync import LIGHTLY_CONSTANT_MASKS, HostSyncCounter
    from medssl.suite.config import load_suite

    suite = load_suite("miccai2024")
    sizes = DRY if dry else FULL
    names = [m for m in suite["methods"] if m != "supervised"]
    rows = []
    for name in names:
        stage = f"1 {name}"
        try:
            model, optimizer, scheduler = build(name, suite, sizes, device, dry, sizes["warmup"] + sizes["timed"] + 4)
            images = (
                (
                    torch.rand(
                        sizes["batch"],
                        1,
                        sizes["cache_size"],
                        sizes["cache_size"],
                        generator=torch.Generator().manual_seed(0),
                    )
                    * 255
                )
                .to(torch.uint8)
                .to(device)
            )
            counter = iter(range(1 << 30))
            losses = []

            def step() -> None:
                losses.append(
                    lightning_order_step(model, optimizer, scheduler, images, device, precision, next(counter))
                )

            before = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            for _ in range(sizes["warmup"]):
                step()
            sync(device)
            start = time.perf_counter()
            for _ in range(sizes["timed"]):
                step()
            sync(device)
            seconds = (time.perf_counter() - start) / sizes["timed"]
            flops = FlopCounterMode(display=False)
            with flops:
                step()
            with HostSyncCounter("cuda" if device.startswith("cuda") else None) as syncs:
                if device.startswith("cuda"):
                    torch.cuda.set_sync_debug_mode("warn")
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    step()
                    sync(device)
                if device.startswith("cuda"):
                    torch.cuda.set_sync_debug_mode("default")
            cuda_syncs = sum("synchroniz" in str(w.message).lower() for w in caught)
            busy = busy_share(step, device) if device.startswith("cuda") else float("nan")
            no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            state = model.state_dict()
            targets = [n for n, _ in model.named_children() if n.endswith("_target")]
            target_changed = all(
                any(
                    not torch.equal(before[k], state[k])
                    for k in state
                    if k.startswith(t + ".") and state[k].is_floating_point()
                )
                for t in targets
            )
            target_grads = [n for n, p in model.named_parameters() if n.split(".")[0] in targets and p.grad is not None]
            changed = any(
                not torch.equal(before[k], v)
                for k, v in state.items()
                if k.startswith("backbone.") and v.is_floating_point()
            )
            finite = all(torch.isfinite(loss).all() for loss in losses) and all(
                torch.isfinite(v).all() for v in state.values() if v.is_floating_point()
            )
            channels_last = (not device.startswith("cuda")) or model.backbone.conv1.weight.is_contiguous(
                memory_format=torch.channels_last
            )
            memory = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
            ours = {place: n for (_, place), n in syncs.counts.items()}
            unexpected = syncs.outside(LIGHTLY_CONSTANT_MASKS)
            row = {
                "method": name,
                "image_size": sizes["image_size"],
                "batch": sizes["batch"],
                "precision": precision,
                "ms_per_step": 1e3 * seconds,
                "images_per_s": sizes["batch"] / seconds,
                "gflop_per_step": flops.get_total_flops() / 1e9,
                "tflops": flops.get_total_flops() / seconds / 1e12,
                "gpu_busy_share": busy,
                "host_sync_ops": syncs.total,
                "cuda_sync_warnings": cuda_syncs,
                "peak_memory_gib": memory,
                "params_without_grad": len(no_grad),
                "loss": float(losses[-1].float()),
            }
            rows.append(row)
            write_rows(out / "steps.csv", rows)
            summary.check(
                finite and changed,
                stage,
                f"{row['images_per_s']:.0f} images/s ({row['ms_per_step']:.1f} ms/step, {row['gflop_per_step']:.0f} GFLOP/step), "
                f"finite: {finite}, trunk weights changed: {changed}",
            )
            if targets:
                summary.check(
                    target_changed and not target_grads,
                    stage,
                    f"EMA targets {', '.join(targets)} changed without gradients ({len(target_grads)} with a gradient)",
                )
            summary.check(channels_last, stage, "trunk kept channels_last")
            summary.check(
                not unexpected,
                stage,
                f"host syncs per step: {syncs.total} ({', '.join(f'{p} x{n}' for p, n in ours.items()) or 'none'})"
                + ("" if device.startswith("cuda") else "; on the CPU reads of CPU tensors count too"),
                otherwise="WARN",
            )
            if no_grad:
                summary.add(
                    "WARN",
                    stage,
                    f"{len(no_grad)} parameters without a gradient after the step: {', '.join(no_grad[:4])}{' ...' if len(no_grad) > 4 else ''}"
                    + (" (SwAV's prototypes are frozen at step 0)" if name == "swav" else ""),
                )
            model = optimizer = scheduler = None  # freed before the next method's
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        except Exception as err:  # noqa: BLE001 - one method's failure is reported, the others still run
            summary.fail(stage, err)
    return rows


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


# ----- 4 -------------------------------------------------------------------------------------------------------
def e2e_suite(dry: bool) -> dict:
    """A temporary suite on synthetic chest phantoms with miccai2024's optimiser and augmentation."""
    from medssl.suite.config import load_suite

    reference = load_suite("miccai2024")
    n, size, image_size, batch = (64, 48, 32, 16) if dry else (1024, 256, 224, 64)
    cxr = {"name": "synthetic_cxr", "params": {"n_images": n, "size": size, "seed": 0}}
    masks = {"name": "synthetic_cxr", "params": {"n_images": n // 4 if not dry else n, "size": size, "seed": 1}}
    methods = ["supervised", "simclr"] if dry else E2E_METHODS
    suite = {
        "name": "gpu-check",
        "description": "benchmarks/gpu_check.py stage 4",
        "pretrain": {
            "datasets": {"cxr": {**cxr, "splits": ["train", "val"]}},
            "backbone": "resnet18",
            "image_size": image_size,
            "epochs": 1 if dry else 2,
            "batch_size": batch,
            "optimizer": reference["pretrain"]["optimizer"],
            "schedule": {**reference["pretrain"]["schedule"], "warmup_epochs": 0},
            "augment": reference["pretrain"]["augment"],
            "seeds": [0],
        },
        "methods": methods,
        "tasks": [
            {"name": "CXR", "dataset": cxr, "pretrain": "cxr", "protocols": ["linear", "finetune"], "fractions": [100]},
            {
                "name": "PTX-seg",
                "type": "segmentation",
                "dataset": masks,
                "pretrain": "cxr",
                "protocols": ["linear", "finetune"],
                "fractions": [100],
            },
        ],
        "evaluation": {
            "seeds": [0],
            "linear": {"solver": "lbfgs", "l2": [1.0e-2, 1.0]},
            "finetune": {
                "epochs": 1,
                "min_steps": 20 if not dry else 2,
                "lr": 1.0e-4,
                "weight_decay": 1.0e-4,
                "batch_size": batch,
            },
            "segmentation": {
                "epochs": 1,
                "min_steps": 20 if not dry else 2,
                "lr": 1.0e-3,
                "weight_decay": 1.0e-4,
                "batch_size": batch // 2,
            },
        },
    }
    if dry:
        suite["method_params"] = {"simclr": {"hidden_dim": NARROW, "output_dim": 32}}
    return suite


def suite_twice(
    summary: Summary,
    stage: str,
    suite: dict,
    device: str,
    budget_s: float,
    precision: str,
    checks: Callable[[List[Dict], float, Path], None],
) -> None:
    """Run ``suite`` with run_benchmark.py in a temporary folder twice: ``checks(records, seconds of the first run,
    folder)``, then the second run must add nothing and the records must name ``precision`` and the device."""
    import yaml

    from medssl.record.store import ResultStore

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        path = folder / f"{suite['name']}.yaml"
        (folder / "data").mkdir()
        path.write_text(yaml.safe_dump(suite))
        command = [
            sys.executable,
            str(ROOT / "run_benchmark.py"),
            "--suite",
            str(path),
            "--device",
            device,
            "--data-root",
            str(folder / "data"),
            "--out",
            str(folder / "results"),
            "--reports",
            str(folder / "reports"),
            "--no-progress",
        ]
        runs = []
        for attempt in range(2):
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, timeout=max(60, budget_s))
            runs.append((done, time.perf_counter() - start))
            if done.returncode != 0:
                output = (done.stderr or done.stdout).strip()
                summary.add(
                    "FAIL",
                    stage,
                    f"run {attempt + 1} exited {done.returncode}: {output.splitlines()[-1][:300] if output else ''}",
                )
                return
        records = ResultStore(folder / "results" / suite["name"]).records()
        checks(records, runs[0][1], folder)
        summary.check("done: 0 evaluations run" in runs[1][0].stdout, stage, "the re-run adds no evaluation")
        precisions = {r.get("precision") for r in records}
        if device.startswith("cuda"):
            import torch

            name = torch.cuda.get_device_name(0)
            summary.check(
                precision in precisions, stage, f"records name their precision: {sorted(map(str, precisions))}"
            )
            summary.check(
                all(name in json.dumps(r.get("hardware"), sort_keys=True) for r in records),
                stage,
                f"records name the GPU ({name})",
            )
        else:
            summary.check(
                bool(precisions) and None not in precisions,
                stage,
                f"records name their precision: {sorted(map(str, precisions))}",
            )


def stage_end_to_end(summary: Summary, device: str, dry: bool, budget_s: float) -> None:
    stage = "4 end to end"
    suite_twice(
        summary,
        stage,
        e2e_suite(dry),
        device,
        budget_s,
        "bf16-mixed",
        lambda records, seconds, folder: summary.add("PASS", stage, f"{len(records)} evaluations in {seconds:.0f} s"),
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
            images = (
                (
                    torch.rand(
                        FULL["batch"],
                        1,
                        FULL["cache_size"],
                        FULL["cache_size"],
                        generator=torch.Generator().manual_seed(0),
                    )
                    * 255
                )
                .to(torch.uint8)
                .to(device)
            )

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


# ----- 6 -------------------------------------------------------------------------------------------------------
def ct_suite(dry: bool) -> dict:
    """The vox2vec3d suite on fewer phantoms and steps (dry: 8 mm, FPN3d(1, 4, 3), 16 x 16 x 8 patches)."""
    from medssl.suite.config import load_suite

    suite = load_suite("vox2vec3d")
    data = {"n_labelled": 10, "n_unlabelled": 4, **({"spacing": [8.0, 8.0, 8.0]} if dry else {})}
    suite["name"] = "gpu-check-ct"
    suite["pretrain"].update(
        datasets={
            "ct": {"name": "synthetic_ct", "params": {**data, "part": "unlabelled"}, "splits": ["train", "val", "test"]}
        },
        epochs=2,
        steps_per_epoch=10,
    )
    suite["tasks"][0]["dataset"] = {"name": "synthetic_ct", "params": data}
    segmentation = suite["evaluation"]["segmentation3d"]
    segmentation.update(epochs=2, steps_per_epoch=5)
    if dry:
        suite["method_params"]["vox2vec3d"].update(
            base_channels=4, num_levels=3, patch_size=[16, 16, 8], max_voxels_per_pair=64
        )
        segmentation["patch_size"] = [16, 16, 8]
    else:  # the official pairs and positives per step
        suite["method_params"]["vox2vec3d"].update(pairs_per_step=10, max_voxels_per_pair=1024)
    return suite


def stage_ct(summary: Summary, device: str, dry: bool, budget_s: float) -> None:
    """The CT track (medssl/run/ct.py) end to end on the device, twice; fp32 as the official code."""
    stage = "6 CT track"

    def checks(records: List[Dict], seconds: float, folder: Path) -> None:
        rows = sorted({(r["method"], r["protocol"], r["head"]) for r in records})
        summary.check(
            len(rows) == 6 and all(0 <= r["value"] <= 1 for r in records),
            stage,
            f"{len(records)} records of {len(rows)} rows in {seconds:.0f} s, Dice in [0, 1]",
        )
        summary.check(
            (folder / "reports" / "gpu-check-ct" / "ct_table.md").exists(), stage, "the organ table is written"
        )

    suite_twice(summary, stage, ct_suite(dry), device, budget_s, "32-true", checks)


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
