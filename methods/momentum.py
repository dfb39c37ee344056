"""Momentum (EMA) targets and queues of keys, shared by the methods that need them.

* The schedule: BYOL's cosine increase of the EMA coefficient from a base value to 1 over all steps
  (:func:`cosine_momentum`; Grill et al. 2020, section 3.2), read by :class:`methods.base.SSLMethod` from the
  config field ``ema_base``; MoCo's constant coefficient by overriding ``SSLMethod.ema_momentum`` (DiRA, CAiD).
  :func:`check_momentum_settings` refuses a method whose targets would silently run the default schedule.
* :class:`HostPointerQueue`: MoCo's queue of keys, checkpointed, with its write position kept on the host.
* :func:`shuffled_keys`: MoCo's shuffle-BN (He et al. 2020, section 3.3) across DDP processes.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.models.utils import batch_shuffle_distributed, batch_unshuffle_distributed, concat_all_gather
from lightly.utils.dist import world_size


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """BYOL's EMA coefficient at ``step`` of ``total_steps``: ``base`` at step 0, 1 at the end, by a cosine."""
    progress = min(step, total_steps) / total_steps
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1) / 2


def check_momentum_settings(name: str, config, has_targets: bool, own_schedule: bool) -> None:
    """A method with momentum targets and the base class's schedule must name its base coefficient ``ema_base``:
    under another name (``momentum``, ``tau``) the schedule would silently start from a default instead."""
    if has_targets and not own_schedule and not hasattr(config, "ema_base"):
        raise TypeError(
            f"method {name}: it has momentum targets but its Config has no ema_base field (the EMA coefficient at "
            "step 0, raised to 1 by BYOL's cosine); add ema_base, or override ema_momentum for another schedule"
        )


@torch.no_grad()
def shuffled_keys(encode: Callable[[torch.Tensor], torch.Tensor], key_input: torch.Tensor) -> torch.Tensor:
    """``encode(key_input)`` with MoCo's shuffle-BN under DDP: the key batch is shuffled across processes before
    the key encoder and restored after, so a query and its key never share BatchNorm statistics; one process has
    nothing to shuffle."""
    if world_size() == 1:
        return encode(key_input)
    shuffled, restore = batch_shuffle_distributed(key_input)
    return batch_unshuffle_distributed(encode(shuffled), restore)


class HostPointerQueue(MemoryBankModule):
    """lightly's memory bank (MoCo's queue of keys: same contents, order and overwrite rule) with its write position
    kept on the host as well: lightly reads ``bank_ptr`` back from the device at every enqueue, which stops the CPU
    until the GPU has caught up. The device copy is still updated (it is checkpointed) and read once after a load."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._host_pointer: Optional[int] = None

    @classmethod
    def replacing(cls, bank: MemoryBankModule) -> "HostPointerQueue":
        """A queue holding ``bank``'s tensors (checkpointed), built without drawing from torch's global generator."""
        with torch.random.fork_rng(devices=[]):
            queue = cls(bank.size, gather_distributed=bank.gather_distributed, feature_dim_first=bank.feature_dim_first)
        for name in ("bank", "bank_ptr"):
            queue.register_buffer(name, getattr(bank, name), persistent=True)
        return queue

    def _load_from_state_dict(self, *args, **kwargs):
        self._host_pointer = None
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, batch: torch.Tensor) -> None:
        if self.gather_distributed and world_size() > 1:
            batch = concat_all_gather(batch)
        size = self.size[0]
        pointer = int(self.bank_ptr) if self._host_pointer is None else self._host_pointer
        if pointer + len(batch) >= size:
            self.bank[pointer:] = batch[: size - pointer].detach()
            pointer = 0
        else:
            self.bank[pointer : pointer + len(batch)] = batch.detach()
            pointer += len(batch)
        self.bank_ptr.fill_(pointer)
        self._host_pointer = pointer
