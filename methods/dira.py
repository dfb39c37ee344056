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
* Restoration (section 3, "Restorative learning"): a U-Net on the same ResNet-18 encoder (``medssl.unet``,
  smp's decoder widths 256-16) with a sigmoid output restores view 1 from its distorted version; L_r = MSE,
  weight 10. Target = the view-1 crop **after** the same crop and flip as the input, before the intensity
  distortions (spec "Decisions"; the official target is taken before the flip, so input and target are mirrored
  half of the time).
* Distortions (official ``Custom_Distoration``, applied to both views after the photometric augmentations): with
  probability 0.3 in-painting (up to 10 blocks of 10-70/224 of the side filled with uniform noise), 0.05
  out-painting (noise outside 1-4 kept windows of 0.4-0.7 of the side), 0.3 swapping of up to 10 pairs of
  10-15/224 patches, otherwise none.
* Adversary (section 3, "Adversarial learning"): LSGAN. Discriminator = conv3x3 with strides 2, 2, 2, 1 and
  widths 64-512 (InstanceNorm except the first, LeakyReLU 0.2), a final conv3x3 to one channel, N(0, 0.02) init;
  L_G adds 0.001 * MSE(D(restored), 1), L_D = [MSE(D(target), 1) + MSE(D(restored), 0)] / 2 with Adam 2e-4,
  betas (0.5, 0.999), one discriminator step after every generator step (``on_train_batch_end``). That step runs
  outside DDP's forward, so its gradients are all-reduced by hand: every process keeps the same discriminator.
  The official code trains in two stages (discrimination + restoration for 1200 epochs at batch 256, then all
  three for 400 epochs at batch 16 from that checkpoint); under the suite's shared protocol we train the three
  losses jointly for the suite's epochs and batch size.
* Inputs: 1-channel images normalised like every method of the suite (official: 3-channel [0, 1]); the
  restoration target stays in [0, 1] to match the sigmoid output.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import MoCoProjectionHead
from lightly.models.utils import batch_shuffle_distributed, batch_unshuffle_distributed
from lightly.utils.dist import world_size
from torch import nn

from medssl.augment import photometric, random_resized_crop, to_unit_float
from medssl.unet import UNetDecoder
from methods.base import MethodConfig, SSLMethod, average_gradients_across_processes, gather_across_processes, pooled


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


def _side(fraction: float, size: int) -> int:
    return max(1, int(round(fraction * size)))


def restoration_distortion(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DiRA/CAiD's ``Custom_Distoration`` on a [0,1] batch, one randomly chosen distortion per image."""
    out = x.clone()
    n, c, h, w = x.shape

    def rand(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    def randint(low: int, high: int) -> int:  # inclusive bounds
        return int(torch.randint(low, high + 1, (), generator=generator))

    for i in range(n):
        r = float(torch.rand((), generator=generator))
        if r <= 0.3:  # in-painting
            for _ in range(randint(1, 10)):
                bh, bw = _side(rand(10, 70) / 224, h), _side(rand(10, 70) / 224, w)
                top, left = randint(0, h - bh), randint(0, w - bw)
                out[i, :, top : top + bh, left : left + bw] = torch.rand((c, bh, bw), generator=generator, device=x.device).to(x.dtype)
        elif r <= 0.35:  # out-painting
            out[i] = torch.rand((c, h, w), generator=generator, device=x.device).to(x.dtype)
            for _ in range(randint(1, 4)):
                bh, bw = _side(rand(0.4, 0.7), h), _side(rand(0.4, 0.7), w)
                top, left = randint(0, h - bh), randint(0, w - bw)
                out[i, :, top : top + bh, left : left + bw] = x[i, :, top : top + bh, left : left + bw]
        elif r <= 0.65:  # patch swapping
            for _ in range(randint(1, 10)):
                side = min(_side(rand(10, 15) / 224, min(h, w)), h // 2, w // 2)
                if side < 1:
                    break
                (t1, l1), (t2, l2) = [(randint(0, h - side), randint(0, w - side)) for _ in range(2)]
                a = out[i, :, t1 : t1 + side, l1 : l1 + side].clone()
                out[i, :, t1 : t1 + side, l1 : l1 + side] = out[i, :, t2 : t2 + side, l2 : l2 + side]
                out[i, :, t2 : t2 + side, l2 : l2 + side] = a
    return out


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
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DiRA(SSLMethod):
    Config = DiRAConfig
    sync_batchnorm = False  # shuffle-BN instead (module docstring)

    def build(self) -> None:
        c = self.config
        dim = self.backbone.feature_dim
        self.projection_head = MoCoProjectionHead(dim, c.hidden_dim, c.output_dim)
        self.decoder = UNetDecoder(skips=True)
        self.restoration_head = nn.Conv2d(self.decoder.channels[-1], self.protocol.in_channels, 3, padding=1)
        self.criterion = NTXentLoss(temperature=c.temperature, memory_bank_size=(c.queue_size, c.output_dim), gather_distributed=gather_across_processes())
        self.make_ema_targets("backbone", "projection_head")
        self.discriminator = PatchDiscriminator(self.protocol.in_channels) if c.adversarial_weight > 0 else None
        self.discriminator_optimizer = None
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

    @torch.no_grad()
    def momentum_keys(self, key_input: torch.Tensor) -> torch.Tensor:
        """Keys of the EMA encoder + head, with MoCo's shuffle-BN across DDP processes."""
        if world_size() == 1:
            return self.projection_head_target(self.backbone_target(key_input)).float()
        shuffled, restore = batch_shuffle_distributed(key_input)
        return batch_unshuffle_distributed(self.projection_head_target(self.backbone_target(shuffled)).float(), restore)

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
            if self.training:
                self._pending_adversary = (restored.detach(), target.detach())
        out["loss"] = loss
        return out

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self._pending_adversary is not None:
            self.discriminator_step(*self._pending_adversary)
            self._pending_adversary = None

    def discriminator_step(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One LSGAN step of the discriminator on (real = target, fake = restored); returns its loss."""
        if self.discriminator_optimizer is None:
            self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.config.discriminator_lr, betas=(0.5, 0.999))
        real, fake = self.discriminator(target), self.discriminator(restored)
        loss = 0.5 * (F.mse_loss(real, torch.ones_like(real)) + F.mse_loss(fake, torch.zeros_like(fake)))
        self.discriminator_optimizer.zero_grad(set_to_none=True)  # drops the gradients the generator loss left
        loss.backward()
        average_gradients_across_processes(self.discriminator)
        self.discriminator_optimizer.step()
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self.discriminator_optimizer is not None:
            checkpoint["discriminator_optimizer"] = self.discriminator_optimizer.state_dict()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self.discriminator is not None and "discriminator_optimizer" in checkpoint:
            self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.config.discriminator_lr, betas=(0.5, 0.999))
            self.discriminator_optimizer.load_state_dict(checkpoint["discriminator_optimizer"])
