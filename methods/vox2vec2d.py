"""vox2vec, 2D pixel-level variant (Goncharov et al., MICCAI 2023, section 2) for the X-ray suites.

vox2vec learns voxel-level representations by contrasting the feature-pyramid vector of the same voxel in two
overlapping crops against all other sampled voxels (InfoNCE, temperature 0.1; spec section 6). Our 2D adaptation:

* Backbone and pyramid: the suite's ResNet-18 trunk with an FPN decoder on its five stages (strides 2-32). The
  official FPN3d (its own 3D ResNet, 16-512 channels) is replaced by the shared encoder, because every method of a
  suite must train the same backbone. Decoder level i: the coarser level through a 1x1 conv to this level's
  width, nearest upsampling, plus a 1x1 conv of the encoder stage, then conv3x3-BN-ReLU (the official uses two
  residual blocks). A pixel's vector is the concatenation of all five levels sampled (bilinearly) at its position:
  64 + 64 + 128 + 256 + 512 = 1024 dims (official 1008).
* Projector: (Linear-BN-ReLU) x 2, Linear to 128, L2-normalised (official).
* Sampling: per image an anchor point, two crops (the suite's scale and aspect ratio, **no flip or rotation**: the
  official only crops) that both contain it, and ``points_per_image`` positions drawn uniformly in the crops'
  overlap; their coordinates in each crop give the positive pairs. Each view then gets the suite's intensity
  augmentations (the official blur/sharpen, noise and random HU window, re-expressed for radiographs).
* Loss: symmetric InfoNCE in which each sampled pixel's negatives are all other sampled pixels of both views
  (the SimCLR NT-Xent form, lightly's ``NTXentLoss``). Officially a batch holds 10 patch pairs of one CT, so the
  negatives are other voxels of the same scan; here a batch holds pixels of many radiographs, so negatives come
  from the same and from other images.
* Evaluation uses the ResNet-18 trunk; the FPN decoder and projector are pretraining heads. The 3D method on CT
  volumes is a separate entry.
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import ProjectionHead
from torch import nn

from medssl.nn.augment import CropBoxes, apply_crop_boxes, draw_crop_boxes, photometric, to_unit_float
from medssl.nn.unet import conv_bn_relu
from methods.base import MethodConfig, SSLMethod, gather_across_processes


@dataclasses.dataclass
class Vox2Vec2dConfig(MethodConfig):
    points_per_image: int = 16
    temperature: float = 0.1
    hidden_dim: int = 1024
    output_dim: int = 128


class PyramidDecoder(nn.Module):
    """Top-down FPN over the trunk's stages, one output per stage at that stage's width and stride."""

    def __init__(self, stage_channels: Sequence[int]):
        super().__init__()
        widths = list(stage_channels)
        self.reduce = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i], 1) for i in range(len(widths) - 1))
        self.lateral = nn.ModuleList(nn.Conv2d(widths[i], widths[i], 1) for i in range(len(widths) - 1))
        self.smooth = nn.ModuleList(nn.Sequential(*conv_bn_relu(widths[i], widths[i])) for i in range(len(widths) - 1))
        self.dim = sum(widths)

    def forward(self, stages: List[torch.Tensor]) -> List[torch.Tensor]:
        levels = [stages[-1]]
        for i in reversed(range(len(stages) - 1)):
            upper = F.interpolate(self.reduce[i](levels[0]), size=stages[i].shape[-2:], mode="nearest")
            levels.insert(0, self.smooth[i](upper + self.lateral[i](stages[i])))
        return levels


def sample_levels(levels: List[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
    """Concatenated pyramid vectors at ``coords`` (N x P x 2, normalised view coordinates) -> (N*P) x sum(C).

    Sampled in fp32 with autocast off: bf16 coordinates are off by up to 1 pixel of a 224-px view (8 bits of
    mantissa), which would pair slightly different pixels of the two views."""
    grid = coords[:, :, None, :].float()
    with torch.autocast(device_type=grid.device.type, enabled=False):
        sampled = [
            F.grid_sample(level.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)[..., 0]
            for level in levels
        ]
    vectors = torch.cat(sampled, dim=1)  # N x C x P
    return vectors.transpose(1, 2).reshape(-1, vectors.shape[1])


class Vox2Vec2d(SSLMethod):
    Config = Vox2Vec2dConfig
    test_params = {"hidden_dim": 64, "output_dim": 32, "points_per_image": 8}
    version = 2  # 2: pyramid features sampled at fp32 coordinates under mixed precision (were cast to bf16)

    def build(self) -> None:
        c = self.config
        self.pyramid = PyramidDecoder(self.backbone.stage_channels)
        self.projection_head = ProjectionHead(
            [
                (self.pyramid.dim, c.hidden_dim, nn.BatchNorm1d(c.hidden_dim), nn.ReLU()),
                (c.hidden_dim, c.hidden_dim, nn.BatchNorm1d(c.hidden_dim), nn.ReLU()),
                (c.hidden_dim, c.output_dim, None, None),
            ]
        )
        self.criterion = NTXentLoss(temperature=c.temperature, gather_distributed=gather_across_processes())
        self.view_augment = [dataclasses.replace(cfg, hflip_p=0.0, rotate_degrees=0.0) for cfg in self.view_augment]

    def overlapping_boxes(self, n: int, device) -> List[CropBoxes]:
        """Two crop boxes per image that both contain a random anchor point."""
        anchor = torch.rand(n, 2, device=device) * 2 - 1
        boxes = []
        for cfg in self.view_augment:
            box = draw_crop_boxes(n, cfg, device=device)
            for centre, half, a in (
                (box.centre_x, box.half_width, anchor[:, 0]),
                (box.centre_y, box.half_height, anchor[:, 1]),
            ):
                low = torch.maximum(-(1 - half), a - half)
                high = torch.minimum(1 - half, a + half)
                centre.copy_(low + (high - low) * torch.rand(n, device=device))
            boxes.append(box)
        return boxes

    def make_views(self, images):
        """[view 1, view 2, pixel coordinates in view 1, the same pixels' coordinates in view 2] (N x P x 2)."""
        x = to_unit_float(images)
        n, p = len(x), self.config.points_per_image
        boxes = self.overlapping_boxes(n, x.device)
        first, second = boxes
        low_x = torch.maximum(first.centre_x - first.half_width, second.centre_x - second.half_width)
        high_x = torch.minimum(first.centre_x + first.half_width, second.centre_x + second.half_width)
        low_y = torch.maximum(first.centre_y - first.half_height, second.centre_y - second.half_height)
        high_y = torch.minimum(first.centre_y + first.half_height, second.centre_y + second.half_height)
        u = torch.rand(n, p, device=x.device)
        v = torch.rand(n, p, device=x.device)
        points_x = low_x[:, None] + (high_x - low_x)[:, None] * u
        points_y = low_y[:, None] + (high_y - low_y)[:, None] * v
        views, coords = [], []
        for box, cfg in zip(boxes, self.view_augment):
            views.append(self.normalize(photometric(apply_crop_boxes(x, self.protocol.image_size, box), cfg)))
            coords.append(
                torch.stack(
                    [
                        (points_x - box.centre_x[:, None]) / box.half_width[:, None],
                        (points_y - box.centre_y[:, None]) / box.half_height[:, None],
                    ],
                    dim=-1,
                )
            )
        return self.in_memory_format(views) + coords

    def pixel_embeddings(self, view: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        vectors = sample_levels(self.pyramid(self.backbone.stages(view)), coords)
        return self.projection_head(vectors).float()

    def compute_loss(self, views, images):
        first, second, coords_first, coords_second = views
        embeddings = self.pixel_embeddings(first, coords_first), self.pixel_embeddings(second, coords_second)
        with self.full_precision():
            return {"loss": self.criterion(*embeddings)}
