"""Pretraining compute of a suite per pretraining seed, counted, and what it comes to in GPU-hours at a stated
sustained throughput (docs/statistics.md: the cost of miccai2024's three pretraining seeds).

    python benchmarks/suite_cost.py --suite miccai2024 --corpus-images nih=86524,eyepacs=35126 --sustained-tflops 50,200

For each method of the suite: the FLOPs of one full training step (``benchmarks/throughput.py``'s step: views,
forward, backward, optimiser, EMA; ``torch.utils.flop_counter``) at the suite's image size, counted on CPU with a
small batch and scaled to the suite's (every term but the batch-by-batch similarity matrices, which are negligible
next to the convolutions, is per image), times the steps of one pretraining per corpus (epochs x images per epoch /
batch). The real corpora are not needed: their sizes are given (NIH ChestX-ray14's train_val list and EyePACS's
training rows, ../shared/specs/datasets.md). GPU-hours = FLOPs / a sustained rate, an assumption the command
states (a range, e.g. 50 and 200 TFLOP/s: 5-20 % of a recent GPU's dense bf16 peak), not a measurement: no GPU run
of the suite has been timed yet. Evaluations (fine-tuning, segmentation)
are not counted.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import training_step  # noqa: E402


def step_flops_per_image(name: str, suite: dict, batch: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    step = training_step(name, suite, "cpu", "32", batch, steps_per_epoch=1000)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops() / batch


def parse_sizes(text: str) -> dict:
    try:
        return {name: int(count) for name, count in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise SystemExit(f"--corpus-images {text!r}: write corpus=count pairs, e.g. nih=86524,eyepacs=35126") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="miccai2024")
    parser.add_argument(
        "--corpus-images",
        default="nih=86524,eyepacs=35126",
        help="images per pretraining epoch of each corpus of the suite",
    )
    parser.add_argument(
        "--sustained-tflops",
        default="50,200",
        help="assumed sustained training throughputs of one GPU, TFLOP/s, comma-separated",
    )
    parser.add_argument("--methods", help="comma-separated subset of the suite's methods (default: all)")
    parser.add_argument(
        "--batch", type=int, default=2, help="batch of the counted step (FLOPs are scaled to the suite's batch)"
    )
    args = parser.parse_args(argv)
    import torch

    from medssl.suite.config import load_suite
    from methods import method_class

    torch.set_num_threads(2)
    suite = load_suite(args.suite)
    pretrain = suite["pretrain"]
    sizes = parse_sizes(args.corpus_images)
    rates = [float(r) for r in args.sustained_tflops.split(",")]
    missing = sorted(set(pretrain["datasets"]) - set(sizes))
    if missing:
        raise SystemExit(f"--corpus-images lacks the suite's corpora {missing}")
    batch = int(pretrain["batch_size"])
    total = 0.0
    print(
        f"Suite {suite['name']}: {pretrain['image_size']} px, batch {batch}, {pretrain['epochs']} epochs; corpora {sizes}; one pretraining seed.\n"
    )
    print(
        "| method | GFLOP per image-step | pretraining PFLOP (all corpora) | "
        + " | ".join(f"GPU-hours at {r:g} TFLOP/s" for r in rates)
        + " |"
    )
    print("|---|---:|---:|" + "---:|" * len(rates))
    methods = args.methods.split(",") if args.methods else suite["methods"]
    unknown = sorted(set(methods) - set(suite["methods"]))
    if unknown:
        raise SystemExit(f"--methods {unknown} are not in suite {suite['name']}: {', '.join(suite['methods'])}")
    for name in methods:
        if not method_class(name).needs_pretraining:
            continue
        per_image = step_flops_per_image(name, suite, args.batch)
        flops = sum(per_image * batch * math.ceil(count / batch) * int(pretrain["epochs"]) for count in sizes.values())
        total += flops
        print(
            f"| {name} | {per_image / 1e9:.1f} | {flops / 1e15:,.0f} | "
            + " | ".join(f"{flops / (r * 1e12) / 3600:.1f}" for r in rates)
            + " |"
        )
    seeds = len(pretrain["seeds"])
    hours = {r: total / (r * 1e12) / 3600 for r in rates}
    print(
        f"\n{'All methods' if not args.methods else 'These methods'}, one pretraining seed: {total / 1e18:,.1f} EFLOP = "
        + " or ".join(f"{h:,.0f} GPU-hours at {r:g} TFLOP/s" for r, h in hours.items())
        + f" sustained; the suite's {seeds} pretraining seeds: "
        + " or ".join(f"{seeds * h:,.0f}" for h in hours.values())
        + " GPU-hours (pretraining only)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
