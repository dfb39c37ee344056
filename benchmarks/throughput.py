"""Pretraining throughput of every method, the data path's speed, and (on CPU) how close training gets to the machine's
FLOP limit (issue 6).

    python benchmarks/throughput.py [--suite quick] [--methods simclr,byol] [--steps 8] [--device auto]

For each method of the suite, at the suite's image size, batch size, optimiser, augmentations and method settings,
in a fresh process: pretraining images/s of full training steps (views, forward, backward, optimiser step, EMA
update) under the precision a run would use, the FLOPs of one step (``torch.utils.flop_counter``: convolutions and
matrix products of forward and backward) and the peak memory (CUDA: peak allocated; CPU: the process's peak
resident set, which includes ~0.5 GB of imported libraries). Then, on the suite's pretraining corpus cache:

* cache read: uint8 batches gathered from the memory-mapped cache in shuffled order, images/s;
* batched augmentation: the suite's views made by ``medssl.nn.augment`` on a whole batch on the device;
* per-sample torchvision: the same kinds of transforms (RandomResizedCrop, flip, brightness/contrast, blur) applied
  image by image with ``torchvision.transforms.v2``, as a CPU data-loader worker would.

On CPU it also measures the machine's FLOP limit (large matrix products in the training precision) and reports
each method's achieved FLOP/s as a share of it, plus that share for a bare ResNet-18 training step (the issue's
>= 50 % target). Prints a table and writes ``reports/benchmarks/throughput-<device>.csv``.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_steps(step, steps: int, device: str) -> tuple:
    """(FLOPs of one step, seconds per step): two warm-up steps, one counted by ``torch.utils.flop_counter``, then
    ``steps`` timed ones."""
    from torch.utils.flop_counter import FlopCounterMode

    for _ in range(2):
        step()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return counter.get_total_flops(), (time.perf_counter() - start) / steps


def lightning_order_step(model, optimizer, scheduler, images, device: str, precision: str, batch_idx: int = 0):
    """One pretraining step in the order Lightning's automatic optimisation runs it: ``training_step`` (views, loss,
    logging) under the run's autocast, zero_grad, backward, ``on_after_backward`` (SwAV's prototype freeze),
    the optimiser and scheduler steps, ``on_train_batch_end`` (EMA targets, DiRA's discriminator). Without a
    Trainer ``self.log`` does nothing and ``global_step`` reads 0. Returns the loss (on the device)."""
    from medssl.runtime.precision import autocast

    with autocast(device, precision), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer: logging does nothing
        loss = model.training_step(images, batch_idx)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    model.on_after_backward()
    optimizer.step()
    scheduler.step()
    model.on_train_batch_end(loss, images, batch_idx)
    return loss.detach()


def built_method(name: str, suite: dict, device: str, steps_per_epoch: int, image_size=None, params=None):
    """(model, optimizer, lr scheduler) of ``name`` built as a run builds it from the suite's pretraining protocol
    (``image_size`` and method ``params`` default to the suite's), in training mode, seeded with 0."""
    import torch

    from methods import build_method
    from methods.base import PretrainProtocol

    torch.manual_seed(0)
    pretrain = suite["pretrain"]
    protocol = PretrainProtocol(
        image_size=int(pretrain["image_size"]) if image_size is None else image_size,
        epochs=1,
        steps_per_epoch=steps_per_epoch,
        optimizer=dict(pretrain["optimizer"]),
        schedule=dict(pretrain["schedule"]),
        augment=dict(pretrain["augment"]),
        channels_last=device.startswith("cuda"),
    )
    if params is None:
        params = (suite.get("method_params") or {}).get(name)
    model = build_method(name, protocol, params).to(device)
    model.train()
    model.setup("fit")
    config = model.configure_optimizers()
    return model, config["optimizer"], config["lr_scheduler"]["scheduler"]


def training_step(name: str, suite: dict, device: str, precision: str, batch: int, steps_per_epoch: int):
    """A closure running one full pretraining step of ``name`` as a run makes it (``lightning_order_step``) at the
    suite's image size, optimiser, augmentations and method settings, on the uint8 batch it is given (by default a
    fixed random batch at twice the training size, as views are cut from larger cached images)."""
    import torch

    model, optimizer, scheduler = built_method(name, suite, device, steps_per_epoch)
    pretrain = suite["pretrain"]
    size = int(pretrain["image_size"]) * 2  # the views are resized from a larger cached image, as in a run
    images = (
        (torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).to(device)
    )
    counter = iter(range(1 << 62))

    def step(batch=None) -> None:
        lightning_order_step(
            model, optimizer, scheduler, images if batch is None else batch.to(device), device, precision, next(counter)
        )

    return step


def method_throughput(name: str, suite_name: str, device: str, steps: int, precision: str, threads: int) -> dict:
    """Runs in its own process: images/s, FLOPs per step and peak memory of ``name``'s training step."""
    import numpy as np
    import torch

    from medssl.suite.config import load_suite

    torch.set_num_threads(threads)
    suite = load_suite(suite_name)
    batch = int(suite["pretrain"]["batch_size"])
    step = training_step(name, suite, device, precision, batch, steps + 3)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    flops, seconds = timed_steps(step, steps, device)
    memory = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.startswith("cuda")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "method": name,
        "batch": batch,
        "image_size": int(suite["pretrain"]["image_size"]),
        "precision": precision,
        "s_per_step": seconds,
        "images_per_s": batch / seconds,
        "gflop_per_step": flops / 1e9,
        "peak_memory_mb": float(np.round(memory, 1)),
    }


def _run_in_process(queue, *args) -> None:
    queue.put(method_throughput(*args))


def matmul_flops(device: str, precision: str, n: int = 2048, repeats: int = 10) -> float:
    """Measured FLOP/s of large matrix products in the training dtype: the machine's practical FLOP limit."""
    import torch

    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def resnet_step_flops(device: str, precision: str, image_size: int, batch: int, steps: int) -> float:
    """Achieved FLOP/s of a bare ResNet-18 training step (trunk + linear head, SGD) at the suite's size."""
    import torch

    from medssl.nn.backbone import ResNetTrunk
    from medssl.runtime.precision import autocast

    model = torch.nn.Sequential(ResNetTrunk(), torch.nn.Linear(512, 10)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, 1, image_size, image_size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    flops, seconds = timed_steps(step, steps, device)
    return flops / seconds


def random_images_file(path: Path, shape: tuple):
    """A uint8 ``.npy`` file of uniformly random images (seed 0) at ``path``, returned memory-mapped read-only: a
    stand-in for a dataset cache."""
    import numpy as np

    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    array[:] = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    array.flush()
    del array
    return np.load(path, mmap_mode="r")


def data_path(suite_name: str, device: str, batches: int = 20, data_root: Path = ROOT / "data") -> dict:
    """images/s of batch reads from the cache (``medssl.data.stream.MappedImages``, as training reads them), of batched
    device-side augmentation and of a per-sample torchvision pipeline; ``source`` names what was read."""
    import numpy as np
    import torch
    from torchvision.transforms import v2

    from datasets import DatasetError, load_dataset
    from medssl.data.stream import MappedImages
    from medssl.nn.augment import augment_view, view_configs
    from medssl.plan.jobs import corpora
    from medssl.suite.config import load_suite

    suite = load_suite(suite_name)
    corpus = next(iter(corpora(suite).values()))
    batch, size = int(suite["pretrain"]["batch_size"]), int(suite["pretrain"]["image_size"])
    with tempfile.TemporaryDirectory() as folder:
        try:
            array = load_dataset(corpus["name"], data_root, **corpus.get("params", {})).images
            source = f"{corpus['name']} cache"
        except (DatasetError, FileNotFoundError, OSError) as err:
            # a real corpus that is not on this machine: a file of random images of its cached size stands in
            cached = int(corpus.get("params", {}).get("size", 2 * size))
            array = random_images_file(Path(folder) / "images.npy", (max(4 * batch, 2048), 1, cached, cached))
            source = f"random {cached}-px images ({corpus['name']} not found: {str(err).splitlines()[0][:80]})"
        images = MappedImages(array)
        rng = np.random.default_rng(0)
        order = [rng.choice(len(images), batch, replace=False) for _ in range(batches)]
        start = time.perf_counter()
        loaded = [images[idx] for idx in order]
        cache_rate = batch * batches / (time.perf_counter() - start)
    configs = view_configs(suite["pretrain"]["augment"], 2)
    on_device = [x.to(device) for x in loaded]
    _sync(device)
    start = time.perf_counter()
    for x in on_device:
        for cfg in configs:
            augment_view(x, size, cfg)
    _sync(device)
    batched_rate = 2 * batch * batches / (time.perf_counter() - start)
    augment = suite["pretrain"]["augment"]
    per_sample = v2.Compose(
        [
            v2.RandomResizedCrop(
                size,
                scale=tuple(augment.get("crop_scale", (0.08, 1.0))),
                ratio=tuple(augment.get("crop_ratio", (3 / 4, 4 / 3))),
                antialias=True,
            ),
            v2.RandomHorizontalFlip(augment.get("hflip_p", 0.5)),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomApply(
                [v2.ColorJitter(brightness=augment.get("brightness", 0.4), contrast=augment.get("contrast", 0.4))],
                p=augment.get("intensity_p", 0.8),
            ),
            v2.RandomApply(
                [
                    v2.GaussianBlur(
                        kernel_size=max(3, size // 10 * 2 + 1), sigma=tuple(augment.get("blur_sigma", (0.1, 2.0)))
                    )
                ],
                p=augment.get("blur_p", 0.5),
            ),
        ]
    )
    start = time.perf_counter()
    for x in loaded:
        for image in x:
            for _ in configs:
                per_sample(image)
    sample_rate = 2 * batch * batches / (time.perf_counter() - start)
    return {
        "cache_read_images_per_s": cache_rate,
        "batched_augment_views_per_s": batched_rate,
        "torchvision_per_sample_views_per_s": sample_rate,
        "augment_speedup": batched_rate / sample_rate,
        "source": source,
    }


def write_csv(out: Path, machine: str, device: str, precision: str, rows: list, extra: Optional[dict] = None) -> None:
    """The table so far (rewritten whole, atomically); ``extra`` columns repeat on every row."""
    extra = extra or {}
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["machine", "device", *rows[0].keys(), *extra.keys()])
        for row in rows:
            writer.writerow([machine, device, *row.values(), *extra.values()])
    os.replace(tmp, out)


def chosen_device(name: str) -> str:
    """``--device``: auto is CUDA when present, else the CPU."""
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def main() -> int:
    import torch

    from medssl.runtime.precision import precision_for
    from medssl.suite.config import load_suite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="quick")
    parser.add_argument(
        "--methods", help="comma-separated subset (default: every method of the suite except supervised)"
    )
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per method")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "32", "bf16"))
    args = parser.parse_args()
    device = chosen_device(args.device)
    precision = precision_for(device, args.precision)
    threads = torch.get_num_threads()
    suite = load_suite(args.suite)
    names = args.methods.split(",") if args.methods else [m for m in suite["methods"] if m != "supervised"]
    context = mp.get_context("spawn")
    machine = (
        torch.cuda.get_device_name(0)
        if device.startswith("cuda")
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} torch threads"
    )
    out = ROOT / "reports" / "benchmarks" / f"throughput-{device.split(':')[0]}.csv"
    rows = []
    for name in names:
        queue = context.Queue()
        process = context.Process(
            target=_run_in_process, args=(queue, name, args.suite, device, args.steps, precision, threads)
        )
        process.start()
        rows.append(queue.get())
        process.join()
        write_csv(out, machine, device, precision, rows)  # as it goes: a run stopped half-way keeps its rows
        print(
            f"{name:<14} {rows[-1]['images_per_s']:8.1f} images/s  {rows[-1]['s_per_step']:.3f} s/step  {rows[-1]['gflop_per_step']:8.1f} GFLOP/step  peak {rows[-1]['peak_memory_mb']:.0f} MB",
            flush=True,
        )
    limit = matmul_flops(device, precision) if device == "cpu" else None
    resnet_share = None
    if limit:
        for row in rows:
            row["share_of_flop_limit"] = row["gflop_per_step"] * 1e9 / row["s_per_step"] / limit
        image_size, batch = int(suite["pretrain"]["image_size"]), int(suite["pretrain"]["batch_size"])
        resnet_share = resnet_step_flops(device, precision, image_size, batch, args.steps) / limit
    data = data_path(args.suite, device)
    print(
        f"\nThroughput, suite {args.suite} ({rows[0]['image_size'] if rows else '?'} px, batch {rows[0]['batch'] if rows else '?'}, {precision}) on {device}: {machine}"
    )
    print(
        "| method | images/s | s/step | GFLOP/step | peak memory (MB) |" + (" share of FLOP limit |" if limit else "")
    )
    print("|---|---:|---:|---:|---:|" + ("---:|" if limit else ""))
    for row in rows:
        share = f" {100 * row['share_of_flop_limit']:.0f} % |" if limit else ""
        print(
            f"| {row['method']} | {row['images_per_s']:.1f} | {row['s_per_step']:.3f} | {row['gflop_per_step']:.1f} | {row['peak_memory_mb']:.0f} |{share}"
        )
    if limit:
        print(
            f"\nFLOP limit (measured {precision} matrix products): {limit / 1e9:.0f} GFLOP/s; bare ResNet-18 training step: {100 * resnet_share:.0f} % of it"
        )
    print(
        f"Data path ({data['source']}): cache read {data['cache_read_images_per_s']:.0f} images/s; batched augmentation {data['batched_augment_views_per_s']:.0f} views/s; "
        f"per-sample torchvision {data['torchvision_per_sample_views_per_s']:.0f} views/s ({data['augment_speedup']:.1f}x)"
    )
    extra = {
        "flop_limit_gflops": f"{limit / 1e9:.1f}" if limit else "",
        "resnet18_step_share": f"{resnet_share:.3f}" if limit else "",
        **{k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in data.items()},
    }
    write_csv(out, machine, device, precision, rows, extra)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
