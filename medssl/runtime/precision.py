"""Training precision: which autocast mode each device runs natively."""

from __future__ import annotations

import torch

from medssl.suite.protocol import ConfigError

PRECISIONS = ("auto", "32", "bf16")


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bfloat16 kernels (AVX512-BF16 / AMX), which roughly halve CPU training time."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def precision_for(device: str, requested: str = "auto") -> str:
    """Lightning precision for ``device``. ``auto``: bf16 autocast where the hardware runs it natively (CUDA with
    bf16, CPUs with AVX512-BF16), fp16 autocast on older GPUs, else fp32. Losses are computed in fp32 either way."""
    if requested not in PRECISIONS:
        raise ConfigError(f"unknown precision {requested!r}; use one of {', '.join(PRECISIONS)}")
    if requested == "32":
        return "32-true"
    if device.startswith("cuda"):
        return "bf16-mixed" if requested == "bf16" or torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if requested == "bf16" or cpu_supports_bf16() else "32-true"


def fixed_precision(device: str) -> str:
    """The precision of the evaluation steps that do not follow ``--precision`` (feature extraction, segmentation
    training): bf16 autocast on CUDA, fp32 elsewhere."""
    return "bf16-mixed" if device.startswith("cuda") else "32-true"


def autocast(device: str, precision: str):
    """``torch.autocast`` for a Lightning precision string: bf16/fp16 autocast on the device, or nothing for fp32."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return torch.autocast(
        device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype, enabled=dtype is not None
    )


def lightning_devices(device: str, count: int = 1):
    """Lightning's ``devices`` for ``--device`` and ``--devices``: ``cuda:N`` means GPU N (and the ``count - 1``
    after it), which Lightning would otherwise replace by GPU 0; ``cpu`` and ``cuda`` mean the first ``count``."""
    if device.startswith("cuda:"):
        try:
            first = int(device.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"--device {device!r}: write cuda:N with N a GPU number, e.g. cuda:1") from None
        return list(range(first, first + count))
    return count


def configure_cuda(device: str) -> None:
    """On CUDA: cuDNN picks the fastest convolution algorithms for the fixed input sizes of a run, and fp32 matrix
    products (the loss sections kept in fp32 under autocast) may use TF32 tensor cores. GPU runs are not bitwise
    reproducible anyway (docs/reproducibility.md); nothing changes on the CPU."""
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
