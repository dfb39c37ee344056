"""DiRA: discriminative, restorative and adversarial learning (Haghighi et al., CVPR 2022, section 3), MoCo-v2 base.

* Discrimination (section 3, "Discriminative learning"): MoCo-v2 (He et al. 2020; Chen et al. 2020). The query
  is the encoder's pooled output of view 1 through a 2-layer MLP head (512 -> 512 -> 128, ReLU, no BN); the key
  comes from an EMA copy (m = 0.999, constant) of encoder + head applied to view 2; InfoNCE at temperature 0.2
  against a queue of past keys (lightly's ``NTXentLoss`` with a memory bank, ``MoCoProjectionHead``). The official
  key encoder is an EMA of the whole U-Net, but only its encoder and head produce keys, so we copy only those.
  Under DDP, as MoCo: the keys of all processes enter one shared queue (gathered before the enqueue, so the queue
  is the same as one process's on the global batch), and shuffle-BN (MoCo, section 3.3) shuffles the key batch
  across processes before the key encoder and restores the order after, with per-process BatchNorm statistics
  (``sync_batchnorm = False``: synchronised statistics would let a query and its key share them again). With one
  process there is nothing to shuffle (the official code requires DDP).
* Restoration (section 3, "Restorative learning"): a U-Net on the same ResNet-18 encoder (``medssl.nn.unet``,
  smp's decoder widths 256-16) with a sigmoid output restores view 1 from its distorted version; L_r = MSE,
  weight 10. Target = the view-1 crop **after** the same crop and flip as the input, before the intensity
  distortions (spec "Decisions"; the official target is taken before the flip, so input and target are mirrored
  half of the time).
* Distortions (official ``transformation.py``, ``Custom_Distoration``, applied to both views after the photometric
  augmentations), with the official sizes in pixels of a 224-px view scaled to the suite's side: with probability
  0.3 in-painting (blocks of 10-70 px set to **0**, up to 10, the loop stopping with probability 0.1 after each
  block), 0.05 out-painting (everything set to 0 outside up to 10 windows, same stopping rule, of side 224 minus
  50-70 px, i.e. 0.69-0.78 of the side), 0.3 patch swapping (always 10 swaps of two 10-15 px patches, read from the
  undistorted view), otherwise none. Offsets keep the official 3-px margin. The official swap loop also tests
  that the two patches are apart, but its condition holds for almost any pair, so we draw them independently.
  Computed for the whole batch at once (``restoration_distortion``).
* Adversary (section 3, "Adversarial learning"): LSGAN. Discriminator = conv3x3 with strides 2, 2, 2, 1 and
  widths 64-512 (InstanceNorm except the first, LeakyReLU 0.2), a final conv3x3 to one channel, N(0, 0.02) init;
  L_G adds 0.001 * MSE(D(restored), 1), L_D = [MSE(D(target), 1) + MSE(D(restored), 0)] / 2 with Adam 2e-4,
  betas (0.5, 0.999), one discriminator step after every generator step (``on_train_batch_end``), under the
  run's mixed precision (its own gradient scaler under fp16). The discriminator's parameters do not require
  gradients outside its own step, so L_G trains the generator only and DDP does not track them; its step runs
  outside DDP's forward, so its gradients are all-reduced by hand: every process keeps the same discriminator.
  Adam is torch's fused kernel (no host sync per step; the official code uses the default Adam, the same update
  up to rounding).
  The official code trains in two stages (discrimination + restoration for 1200 epochs at batch 256, then all
  three for 400 epochs at batch 16 from that checkpoint); under the suite's shared protocol we train the three
  losses jointly for the suite's epochs and batch size.
* Inputs: 1-channel images normalised like every method of the suite (official: 3-channel [0, 1]); the
  restoration target stays in [0, 1] to match the sigmoid output.
* The MoCo queue is part of the checkpoint (lightly registers it as a non-persistent buffer, so a run resumed from
  ``last.ckpt`` would restart with random negatives; MoCo's own code saves its queue), and its write position is
  mirrored on the host (:class:`methods.momentum.HostPointerQueue`; lightly reads it back from the device at every step).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import MoCoProjectionHead
from lightly.models.utils import (
    deactivate_requires_grad,
)
from torch import nn

from medssl.nn.augment import photometric, random_resized_crop, to_unit_float
from medssl.nn.backbone import guard_strided_convs
from medssl.nn.unet import UNetDecoder
from methods.base import MethodConfig, SSLMethod, average_gradients_across_processes, gather_across_processes, pooled
from methods.momentum import HostPointerQueue, shuffled_keys


@dataclasses.dataclass
class DiRAConfig(MethodConfig):
    hidden_dim: int = 512
    output_dim: int = 128
    queue_size: int = 65536
    temperature: float = 0.2
    key_momentum: float = 0.999
    restoration_weight: float = 10.0
    adversarial_weight: float = 0.001
    discriminator_lr: float = 2e-4
    distortions: bool = True


# Custom_Distoration draws its block sizes and offsets as integers in pixels of a 224-px view; we draw the same
# integers and scale them to the view's side
OFFICIAL_SIDE = 224
MAX_BLOCKS = 10  # in-painting blocks and out-painting windows: at most 10, stopping with probability 0.1 after each
STOP_PROBABILITY = 0.1
SWAPS = 10  # patch swapping: always 10 swaps


def _official_integers(low: int, high: int, shape, generator, device) -> torch.Tensor:
    """``random.randint(low, high)`` (inclusive) for every element of ``shape``."""
    return torch.randint(low, high + 1, shape, generator=generator, device=device)


def _scaled(pixels: torch.Tensor, side: int) -> torch.Tensor:
    """Pixel counts of a 224-px view at ``side`` px (at least 1)."""
    return (pixels.float() * side / OFFICIAL_SIDE).round().clamp(min=1).long()


def _offsets(sizes: torch.Tensor, side: int, generator) -> torch.Tensor:
    """``random.randint(3, side - size - 3)`` per block, the 3-px margin scaled with the side."""
    margin = int(round(3 * side / OFFICIAL_SIDE))
    high = (side - sizes - margin).clamp(min=margin)
    return (
        margin
        + (torch.rand(sizes.shape, generator=generator, device=sizes.device) * (high - margin + 1)).floor().long()
    )


def _blocks(n: int, count: int, low: int, high: int, h: int, w: int, generator, device, complement: bool = False):
    """``count`` blocks per image as (top, left, height, width), each side an official integer in [low, high] (or
    224 minus one, for out-painting windows) scaled to the view, at an official offset."""
    sides = _official_integers(low, high, (2, n, count), generator, device)
    if complement:
        sides = OFFICIAL_SIDE - sides
    height, width = _scaled(sides[0], h), _scaled(sides[1], w)
    return _offsets(height, h, generator), _offsets(width, w, generator), height, width


def _box_masks(top, left, height, width, h: int, w: int) -> torch.Tensor:
    """(n, k) boxes -> (n, k, h, w) masks of the pixels inside each box."""
    rows = torch.arange(h, device=top.device)[None, None, :, None]
    cols = torch.arange(w, device=top.device)[None, None, None, :]
    inside_rows = (rows >= top[..., None, None]) & (rows < (top + height)[..., None, None])
    return inside_rows & (cols >= left[..., None, None]) & (cols < (left + width)[..., None, None])


def _blocks_drawn(n: int, generator, device) -> torch.Tensor:
    """(n, 10) mask of the blocks the official loop places: the first always, each next one unless the loop stopped
    (probability 0.1 after every block)."""
    go_on = torch.rand(n, MAX_BLOCKS, generator=generator, device=device) >= STOP_PROBABILITY
    placed = torch.cumprod(go_on.long(), dim=1)[:, :-1].bool()
    return torch.cat([torch.ones(n, 1, dtype=torch.bool, device=device), placed], dim=1)


def inpaint(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """In-painting task: blocks of 10-70 px (at 224 px) set to 0, up to 10 of them."""
    n, _, h, w = x.shape
    masks = _box_masks(*_blocks(n, MAX_BLOCKS, 10, 70, h, w, generator, x.device), h, w)
    cut = (masks & _blocks_drawn(n, generator, x.device)[..., None, None]).any(1, keepdim=True)
    return x.masked_fill(cut, 0.0)


def outpaint(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Out-painting task: everything set to 0 except windows of side 224 - (50-70) px (at 224 px), up to 10."""
    n, _, h, w = x.shape
    masks = _box_masks(*_blocks(n, MAX_BLOCKS, 50, 70, h, w, generator, x.device, complement=True), h, w)
    kept = (masks & _blocks_drawn(n, generator, x.device)[..., None, None]).any(1, keepdim=True)
    return x.masked_fill(~kept, 0.0)


def swap_patches(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Local shuffling task: 10 swaps of two patches of 10-15 px (at 224 px), each read from the undistorted view
    and written in the official order (a later swap overwrites an earlier one where they overlap). The official
    loop also tries to keep the two patches of a swap apart, but its test is true for almost every pair, so patches
    are drawn independently here."""
    n, c, h, w = x.shape
    first = _blocks(n, SWAPS, 10, 15, h, w, generator, x.device)
    top2, left2 = _offsets(first[2], h, generator), _offsets(first[3], w, generator)
    second = (top2, left2, first[2], first[3])
    rows = torch.arange(h, device=x.device)[None, :, None].expand(n, h, w)
    cols = torch.arange(w, device=x.device)[None, None, :].expand(n, h, w)
    source_rows, source_cols = rows.clone(), cols.clone()
    masks = [_box_masks(*box, h, w) for box in (first, second)]
    for k in range(SWAPS):  # 10 batched steps, never a loop over images
        for into, outof, mask in ((first, second, masks[0]), (second, first, masks[1])):
            inside = mask[:, k]
            source_rows = torch.where(
                inside, rows - into[0][:, k, None, None] + outof[0][:, k, None, None], source_rows
            )
            source_cols = torch.where(
                inside, cols - into[1][:, k, None, None] + outof[1][:, k, None, None], source_cols
            )
    index = (source_rows * w + source_cols).reshape(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)


def restoration_distortion(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DiRA/CAiD's ``Custom_Distoration`` (official ``transformation.py``) on a [0,1] batch, drawn per image: with
    probability 0.3 in-painting, 0.05 out-painting, 0.3 patch swapping, otherwise none. All three are computed for
    the whole batch and each image keeps its own draw, so there is no per-image Python loop (on a GPU a few dozen
    kernels per view instead of hundreds)."""
    choice = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=x.device)
    out = torch.where(choice <= 0.3, inpaint(x, generator), x)
    out = torch.where((choice > 0.3) & (choice <= 0.35), outpaint(x, generator), out)
    return torch.where((choice > 0.35) & (choice <= 0.65), swap_patches(x, generator), out)


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int, widths=(64, 128, 256, 512), strides=(2, 2, 2, 1)):
        super().__init__()
        layers, prev = [], in_channels
        for i, (width, stride) in enumerate(zip(widths, strides)):
            layers.append(nn.Conv2d(prev, width, 3, stride=stride, padding=1))
            if i > 0:
                layers.append(nn.InstanceNorm2d(width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            prev = width
        layers.append(nn.Conv2d(prev, 1, 3, padding=1))
        self.net = guard_strided_convs(nn.Sequential(*layers))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DiRA(SSLMethod):
    Config = DiRAConfig
    test_params = {"hidden_dim": 64, "output_dim": 32, "queue_size": 64}
    sync_batchnorm = False  # shuffle-BN instead (module docstring)
    # 2: official distortions (zero fills, stopping rule, window sizes, 10 swaps); queue checkpointed
    # 3: the discriminator's step under the run's mixed precision, fused Adam, no gradient from the generator loss
    version = 3

    def build(self) -> None:
        c = self.config
        dim = self.backbone.feature_dim
        self.projection_head = MoCoProjectionHead(dim, c.hidden_dim, c.output_dim)
        self.decoder = UNetDecoder(self.backbone.stage_channels, skips=True)
        self.restoration_head = nn.Conv2d(self.decoder.channels[-1], self.protocol.in_channels, 3, padding=1)
        self.criterion = NTXentLoss(
            temperature=c.temperature,
            memory_bank_size=(c.queue_size, c.output_dim),
            gather_distributed=gather_across_processes(),
        )
        self.criterion.memory_bank = HostPointerQueue.replacing(self.criterion.memory_bank)
        self.make_ema_targets("backbone", "projection_head")
        self.discriminator = PatchDiscriminator(self.protocol.in_channels) if c.adversarial_weight > 0 else None
        if self.discriminator is not None:
            deactivate_requires_grad(self.discriminator)  # trained by its own step only (module docstring)
        self.discriminator_optimizer = None
        self.discriminator_scaler = None
        self._pending_adversary = None

    def ema_momentum(self, base: float, step: Optional[int] = None) -> float:
        """MoCo's constant key-encoder momentum (no schedule)."""
        return self.config.key_momentum

    def frozen_children(self):
        return list(super().frozen_children()) + ["discriminator"]

    def make_views(self, images):
        """[distorted view 1, distorted view 2, restoration target]: the target is view 1 after crop and flip only."""
        x = to_unit_float(images)
        size = self.protocol.image_size
        crops = [random_resized_crop(x, size, cfg) for cfg in self.view_augment]
        views = []
        for crop, cfg in zip(crops, self.view_augment):
            view = photometric(crop, cfg)
            views.append(self.normalize(restoration_distortion(view) if self.config.distortions else view))
        return self.in_memory_format(views + [crops[0]])

    def restore(self, view: torch.Tensor):
        stages = self.backbone.stages(view)
        restored = torch.sigmoid(self.restoration_head(self.decoder(stages)[-1]).float())
        return pooled(stages[-1]), restored

    def momentum_keys(self, key_input: torch.Tensor) -> torch.Tensor:
        """Keys of the EMA encoder + head, with MoCo's shuffle-BN across DDP processes."""
        return shuffled_keys(lambda x: self.projection_head_target(self.backbone_target(x)).float(), key_input)

    def compute_loss(self, views, images) -> Dict[str, Any]:
        c = self.config
        query_input, key_input, target = views
        features, restored = self.restore(query_input)
        query = self.projection_head(features).float()
        key = self.momentum_keys(key_input)
        with self.full_precision():
            discriminative = self.criterion(query, key)
        restoration = F.mse_loss(restored, target.float())
        loss = discriminative + c.restoration_weight * restoration
        out = {"discriminative": discriminative, "restoration": restoration}
        if self.discriminator is not None:
            judged = self.discriminator(restored)
            adversarial = F.mse_loss(judged.float(), torch.ones_like(judged, dtype=torch.float32))
            loss = loss + c.adversarial_weight * adversarial
            out["adversarial"] = adversarial
            if self.training:  # the discriminator's step runs after this one under the same precision
                half = (
                    torch.get_autocast_dtype(self.device.type) if torch.is_autocast_enabled(self.device.type) else None
                )
                self._pending_adversary = (restored.detach(), target.detach(), half)
        out["loss"] = loss
        return out

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self._pending_adversary is not None:
            self.discriminator_step(*self._pending_adversary)
            self._pending_adversary = None

    def discriminator_step(
        self, restored: torch.Tensor, target: torch.Tensor, half: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        """One LSGAN step of the discriminator on (real = target, fake = restored), under autocast to ``half`` when
        given (the generator step's mixed precision; float16 with a gradient scaler); returns its loss."""
        if self.discriminator_optimizer is None:
            self.discriminator_optimizer = self.make_discriminator_optimizer()
        if half is torch.float16 and self.discriminator_scaler is None:
            self.discriminator_scaler = torch.amp.GradScaler(self.device.type)
        parameters = list(self.discriminator.parameters())
        with torch.enable_grad():
            for parameter in parameters:
                parameter.requires_grad_(True)
            try:
                with torch.autocast(
                    device_type=self.device.type, dtype=half or torch.float32, enabled=half is not None
                ):
                    real, fake = self.discriminator(target), self.discriminator(restored)
                loss = 0.5 * (
                    F.mse_loss(real.float(), torch.ones_like(real, dtype=torch.float32))
                    + F.mse_loss(fake.float(), torch.zeros_like(fake, dtype=torch.float32))
                )
                self.discriminator_optimizer.zero_grad(set_to_none=True)
                (self.discriminator_scaler.scale(loss) if self.discriminator_scaler else loss).backward()
            finally:
                for parameter in parameters:
                    parameter.requires_grad_(False)
        average_gradients_across_processes(self.discriminator)
        if self.discriminator_scaler is not None:
            self.discriminator_scaler.step(self.discriminator_optimizer)
            self.discriminator_scaler.update()
        else:
            self.discriminator_optimizer.step()
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def make_discriminator_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.discriminator.parameters(), lr=self.config.discriminator_lr, betas=(0.5, 0.999), fused=True
        )

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self.discriminator_optimizer is not None:
            checkpoint["discriminator_optimizer"] = self.discriminator_optimizer.state_dict()
        if self.discriminator_scaler is not None:
            checkpoint["discriminator_scaler"] = self.discriminator_scaler.state_dict()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self.discriminator is not None and "discriminator_optimizer" in checkpoint:
            self.discriminator_optimizer = self.make_discriminator_optimizer()
            self.discriminator_optimizer.load_state_dict(checkpoint["discriminator_optimizer"])
        if self.discriminator is not None and "discriminator_scaler" in checkpoint:
            self.discriminator_scaler = torch.amp.GradScaler(self.device.type)
            self.discriminator_scaler.load_state_dict(checkpoint["discriminator_scaler"])
