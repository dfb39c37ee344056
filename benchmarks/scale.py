"""Does the data path scale to real datasets? Memory and read speed at 10,000 and 100,000 images (issue 19).

    python benchmarks/scale.py [--sizes 10000,100000] [--image-size 256] [--root DIR] [--steps 10] [--keep]

For each size it writes a synthetic cache in the NIH ChestX-ray14 loader's format (``datasets/cache.py``: a
memory-mapped uint8 ``images.npy`` of N x 1 x 256 x 256, the 14 NIH labels, patient ids, NIH-like 70/10/20 split,
manifest) and then, each in a fresh process so that its peak resident memory is its own:

* pretraining: one epoch of the loader a run uses (``medssl.data.stream.ShuffledBatches`` over the train+val rows,
  batch 64, in a background thread), plus ``--steps`` SimCLR training steps at 64 px fed from it;
* fine-tuning: one epoch of the fine-tuning loader (train rows with labels, last batch kept) plus ``--steps``
  fine-tuning steps, then the test split read once for scoring;
* the peak resident set of each process (``VmHWM``), which includes ~0.5 GB of imported libraries and the model.

The targets: peak memory grows by less than 10 % while the data grow 10x, and the pretraining loader reads at least
twice as many images per second as the fastest method trains on this machine (the largest images/s in
``reports/benchmarks/throughput-cpu.csv``). Writes ``reports/benchmarks/scale.csv`` and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NIH_CLASSES = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]
BATCH = 64


def write_cache(folder: Path, n: int, size: int) -> Path:
    """A cache folder as the NIH loader builds it, filled with cheap phantom-like images (a bright ellipse on noise),
    written in blocks so that building it needs little memory."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "manifest.json").exists():
        return folder
    rng = np.random.default_rng(0)
    images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 1, size, size))
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    body = ((xx / 0.4) ** 2 + (yy / 0.45) ** 2 < 1).astype(np.float32) * 120
    block = 2048
    for start in range(0, n, block):
        count = min(block, n - start)
        noise = rng.integers(0, 60, size=(count, 1, size, size), dtype=np.uint8)
        images[start : start + count] = noise + body.astype(np.uint8)
    images.flush()
    del images
    patients = np.arange(n) // 3
    split = np.where(patients % 10 < 7, "train", np.where(patients % 10 < 8, "val", "test"))
    np.save(folder / "labels.npy", (rng.random((n, len(NIH_CLASSES))) < 0.05).astype(np.uint8))
    np.save(folder / "patient_ids.npy", patients.astype(np.int64))
    np.save(folder / "split.npy", split)
    (folder / "manifest.json").write_text(
        json.dumps({"classes": NIH_CLASSES, "size": size, "n_images": n, "synthetic": "benchmarks/scale.py"})
    )
    return folder


def _peak_rss_mb() -> float:
    """This process's peak resident set since it started its program: VmHWM of /proc/self/status. (ru_maxrss also
    counts the peak of the process it was forked from, here the one that wrote a 6 GB cache.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pretraining_epoch(folder: str, steps: int, threads: int) -> dict:
    """One epoch of the pretraining loader, ``steps`` of them fed to SimCLR training steps (quick's protocol)."""
    import numpy as np
    import torch

    from benchmarks.throughput import training_step
    from datasets.cache import read_cache
    from medssl.data.stream import MappedImages, ShuffledBatches
    from medssl.suite.config import load_suite

    torch.set_num_threads(threads)
    dataset = read_cache(Path(folder), "nih_chestxray14")
    rows = np.sort(np.concatenate([dataset.indices("train"), dataset.indices("val")]))
    loader = ShuffledBatches(
        MappedImages(dataset.images, rows), BATCH, torch.Generator().manual_seed(0), drop_last=True
    )
    step = training_step("simclr", load_suite("quick"), "cpu", "32-true", BATCH, len(loader))
    trained = read = 0
    train_time = 0.0
    start = time.perf_counter()
    for k, (images,) in enumerate(loader):
        read += len(images)
        if k < steps:
            begun = time.perf_counter()
            step(images)
            train_time += time.perf_counter() - begun
            trained += len(images)
    total = time.perf_counter() - start
    return {
        "stage": "pretraining epoch",
        "images": int(len(rows)),
        "loader_images_per_s": read / (total - train_time),
        "train_images_per_s": trained / train_time if train_time else 0.0,
        "seconds": total,
        "peak_rss_mb": _peak_rss_mb(),
    }


def fine_tuning_epoch(folder: str, steps: int, threads: int) -> dict:
    """One epoch of the fine-tuning loader (labels, last batch kept), ``steps`` fine-tuning steps, then the test
    split read once for scoring."""
    import torch
    import torch.nn.functional as F

    from datasets.cache import read_cache
    from medssl.data.stream import MappedImages, ShuffledBatches
    from medssl.nn.augment import AugmentConfig, augment_view
    from medssl.nn.backbone import ResNetTrunk

    torch.set_num_threads(threads)
    dataset = read_cache(Path(folder), "nih_chestxray14")
    train, test = dataset.indices("train"), dataset.indices("test")
    loader = ShuffledBatches(
        MappedImages(dataset.images, train),
        BATCH,
        torch.Generator().manual_seed(0),
        labels=dataset.labels[train],
        drop_last=False,
    )
    model = torch.nn.Sequential(ResNetTrunk(), torch.nn.Linear(512, len(NIH_CLASSES)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    augment = AugmentConfig(crop_scale=(0.7, 1.0), blur_p=0.0)
    read = trained = 0
    train_time = 0.0
    start = time.perf_counter()
    for k, (images, labels) in enumerate(loader):
        read += len(images)
        if k < steps:
            begun = time.perf_counter()
            loss = F.binary_cross_entropy_with_logits(model(augment_view(images, 64, augment)), labels.float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            train_time += time.perf_counter() - begun
            trained += len(images)
    test_images = MappedImages(dataset.images, test)
    for begin in range(0, len(test_images), 256):
        read += len(test_images[begin : begin + 256])
    total = time.perf_counter() - start
    return {
        "stage": "fine-tuning epoch + test read",
        "images": int(len(train) + len(test)),
        "loader_images_per_s": read / (total - train_time),
        "train_images_per_s": trained / train_time if train_time else 0.0,
        "seconds": total,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _in_process(queue, function, *args) -> None:
    queue.put(function(*args))


def isolated(function, *args) -> dict:
    """``function(*args)`` in a fresh process (its own peak resident memory)."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_in_process, args=(queue, function, *args))
    process.start()
    result = queue.get()
    process.join()
    return result


def fastest_training_rate() -> tuple:
    """(method, images/s) of the fastest method in the committed CPU throughput table, or (None, None)."""
    path = ROOT / "reports" / "benchmarks" / "throughput-cpu.csv"
    if not path.exists():
        return None, None
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    best = max(rows, key=lambda r: float(r["images_per_s"]))
    return best["method"], float(best["images_per_s"])


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated numbers of images")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument(
        "--root",
        default=str(ROOT / "data" / ".scale-benchmark"),
        help="where the synthetic caches are written (6.6 GB for 100,000 images)",
    )
    parser.add_argument("--steps", type=int, default=10, help="training steps fed from each loader")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic caches")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    rows = []
    for n in (int(v) for v in args.sizes.split(",")):
        folder = Path(args.root) / f"nih-{n}-{args.image_size}px"
        begun = time.perf_counter()
        write_cache(folder, n, args.image_size)
        print(
            f"{n} images: cache ready in {time.perf_counter() - begun:.0f} s ({(folder / 'images.npy').stat().st_size / 2**30:.2f} GiB)",
            flush=True,
        )
        for function in (pretraining_epoch, fine_tuning_epoch):
            row = {"n_images": n, "image_size": args.image_size, **isolated(function, str(folder), args.steps, threads)}
            rows.append(row)
            print(
                f"  {row['stage']}: {row['images']} images, loader {row['loader_images_per_s']:.0f} images/s, training {row['train_images_per_s']:.1f} images/s, "
                f"{row['seconds']:.0f} s, peak RSS {row['peak_rss_mb']:.0f} MB",
                flush=True,
            )
        if not args.keep:
            shutil.rmtree(folder)
    out = ROOT / "reports" / "benchmarks" / "scale.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("\n| images | stage | loader images/s | training images/s | peak RSS (MB) |\n|---:|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['n_images']:,} | {row['stage']} | {row['loader_images_per_s']:.0f} | {row['train_images_per_s']:.1f} | {row['peak_rss_mb']:.0f} |"
        )
    verdicts = []
    sizes = sorted({r["n_images"] for r in rows})
    if len(sizes) > 1:
        for stage in dict.fromkeys(r["stage"] for r in rows):
            small, large = (
                next(r for r in rows if r["stage"] == stage and r["n_images"] == s) for s in (sizes[0], sizes[-1])
            )
            growth = large["peak_rss_mb"] / small["peak_rss_mb"] - 1
            verdicts.append(
                f"{'PASS' if growth < 0.10 else 'FAIL'} {stage}: peak RSS {small['peak_rss_mb']:.0f} -> {large['peak_rss_mb']:.0f} MB "
                f"({100 * growth:+.1f} %) while the data grow {sizes[-1] / sizes[0]:.0f}x (target < +10 %)"
            )
    method, rate = fastest_training_rate()
    if rate:
        slowest = min(r["loader_images_per_s"] for r in rows if r["stage"] == "pretraining epoch")
        verdicts.append(
            f"{'PASS' if slowest >= 2 * rate else 'FAIL'} pretraining loader {slowest:.0f} images/s vs 2 x the fastest method's training rate on this CPU "
            f"({method}, {rate:.1f} images/s in reports/benchmarks/throughput-cpu.csv)"
        )
    print("\n" + "\n".join(verdicts))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
