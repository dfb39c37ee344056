"""Stage 1 of benchmarks/gpu_check.py: every SSL row of miccai2024 on a uint8 batch already on the device, stepped
in Lightning's order (``throughput.lightning_order_step``): timed steps, then one step each for FLOPs, host syncs
and (on CUDA) the GPU's busy share, and the checks on what the steps did to the weights."""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List

from benchmarks.gpu_common import DRY, FULL, Summary, build, sync, uint8_batch, write_rows


@dataclasses.dataclass
class StepState:
    """What one method's steps did to its weights."""

    finite: bool  # every loss and every floating-point weight and buffer
    changed: bool  # some trunk weight moved
    targets: List[str]  # the EMA (``*_target``) children
    target_changed: bool  # every EMA target moved ...
    target_grads: List[str]  # ... and these of its parameters got a gradient (should be none)
    no_grad: List[str]  # trainable parameters left without a gradient
    channels_last: bool  # the trunk's first convolution is still channels_last (always True off CUDA)


@dataclasses.dataclass
class MethodSteps:
    """One method's row of steps.csv, its weight checks and the host-sync counter of its counted step."""

    row: Dict
    state: StepState
    syncs: object  # medssl.runtime.host_sync.HostSyncCounter


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


def seconds_per_step(step: Callable[[], None], sizes: dict, device: str) -> float:
    """``sizes["warmup"]`` untimed steps, then the mean wall time of ``sizes["timed"]`` steps."""
    for _ in range(sizes["warmup"]):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(sizes["timed"]):
        step()
    sync(device)
    return (time.perf_counter() - start) / sizes["timed"]


def counted_step(step: Callable[[], None], device: str):
    """One step under ``HostSyncCounter`` (and on CUDA ``set_sync_debug_mode("warn")``): the counter and the
    number of CUDA synchronisation warnings."""
    import torch

    from medssl.runtime.host_sync import HostSyncCounter

    cuda = device.startswith("cuda")
    with HostSyncCounter("cuda" if cuda else None) as syncs:
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
            sync(device)
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    return syncs, sum("synchroniz" in str(w.message).lower() for w in caught)


def state_after(model, before: Dict, losses: List, device: str) -> StepState:
    """Compare ``model``'s state with ``before`` (its state_dict before the first step)."""
    import torch

    state = model.state_dict()
    targets = [n for n, _ in model.named_children() if n.endswith("_target")]

    def moved(prefix: str) -> bool:
        return any(
            not torch.equal(before[k], v) for k, v in state.items() if k.startswith(prefix) and v.is_floating_point()
        )

    finite = all(torch.isfinite(loss).all() for loss in losses) and all(
        torch.isfinite(v).all() for v in state.values() if v.is_floating_point()
    )
    return StepState(
        finite=finite,
        changed=moved("backbone."),
        targets=targets,
        target_changed=all(moved(t + ".") for t in targets),
        target_grads=[n for n, p in model.named_parameters() if n.split(".")[0] in targets and p.grad is not None],
        no_grad=[n for n, p in model.named_parameters() if p.requires_grad and p.grad is None],
        channels_last=(not device.startswith("cuda"))
        or model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last),
    )


def measure(name: str, suite: dict, sizes: dict, device: str, dry: bool, precision: str) -> MethodSteps:
    """Build ``name`` at ``sizes`` and step it: timed, FLOPs, host syncs, busy share, then the weight checks."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.throughput import lightning_order_step

    model, optimizer, scheduler = build(name, suite, sizes, device, dry, sizes["warmup"] + sizes["timed"] + 4)
    images = uint8_batch(sizes, device)
    counter = iter(range(1 << 30))
    losses = []

    def step() -> None:
        losses.append(lightning_order_step(model, optimizer, scheduler, images, device, precision, next(counter)))

    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = seconds_per_step(step, sizes, device)
    flops = FlopCounterMode(display=False)
    with flops:
        step()
    syncs, cuda_syncs = counted_step(step, device)
    busy = busy_share(step, device) if cuda else float("nan")
    state = state_after(model, before, losses, device)
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
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "params_without_grad": len(state.no_grad),
        "loss": float(losses[-1].float()),
    }
    return MethodSteps(row, state, syncs)


def report(summary: Summary, stage: str, name: str, measured: MethodSteps, device: str) -> None:
    """The PASS / FAIL / WARN lines of one method."""
    from medssl.runtime.host_sync import LIGHTLY_CONSTANT_MASKS

    row, state, syncs = measured.row, measured.state, measured.syncs
    summary.check(
        state.finite and state.changed,
        stage,
        f"{row['images_per_s']:.0f} images/s ({row['ms_per_step']:.1f} ms/step, {row['gflop_per_step']:.0f} GFLOP/step), "
        f"finite: {state.finite}, trunk weights changed: {state.changed}",
    )
    if state.targets:
        summary.check(
            state.target_changed and not state.target_grads,
            stage,
            f"EMA targets {', '.join(state.targets)} changed without gradients ({len(state.target_grads)} with a gradient)",
        )
    summary.check(state.channels_last, stage, "trunk kept channels_last")
    ours = {place: n for (_, place), n in syncs.counts.items()}
    summary.check(
        not syncs.outside(LIGHTLY_CONSTANT_MASKS),
        stage,
        f"host syncs per step: {syncs.total} ({', '.join(f'{p} x{n}' for p, n in ours.items()) or 'none'})"
        + ("" if device.startswith("cuda") else "; on the CPU reads of CPU tensors count too"),
        otherwise="WARN",
    )
    if state.no_grad:
        shown = ", ".join(state.no_grad[:4]) + (" ..." if len(state.no_grad) > 4 else "")
        summary.add(
            "WARN",
            stage,
            f"{len(state.no_grad)} parameters without a gradient after the step: {shown}"
            + (" (SwAV's prototypes are frozen at step 0)" if name == "swav" else ""),
        )


def stage_methods(summary: Summary, out: Path, device: str, dry: bool, precision: str) -> List[Dict]:
    """Stage 1 for every SSL method of miccai2024; rows written to ``out/steps.csv`` as they come."""
    import torch

    from medssl.suite.config import load_suite

    suite = load_suite("miccai2024")
    sizes = DRY if dry else FULL
    rows = []
    for name in [m for m in suite["methods"] if m != "supervised"]:
        stage = f"1 {name}"
        try:
            measured = measure(name, suite, sizes, device, dry, precision)
            rows.append(measured.row)
            write_rows(out / "steps.csv", rows)
            report(summary, stage, name, measured, device)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        except Exception as err:  # noqa: BLE001 - one method's failure is reported, the others still run
            summary.fail(stage, err)
    return rows
