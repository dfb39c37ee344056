"""Stages 4 and 6 of benchmarks/gpu_check.py: a temporary suite run twice with ``run_benchmark.py`` on the device (the
image track end to end, then the CT track); the second run must add nothing and the records must name their
precision and the GPU."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

from benchmarks.gpu_common import NARROW, ROOT, Summary

E2E_METHODS = ["supervised", "simclr", "swav", "dira", "coboom", "pcrlv2"]


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
