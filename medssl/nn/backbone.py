"""The shared encoder: torchvision ResNet-18 trunk (random initialisation) returning the last feature map.

Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``). A grayscale suite trains a
1-channel ``conv1``, which torchvision's 3-channel ``resnet18`` cannot load as is: ``export`` (medssl/pretrain/export.py) also
writes a 3-channel variant (:func:`adapt_stem`) that ``torchvision.models.resnet18().load_state_dict(sd,
strict=False)`` loads with only ``fc`` missing. Grayscale inputs use a 1-channel stem: this equals the official repos' ``convert('RGB')`` (three identical channels) with the three
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
# Part of every pretraining hash (medssl/plan/jobs.py): bump when a change alters the trunk's architecture or its random
# initialisation, so encoders built by the old code are never reused. 2: the 1-channel stem initialised as torchvision.
TRUNK_VERSION = 2


class OneDNNSafeConv2d(nn.Conv2d):
    """A strided convolution that runs in fp32 on a map one pixel wide under CPU bf16 autocast.

    oneDNN's bf16 weight gradient of a 3x3 stride-2 convolution is wrong when its input is one pixel wide (measured
    with torch 2.14: values up to 1e38 or NaN that change from call to call, while fp32 and wider inputs are exact).
    A ResNet reaches that case in ``layer4`` on views of 16 px or less (SwAV's and PCRLv2's local crops at small
    image sizes); the pretraining then diverged or was not reproducible. Such maps are tiny, so fp32 costs nothing;
    everywhere else the layer is an ordinary ``nn.Conv2d`` (same parameters, same state-dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and min(x.shape[-2:]) == 1 and torch.is_autocast_enabled("cpu"):
            if torch.get_autocast_dtype("cpu") == torch.bfloat16:
                with torch.autocast("cpu", enabled=False):
                    return super().forward(x.float())
        return super().forward(x)


def guard_strided_convs(module: nn.Module) -> nn.Module:
    """Make every strided, wider-than-1x1 ``nn.Conv2d`` in ``module`` a :class:`OneDNNSafeConv2d` in place."""
    for conv in module.modules():
        if type(conv) is nn.Conv2d and conv.stride != (1, 1) and conv.kernel_size != (1, 1):
            conv.__class__ = OneDNNSafeConv2d
    return module


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
        guard_strided_convs(self)

    @property
    def stage_channels(self) -> tuple:
        """Widths of the five maps of :meth:`stages` (ResNet-18/34: 64, 64, 128, 256, 512; ResNet-50: 64, 256, 512,
        1024, 2048), read from the layers, so decoders built on the trunk fit any depth."""
        return (self.conv1.out_channels,) + tuple(
            self._stage_width(layer) for layer in (self.layer1, self.layer2, self.layer3, self.layer4)
        )

    @staticmethod
    def _stage_width(layer: nn.Sequential) -> int:
        last = layer[-1]
        return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features

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


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A ``conv1`` weight (out x C x k x k) for ``in_channels`` inputs. 3 -> 1: summed over the input channels (a
    grayscale image fed as three equal channels gives the same output; timm's ``in_chans=1`` does the same); 1 -> 3:
    repeated and divided by 3 (an image with three equal channels gives the 1-channel output; other images see their
    channel mean). Other conversions are refused."""
    have = weight.shape[1]
    if have == in_channels:
        return weight
    if have == 3 and in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if have == 1 and in_channels == 3:
        return weight.repeat(1, 3, 1, 1) / 3
    raise ValueError(f"conv1 has {have} input channels; only 1 <-> 3 can be converted, not to {in_channels}")
