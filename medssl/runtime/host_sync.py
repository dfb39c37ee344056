"""Counting the operations that make the host wait for the device, on any device (CPU included).

On a GPU the CPU queues kernels ahead of the GPU; an operation whose result the host must read (a tensor turned into
a Python number by ``.item()``, ``float()``, ``int()``, ``bool()`` or an ``if`` on a tensor, or an operation whose
output size depends on the data: ``nonzero``, boolean-mask indexing, ``bincount``, ``unique``...) stops the CPU
until the GPU has caught up, so a training step with such operations cannot run ahead. torch reports them on CUDA
(``torch.cuda.set_sync_debug_mode``); :class:`HostSyncCounter` finds the same operations on the CPU, where they
cost nothing but reveal themselves just the same, so tests can keep the training step free of them.
"""

from __future__ import annotations

import collections
import traceback
from pathlib import Path
from typing import Counter, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten operations that read a value back (``_local_scalar_dense`` is what .item(), float(), int() and bool() call)
# or whose output shape depends on the data
SYNCING_OPERATIONS = frozenset(
    {
        "_local_scalar_dense",
        "nonzero",
        "nonzero_static",
        "masked_select",
        "bincount",
        "unique",
        "_unique",
        "_unique2",
        "unique_consecutive",
        "unique_dim",
        "repeat_interleave",
        "histc",
        "argwhere",
    }
)
PROJECT = Path(__file__).resolve().parents[2]
# where lightly's own losses index by a constant boolean mask (NT-Xent drops the diagonal of the view-to-same-view
# similarities, VICReg's covariance its diagonal): the syncs left in a training step, lightly's code as it is
LIGHTLY_CONSTANT_MASKS = frozenset({"lightly/loss/ntx_ent_loss.py", "lightly/loss/vicreg_loss.py"})


def _boolean_index(func, args) -> bool:
    """``x[mask]`` with a boolean mask is ``aten.index`` with a bool index tensor: it calls nonzero on the device."""
    return (
        func._schema.name == "aten::index"
        and len(args) > 1
        and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
    )


class HostSyncCounter(TorchDispatchMode):
    """A context in which every syncing operation is counted with the place that called it: ``counts`` maps
    (operation, innermost caller as ``package/file.py:line``) to a count; ``total`` sums them. With
    ``device_type`` (e.g. "cuda") only operations on tensors of that kind count: reading a number from a CPU
    tensor does not wait for a GPU. Without it (a CPU run) every such operation counts."""

    def __init__(self, device_type: Optional[str] = None):
        super().__init__()
        self.device_type = device_type
        self.counts: Counter[Tuple[str, str]] = collections.Counter()

    def _on_device(self, args) -> bool:
        if self.device_type is None:
            return True
        return any(isinstance(a, torch.Tensor) and a.device.type == self.device_type for a in args)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if (name in SYNCING_OPERATIONS or _boolean_index(func, args)) and self._on_device(args):
            self.counts[(name if name in SYNCING_OPERATIONS else "boolean index", self._caller())] += 1
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _caller() -> str:
        for frame in reversed(traceback.extract_stack()[:-3]):
            path = Path(frame.filename)
            if "torch" in path.parts and "site-packages" in path.parts and "lightly" not in path.parts:
                continue
            try:
                return f"{path.relative_to(PROJECT)}:{frame.lineno}"
            except ValueError:
                parts = path.parts
                return f"{'/'.join(parts[parts.index('site-packages') + 1 :]) if 'site-packages' in parts else path.name}:{frame.lineno}"
        return "?"

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def outside(self, files) -> dict:
        """``counts`` by caller for the callers not in ``files`` (``package/file.py`` paths)."""
        return {place: n for (_, place), n in self.counts.items() if place.rsplit(":", 1)[0] not in files}
