"""What every result record carries about where it came from: code version, packages, hardware and the SHA-256 of
the files it read."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from typing import Dict

from datasets.cache import file_digest as file_sha256  # noqa: F401  (one SHA-256 of a file for the whole project)
from medssl.runtime.precision import cpu_supports_bf16
from medssl.suite.config import REPO_ROOT

PACKAGES = (
    "torch",
    "torchvision",
    "lightly",
    "pytorch-lightning",
    "numpy",
    "scikit-learn",
    "scipy",
    "pandas",
    "monai",
    "nibabel",
)


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD commit, with ``-dirty`` when tracked files differ from it; ``unknown`` outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        # results and reports are outputs, not code: writing or clearing them does not make the code "dirty"
        outputs = [":(exclude)results", ":(exclude)reports", ":(exclude)docs/*.png"]
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *outputs],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def package_versions() -> Dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux); empty where it cannot be read. Timings of two runs are only
    comparable on the same model (and with the same native bf16 support): ``platform`` alone says x86_64."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def hardware(device: str = "cpu") -> Dict[str, object]:
    import torch

    info: Dict[str, object] = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_bf16": cpu_supports_bf16(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
    return info


def record_provenance(device: str, precision: str, wall_time_s: float) -> Dict[str, object]:
    """The fields every result record ends with: code, packages, hardware, precision, duration, time of writing."""
    import datetime as _dt

    return {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "hardware": hardware(device),
        "precision": precision,
        "wall_time_s": round(wall_time_s, 2),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
