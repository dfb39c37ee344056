"""LARS without host synchronisation (You et al. 2017, "Large Batch Training of Convolutional Networks").

lightly's :class:`~lightly.utils.lars.LARS` decides per parameter, in Python, whether the weight and gradient
norms are non-zero (``if p_norm != 0 and g_norm != 0``): two device-to-host copies per weight-decayed tensor, 44 per
SimCLR step and 92 per MLVICX step, each of which stops the CPU until the GPU has caught up. :class:`SyncFreeLARS`
makes the same decision on the device with ``torch.where``; its arithmetic is lightly's operation for operation, so
its updates are bit-identical (``tests/test_host_syncs.py`` checks that on CPU).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from lightly.utils.lars import LARS

from medssl.suite.protocol import ConfigError


class SyncFreeLARS(LARS):
    """lightly's LARS (same arguments and state), with the trust-ratio condition evaluated on the device. Groups with
    ``weight_decay`` 0 (biases, normalisation layers) get no trust ratio, as in lightly."""

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            weight_decay, momentum, dampening, nesterov = (
                group["weight_decay"],
                group["momentum"],
                group["dampening"],
                group["nesterov"],
            )
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if weight_decay != 0:
                    p_norm, g_norm = torch.norm(p.data), torch.norm(p.grad.data)
                    lars_lr = p_norm / (g_norm + p_norm * weight_decay + group["eps"])
                    lars_lr *= group["trust_coefficient"]
                    scaled = d_p.add(p, alpha=weight_decay)
                    scaled *= lars_lr
                    d_p = torch.where((p_norm != 0) & (g_norm != 0), scaled, d_p)
                if momentum != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        buf = state["momentum_buffer"]
                        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
                    d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
                p.add_(d_p, alpha=-group["lr"])
        return loss


def check_optimizer(optimizer: Dict[str, Any]) -> None:
    """LARS needs a non-zero weight decay: lightly's LARS applies the trust ratio only to parameter groups with weight
    decay (its way of excluding biases and norms), so without it every weight would train by plain SGD at the LARS
    lr, silently."""
    if optimizer.get("name", "lars") == "lars" and float(optimizer.get("weight_decay") or 0.0) == 0.0:
        raise ConfigError(
            "pretrain.optimizer is lars without weight_decay: lightly's LARS applies its trust ratio only where weight decay is "
            "non-zero, so every weight would train by plain SGD at the LARS lr; set weight_decay (the CoBooM paper's 1.5e-6) or use sgd"
        )
