"""MLVICX: multi-level variance-covariance exploration (Singh & Mishra, IEEE JBHI 2024, section III).

Follows the official ``models/mlvicx.py`` (spec section 2) on the suite's ResNet-18:

* Context bottleneck: a CBAM-style block after each of the five stages (stem, layer1-4), whose output feeds the
  next stage: channel attention (average- and max-pooled descriptors through a shared 1x1-conv MLP with reduction
  2, summed, sigmoid), then spatial attention (7x7 conv on the channel-wise mean and max, sigmoid).
* Global branch: GAP of the last attended map -> expander Linear-BN-ReLU, Linear-BN-ReLU, Linear-BN
  (512 -> 4096 -> 4096 -> 4096 in the official code).
* Dense branch: every attended map is bilinearly resized to 64/224 of the input size (64 x 64 at 224 px), mapped to
  512 channels by its own 1x1 conv, and the five maps are summed; adaptive average pooling to 4 x 4 and flattening
  give 8192 features -> an expander of the same shape. The official 1x1 convs are created inside ``forward``
  after the optimiser was built, so they are never trained; we train them (spec "Decisions").
* Loss: VICReg(global) + ``dense_weight`` * VICReg(dense) (1:1 officially), each with weights 25/25/1 (lightly's
  ``VICRegLoss``, the official formulas).
* Augmentations: VICReg's asymmetric blur (1.0 / 0.1) and solarisation (0 / 0.2) on top of the suite's.
* Evaluation uses the **plain ResNet-18**: the exported encoder is the trunk without the context bottlenecks, as
  the official ``ln_cls.py`` loads the weights positionally into torchvision's resnet18 and drops them. The
  attention blocks are a pretraining-only module, like the heads.
* BatchNorm statistics of the exported trunk: during training every stage after the first sees the *attended*
  output of the stage before, so the trunk's running statistics describe that path, not the plain trunk's (at
  initialisation layer4's input RMS is 0.27 with the attention blocks and 762 without). A frozen encoder probed in
  eval mode would normalise inputs it never saw. The official ``ln_cls.py`` hides this by probing in train mode,
  which re-estimates BatchNorm on the plain trunk from the probe's own batches. We re-estimate explicitly, once,
  before export (``reestimate_exported_batchnorm``): one pass over the pretraining corpus through both training
  views, cumulative average, as the random-init row gets its statistics (``methods/supervised.py``); the
  weights are untouched. The learning-signal monitor probes the trunk the same way.
"""

from __future__ import annotations

import dataclasses
from typing import List

import torch
import torch.nn.functional as F
from lightly.loss import VICRegLoss
from lightly.models.modules.heads import ProjectionHead
from torch import nn

from methods.base import MethodConfig, SSLMethod, gather_across_processes, pooled


@dataclasses.dataclass
class MLVICXConfig(MethodConfig):
    hidden_dim: int = 4096
    output_dim: int = 4096
    dense_channels: int = 512
    dense_size_ratio: float = 64 / 224
    dense_grid: int = 4
    dense_weight: float = 1.0
    invariance_weight: float = 25.0
    variance_weight: float = 25.0
    covariance_weight: float = 1.0


class ContextBottleneck(nn.Module):
    """CBAM-style channel then spatial attention (Woo et al. 2018) with reduction 2, as the official block."""

    def __init__(self, channels: int, reduction: int = 2, kernel_size: int = 7):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.channel_mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel_gate = torch.sigmoid(
            self.channel_mlp(F.adaptive_avg_pool2d(x, 1)) + self.channel_mlp(F.adaptive_max_pool2d(x, 1))
        )
        x = x * channel_gate
        spatial_gate = torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)))
        return x * spatial_gate


def expander(in_dim: int, hidden_dim: int, out_dim: int) -> ProjectionHead:
    """Linear-BN-ReLU, Linear-BN-ReLU, Linear-BN (the official MLVICX heads end in BatchNorm)."""
    return ProjectionHead(
        [
            (in_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU()),
            (hidden_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU()),
            (hidden_dim, out_dim, nn.BatchNorm1d(out_dim), None),
        ]
    )


class MLVICX(SSLMethod):
    Config = MLVICXConfig
    test_params = {"hidden_dim": 64, "output_dim": 64, "dense_channels": 16}
    reestimate_exported_batchnorm = True
    version = 2  # 2: the exported trunk's BatchNorm statistics are those of the plain trunk
    view_overrides = {"blur_p": [1.0, 0.1], "solarize_p": [0.0, 0.2]}

    def build(self) -> None:
        c = self.config
        self.context = nn.ModuleList(ContextBottleneck(ch) for ch in self.backbone.stage_channels)
        self.dense_projections = nn.ModuleList(
            nn.Conv2d(ch, c.dense_channels, 1) for ch in self.backbone.stage_channels
        )
        self.global_head = expander(self.backbone.feature_dim, c.hidden_dim, c.output_dim)
        self.dense_head = expander(c.dense_channels * c.dense_grid**2, c.hidden_dim, c.output_dim)
        self.dense_size = max(c.dense_grid, int(round(self.protocol.image_size * c.dense_size_ratio)))
        self.criterion = VICRegLoss(
            c.invariance_weight, c.variance_weight, c.covariance_weight, gather_distributed=gather_across_processes()
        )

    def attended_stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The trunk's five stages, each followed by its context bottleneck, which feeds the next stage."""
        b = self.backbone
        maps = [self.context[0](b.relu(b.bn1(b.conv1(x))))]
        maps.append(self.context[1](b.layer1(b.maxpool(maps[-1]))))
        for i, layer in enumerate((b.layer2, b.layer3, b.layer4), start=2):
            maps.append(self.context[i](layer(maps[-1])))
        return maps

    def embed(self, view: torch.Tensor):
        maps = self.attended_stages(view)
        size = (self.dense_size, self.dense_size)
        dense = sum(
            proj(F.interpolate(m, size=size, mode="bilinear", align_corners=False))
            for proj, m in zip(self.dense_projections, maps)
        )
        dense = torch.flatten(F.adaptive_avg_pool2d(dense, self.config.dense_grid), 1)
        return self.global_head(pooled(maps[-1])).float(), self.dense_head(dense).float()

    def compute_loss(self, views, images):
        (global_a, dense_a), (global_b, dense_b) = (self.embed(v) for v in views)
        with self.full_precision():
            global_term = self.criterion(global_a, global_b)
            dense_term = self.criterion(dense_a, dense_b)
        return {"loss": global_term + self.config.dense_weight * dense_term, "global": global_term, "dense": dense_term}
