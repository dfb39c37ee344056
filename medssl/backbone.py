"""The shared encoder: torchvision ResNet-18 trunk (random initialisation) returning the last feature map.

Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``) so an exported encoder loads
into ``torchvision.models.resnet18`` with ``strict=False`` (only ``fc`` is missing). Grayscale inputs use a
1-channel stem: this equals the official repos' ``convert('RGB')`` (three identical channels) with the three
filter slices summed, at a third of the stem's cost, and it starts as exactly that: the sum over input channels of
torchvision's initialised 3-channel stem (Kaiming normal, fan-out), so the network starts where the official code's
does on an RGB-converted X-ray. PyTorch's own ``Conv2d`` default (Kaiming uniform, a = sqrt(5)) would be a
different start, about twice the spread. Other channel counts get torchvision's initialisation afresh.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn

FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
# Part of every pretraining hash (medssl/plan.py): bump when a change alters the trunk's architecture or its random
# initialisation, so encoders built by the old code are never reused. 2: the 1-channel stem initialised as torchvision.
TRUNK_VERSION = 2


class ResNetTrunk(nn.Module):
    def __init__(self, arch: str = "resnet18", in_channels: int = 1):
        super().__init__()
        if arch not in FEATURE_DIMS:
            raise ValueError(f"unknown backbone {arch!r}; choose one of {sorted(FEATURE_DIMS)}")
        net = getattr(torchvision.models, arch)(weights=None)
        if in_channels != 3:
            rgb_stem = net.conv1.weight.detach()
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            with torch.no_grad():
                if in_channels == 1:
                    net.conv1.weight.copy_(rgb_stem.sum(dim=1, keepdim=True))
                else:
                    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.arch = arch
        self.in_channels = in_channels
        self.feature_dim = FEATURE_DIMS[arch]

    def stages(self, x: torch.Tensor):
        """Feature maps after the stem and after each of the four stages (strides 2, 4, 8, 16, 32)."""
        stem = self.relu(self.bn1(self.conv1(x)))
        c1 = self.layer1(self.maxpool(stem))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [stem, c1, c2, c3, c4]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.forward_features(x), 1), 1)
