"""What the training step's host syncs cost: lightly's LARS and a blur radius read from the batch (the code before
issue 19) against ``SyncFreeLARS`` and the radius from the configured range, alternating step by step in one process.

    python benchmarks/sync_cost.py [--suite quick] [--methods simclr,mlvicx] [--steps 12] [--device auto]

Both variants train the same method (each its own copy, same settings, ``throughput.lightning_order_step``); steps
alternate (old, new, new, old, ...) so that a machine whose speed drifts affects both alike. Prints the median
seconds per step of each and their ratio. On a CPU the syncs themselves are free, so this shows the extra work of the
sync-free code (a ``torch.where`` per weight-decayed tensor); on a GPU it shows what the syncs cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def use_old_paths(old: bool) -> None:
    """Switch the optimiser class a method builds and the blur the views use between the two versions."""
    from lightly.utils.lars import LARS

    import medssl.nn.augment as augment
    import methods.base as base
    from medssl.nn.optim import SyncFreeLARS

    if not hasattr(augment, "_sync_free_blur"):
        augment._sync_free_blur = augment.gaussian_blur
    base.SyncFreeLARS = LARS if old else SyncFreeLARS
    augment.gaussian_blur = (
        (lambda x, sigma, max_sigma=None: augment._sync_free_blur(x, sigma)) if old else augment._sync_free_blur
    )


def compare(name: str, suite: dict, device: str, precision: str, steps: int) -> dict:
    from benchmarks.throughput import _sync, training_step

    batch = int(suite["pretrain"]["batch_size"])
    variants = {}
    for old in (True, False):
        use_old_paths(old)
        variants[old] = training_step(name, suite, device, precision, batch, steps + 4)
        for _ in range(2):
            variants[old]()
    times = {True: [], False: []}
    for k in range(steps):
        for old in (True, False) if k % 2 == 0 else (False, True):
            use_old_paths(old)
            _sync(device)
            start = time.perf_counter()
            variants[old]()
            _sync(device)
            times[old].append(time.perf_counter() - start)
    use_old_paths(False)
    before, after = statistics.median(times[True]), statistics.median(times[False])
    return {
        "method": name,
        "old_s_per_step": before,
        "sync_free_s_per_step": after,
        "ratio": after / before,
        "steps": steps,
    }


def main() -> int:
    from benchmarks.throughput import chosen_device
    from medssl.runtime.precision import precision_for
    from medssl.suite.config import load_suite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="simclr,mlvicx")
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--steps", type=int, default=12, help="timed steps of each variant")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = chosen_device(args.device)
    precision = precision_for(device, "auto")
    suite = load_suite(args.suite)
    print("| method | old step (s) | sync-free step (s) | sync-free / old |\n|---|---:|---:|---:|")
    for name in args.methods.split(","):
        row = compare(name, suite, device, precision, args.steps)
        print(
            f"| {name} | {row['old_s_per_step']:.3f} | {row['sync_free_s_per_step']:.3f} | {row['ratio']:.2f} |",
            flush=True,
        )
    print(f"\nmedians of {args.steps} alternating steps each; suite {args.suite}, {device}, {precision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
