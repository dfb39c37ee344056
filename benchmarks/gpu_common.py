"""What the stages of benchmarks/gpu_check.py share: the sizes, the PASS / FAIL summary, CSV rows and building a
method of miccai2024 at those sizes."""

from __future__ import annotations

import csv
import dataclasses
import traceback
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent

FULL = {"image_size": 224, "batch": 64, "warmup": 3, "timed": 20, "cache_size": 256}
DRY = {"image_size": 32, "batch": 8, "warmup": 1, "timed": 1, "cache_size": 48}
NARROW = 64  # dry mode: head widths, queues, codebooks and prototypes at most this large


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
    """(model, optimizer, lr scheduler) of ``name`` at ``sizes``' image size, narrowed when ``dry``."""
    from benchmarks.throughput import built_method

    return built_method(name, suite, device, steps, sizes["image_size"], method_params(name, suite, dry))


def uint8_batch(sizes: dict, device: str):
    """A seeded batch of ``sizes["batch"]`` uint8 one-channel images at the cache size, already on ``device``."""
    import torch

    shape = (sizes["batch"], 1, sizes["cache_size"], sizes["cache_size"])
    images = torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * 255
    return images.to(torch.uint8).to(device)
