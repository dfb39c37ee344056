"""PCRLv2: preservation of pixel, scale and semantic information (Zhou et al., TPAMI 2023, section 3), 2D variant.

Follows the official ``train_2d.py`` (spec section 5) on the suite's ResNet-18 encoder:

* Decoder: five blocks **without skip connections** (nearest x2, two conv3x3-BN-ReLU; widths 256-16, the
  ``medssl.nn.unet`` decoder with ``skips=False``). Every block i has a deep-supervision head (conv3x3-BN-ReLU,
  conv1x1 to the image channels, bilinear upsampling to the input size), a projection ``pro_i = BN1d(GAP(x_i))``
  and a predictor ``pre_i = MLP(C -> 2C, BN, ReLU, -> C)(pro_i)``; a final conv3x3 16 -> channels restores the image.
* Multi-scale alignment (section 3.2): for a pair of views, one **random decoder level** i is drawn and
  ``L = -(cos(pre_i(a), SG pro_i(b)) + cos(pre_i(b), SG pro_i(a))) / 2``. Global term: the two global views. Local
  term: each of ``n_local_views`` = 6 local views (96/224 of the resolution, area 0.05-0.3) with each global view,
  each pair with its own random level, summed and divided by 12 (2 x 6). As the official ``train_2d.py``, each
  global view is its own forward pass, and the local views are concatenated into **one** forward pass (with
  ``pro``/``pre`` of every level), so every BatchNorm layer normalises them with the statistics of all
  ``n_local_views`` x batch local crops together; each local view's embeddings are then its slice of that batch.
* Pixel restoration (section 3.1): ``MSE(final(view 1), gt) + beta * MSE(mid_i(view 1), gt)`` with the level i of
  the global term, gt = view 1 after the spatial transforms only (crop, flip, rotation), normalised, and
  ``beta = (1 + cos(pi * progress)) / 2`` (official: over 240 epochs; here over the suite's training). At input
  sides that are not a multiple of 32 (the quick suite's 48 px) the skip-free decoder doubles the 2x2 map up to
  64 px; the final restoration is resized bilinearly to the input size (the official code only runs at 224 px).
* ``level_sampling: all`` replaces each random level by the mean over all five (an open question of the spec:
  the paper's text can be read either way); the default is the official random level.
* Total: the unweighted sum of the global, local and restoration terms (official).
* Augmentations: the suite's crop scale for the global views (official 0.3-1), rotation +-10 degrees, flip, the
  suite's intensity augmentations (no colour jitter or grayscale on 1-channel images) and cutout of 3 holes of
  32/224 of the side on the global views only. Cutout comes after normalisation, as the official ``Cutout`` zeroes
  the normalised tensor: the holes hold the corpus mean, not black.
* All similarity terms are computed in fp32 with autocast off.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from medssl.nn.augment import augment_view, cutout, photometric, random_resized_crop, to_unit_float
from medssl.nn.unet import UNetDecoder, conv_bn_relu
from methods.base import MethodConfig, SSLMethod


def input_sized(restoration: torch.Tensor, size: int) -> torch.Tensor:
    """A restoration map at the input's size (bilinear when it differs), in fp32 for the MSE."""
    if restoration.shape[-1] != size:
        restoration = F.interpolate(restoration, size=(size, size), mode="bilinear", align_corners=False)
    return restoration.float()


@dataclasses.dataclass
class PCRLv2Config(MethodConfig):
    n_local_views: int = 6
    local_crop_scale: Tuple[float, float] = (0.05, 0.3)
    local_size_ratio: float = 96 / 224
    rotate_degrees: float = 10.0
    cutout_holes: int = 3
    cutout_fraction: float = 32 / 224
    level_sampling: str = "random"  # "random": one random decoder level per term (official); "all": mean over levels


class LevelHeads(nn.Module):
    """Per decoder level: the deep-supervision restoration head, ``pro`` and ``pre``."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.restore = nn.Sequential(*conv_bn_relu(channels, channels), nn.Conv2d(channels, out_channels, 1))
        self.project = nn.BatchNorm1d(channels)
        self.predict = nn.Sequential(
            nn.Linear(channels, 2 * channels),
            nn.BatchNorm1d(2 * channels),
            nn.ReLU(inplace=True),
            nn.Linear(2 * channels, channels),
        )


class PCRLv2(SSLMethod):
    Config = PCRLv2Config
    test_params = {"n_local_views": 2, "level_sampling": "all"}  # a random level per step makes the loss jump
    version = 2  # 2: cutout after normalisation (official fill), local views in one forward pass, fp32 similarities

    def build(self) -> None:
        c = self.config
        if c.level_sampling not in ("random", "all"):
            raise ValueError(f"level_sampling must be 'random' or 'all', got {c.level_sampling!r}")
        # one random level per term leaves the other levels' heads without a gradient in that step (on each DDP
        # process its own draw, as the official code's random.randint per process)
        self.ddp_find_unused_parameters = c.level_sampling == "random"
        self.decoder = UNetDecoder(self.backbone.stage_channels, skips=False)
        self.level_heads = nn.ModuleList(LevelHeads(ch, self.protocol.in_channels) for ch in self.decoder.channels)
        self.final_head = nn.Conv2d(self.decoder.channels[-1], self.protocol.in_channels, 3, padding=1)
        spatial = {"rotate_degrees": c.rotate_degrees}
        self.global_augment = [dataclasses.replace(cfg, **spatial) for cfg in self.view_augment]
        self.local_augment = [
            dataclasses.replace(self.view_augment[i % self.n_views], crop_scale=tuple(c.local_crop_scale), **spatial)
            for i in range(c.n_local_views)
        ]
        self.local_size = max(8, int(round(self.protocol.image_size * c.local_size_ratio)))

    def make_views(self, images):
        """[global view 1, global view 2, restoration target of view 1, local views...]."""
        x = to_unit_float(images)
        size, c = self.protocol.image_size, self.config
        crops = [random_resized_crop(x, size, cfg) for cfg in self.global_augment]
        global_views = [
            cutout(self.normalize(photometric(crop, cfg)), c.cutout_holes, c.cutout_fraction)
            for crop, cfg in zip(crops, self.global_augment)
        ]
        local_views = [self.normalize(augment_view(x, self.local_size, cfg)) for cfg in self.local_augment]
        return self.in_memory_format(global_views + [self.normalize(crops[0])] + local_views)

    def levels(self, view: torch.Tensor):
        return self.decoder(self.backbone.stages(view))

    def level_embeddings(self, levels) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """(pro_i, pre_i) of every decoder level i, as the official decoder computes them in its forward pass."""
        embeddings = []
        for heads, level in zip(self.level_heads, levels):
            pro = heads.project(torch.flatten(F.adaptive_avg_pool2d(level, 1), 1))
            embeddings.append((pro, heads.predict(pro)))
        return embeddings

    @staticmethod
    def alignment(embeddings_a, embeddings_b, i: int) -> torch.Tensor:
        """Level i's symmetric negative cosine between predictions and stop-gradient projections, in fp32."""
        (pro_a, pre_a), (pro_b, pre_b) = embeddings_a[i], embeddings_b[i]
        with torch.autocast(device_type=pro_a.device.type, enabled=False):
            cos = lambda p, z: F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()
            return -0.5 * (cos(pre_a, pro_b) + cos(pre_b, pro_a))

    def sampled_levels(self) -> List[int]:
        """The decoder levels a term averages over: one random level, or all of them."""
        if self.config.level_sampling == "all":
            return list(range(len(self.decoder.channels)))
        return [int(torch.randint(len(self.decoder.channels), ()))]

    def restoration_weight(self) -> float:
        progress = min(self.global_step, self.protocol.total_steps) / self.protocol.total_steps
        return 0.5 * (1 + math.cos(math.pi * progress))

    def compute_loss(self, views, images):
        first, second, target = views[:3]
        local_views = views[3:]
        levels = [self.levels(first), self.levels(second)]
        global_embeddings = [self.level_embeddings(lv) for lv in levels]
        chosen = self.sampled_levels()
        global_term = sum(self.alignment(*global_embeddings, i) for i in chosen) / len(chosen)
        local_term = torch.zeros((), device=first.device)
        if local_views:
            local_batch = self.level_embeddings(self.levels(torch.cat(local_views)))  # one pass, as the official code
            n = len(first)
            for j in range(len(local_views)):
                local_embeddings = [(pro[j * n : (j + 1) * n], pre[j * n : (j + 1) * n]) for pro, pre in local_batch]
                for embeddings in global_embeddings:
                    pair_levels = self.sampled_levels()
                    local_term = local_term + sum(
                        self.alignment(local_embeddings, embeddings, i) for i in pair_levels
                    ) / len(pair_levels)
            local_term = local_term / (2 * len(local_views))
        size, target = first.shape[-1], target.float()
        # sides that are not a multiple of 32 (e.g. 48 px): the skip-free decoder overshoots the input size
        final = input_sized(self.final_head(levels[0][-1]).float(), size)
        middle = sum(F.mse_loss(self.deep_supervision(levels[0], i, size), target) for i in chosen) / len(chosen)
        restoration = F.mse_loss(final, target) + self.restoration_weight() * middle
        loss = global_term + local_term + restoration
        return {"loss": loss, "global": global_term, "local": local_term, "restoration": restoration}

    def deep_supervision(self, levels, i: int, size: int) -> torch.Tensor:
        """Level i's restoration, bilinearly upsampled to the input size."""
        return input_sized(self.level_heads[i].restore(levels[i]), size)
