"""A U-Net decoder on the ResNet trunk's stages (segmentation_models_pytorch's ``Unet`` layout).

Five blocks take the stride-32 map back to the input resolution, each: nearest x2 upsampling, concatenation with
the encoder stage of the same stride (when ``skips``), then two conv3x3-BN-ReLU. Channels (256, 128, 64, 32, 16)
as smp's default, which the DiRA/CAiD U-Net and PCRLv2's decoder (without skips) use. The decoder returns every
block's output, so methods with deep supervision (PCRLv2) can use the intermediate levels.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

DECODER_CHANNELS = (256, 128, 64, 32, 16)


def conv_bn_relu(in_channels: int, out_channels: int) -> List[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class DecoderBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.convs = nn.Sequential(
            *conv_bn_relu(in_channels + skip_channels, out_channels), *conv_bn_relu(out_channels, out_channels)
        )

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        size = skip.shape[-2:] if skip is not None else (x.shape[-2] * 2, x.shape[-1] * 2)
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class UNetDecoder(nn.Module):
    """``stage_channels``: the trunk's stage widths from the stem to the deepest (``ResNetTrunk.stage_channels``)."""

    def __init__(self, stage_channels: Sequence[int], channels: Sequence[int] = DECODER_CHANNELS, skips: bool = True):
        super().__init__()
        if len(channels) != len(stage_channels):
            raise ValueError(
                f"one decoder block per encoder stage: {len(stage_channels)} stages, {len(channels)} blocks"
            )
        skip_channels = list(reversed(stage_channels[:-1])) + [0]
        blocks, prev = [], stage_channels[-1]
        for width, skip in zip(channels, skip_channels):
            blocks.append(DecoderBlock(prev, skip if skips else 0, width))
            prev = width
        self.blocks = nn.ModuleList(blocks)
        self.skips = skips
        self.channels = tuple(channels)

    def forward(self, stages: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """``stages`` from ``ResNetTrunk.stages``; returns the output of every block, coarsest first. With skips
        each block takes its skip's size; the last block doubles the stem's size (the input size for even inputs)."""
        skips = list(reversed(stages[:-1])) if self.skips else [None] * (len(stages) - 1)
        x, levels = stages[-1], []
        for block, skip in zip(self.blocks, skips + [None]):
            x = block(x, skip)
            levels.append(x)
        return levels
