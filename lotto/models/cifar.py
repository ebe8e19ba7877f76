"""CIFAR-style VGG and ResNet-20/56 with BatchNorm, described by a per-layer channel list.

Every prunable width is a constructor argument (`channels`), so a structurally pruned network is
the same class built with a shorter list, and weights copy over by slicing (lotto/structured.py).
Each model answers `channel_slots()`: for every module with weights, which entry of `channels`
indexes its output (dim 0) and its input (dim 1) channels, or None where the width is fixed.
That table is all the "dependency tracking" our own models need.

Conventions (Liu et al. 2019 / network-slimming code, adapted to 28x28 and 32x32 inputs):
VGG has 3x3 conv-BN-ReLU layers, max-pools between stages while the feature map is at least 2x2
(so 8x8 test inputs work too), global average pooling and one linear classifier. ResNet is He et
al.'s CIFAR ResNet (6n+2 layers, widths 16/32/64, BasicBlock) with 1x1-conv projection shortcuts
where the shape changes (option B); only the inner width of each block is prunable: the block
outputs are tied together by the residual additions and stay whole, as in Li et al. (2017).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lotto.errors import LottoError
from lotto.models import he_init, register

# "M" marks a max-pool; the numbers are conv widths at width multiplier 1.
VGG_LAYOUTS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512],
}
Slots = dict[str, tuple[int | None, int | None]]


def scale_width(channels: int, width: float) -> int:
    # at least 4 channels, so very narrow test models keep every layer meaningful
    return max(4, int(round(channels * width)))


def _check_channels(channels: Sequence[int], expected: int, model: str) -> list[int]:
    channels = [int(c) for c in channels]
    if len(channels) != expected:
        raise LottoError(f"{model}: channels must list {expected} widths, got {len(channels)}")
    if min(channels) < 1:
        raise LottoError(f"{model}: every layer needs at least one channel, got {channels}")
    return channels


class ChannelModel(nn.Module):
    """Base of the channel-list models: `channels`, `with_channels`, `channel_slots`."""

    channels: list[int]

    def __init__(self, **kwargs: object):
        super().__init__()
        self._kwargs = kwargs  # what the constructor got, so a pruned copy can be built

    def with_channels(self, channels: Sequence[int]) -> ChannelModel:
        """A freshly initialised model of the same class with other prunable widths."""
        return type(self)(**{**self._kwargs, "channels": list(channels)})

    def options(self) -> dict:
        """Constructor keyword arguments (JSON-friendly) that rebuild this architecture."""
        return {**self._kwargs, "channels": list(self.channels)}

    def channel_slots(self) -> Slots:
        raise NotImplementedError


class VGG(ChannelModel):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        depth: int = 16,
        channels: Sequence[int] | None = None,
        dropout: float = 0.0,
    ):
        super().__init__(
            in_channels=in_channels,
            num_classes=num_classes,
            image_size=image_size,
            depth=depth,
            dropout=dropout,
        )
        if depth not in VGG_LAYOUTS:
            raise LottoError(f"vgg depth must be one of {sorted(VGG_LAYOUTS)}, got {depth}")
        layout = VGG_LAYOUTS[depth]
        convs = [c for c in layout if c != "M"]
        self.channels = _check_channels(channels or convs, len(convs), f"vgg{depth}")
        layers: list[nn.Module] = []
        self._conv_index: list[int] = []  # position in `features` of each conv
        size, prev, i = image_size, in_channels, 0
        for item in layout:
            if item == "M":
                if size >= 2:  # skip pools a small input cannot afford
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            width = self.channels[i]
            self._conv_index.append(len(layers))
            layers += [
                nn.Conv2d(prev, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            prev, i = width, i + 1
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(prev, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(torch.flatten(self.pool(self.features(x)), 1)))

    def channel_slots(self) -> Slots:
        slots: Slots = {}
        for i, pos in enumerate(self._conv_index):
            slots[f"features.{pos}"] = (i, i - 1 if i > 0 else None)
            slots[f"features.{pos + 1}"] = (i, None)
        slots["classifier"] = (None, len(self.channels) - 1)
        return slots


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, mid: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, mid, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inplanes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetCifar(ChannelModel):
    """He et al.'s CIFAR ResNet; `channels` are the inner widths of the 3n blocks."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        depth: int = 20,
        width: float = 1.0,
        channels: Sequence[int] | None = None,
        dropout: float = 0.0,
    ):
        super().__init__(
            in_channels=in_channels,
            num_classes=num_classes,
            image_size=image_size,
            depth=depth,
            width=width,
            dropout=dropout,
        )
        if depth < 8 or (depth - 2) % 6:
            raise LottoError(f"resnet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        stages = [scale_width(c, width) for c in (16, 32, 64)]
        default = [w for w in stages for _ in range(n)]
        self.channels = _check_channels(channels or default, 3 * n, f"resnet{depth}")
        self.conv1 = nn.Conv2d(in_channels, stages[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stages[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes, k = stages[0], 0
        for s, planes in enumerate(stages):
            blocks = []
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(BasicBlock(inplanes, self.channels[k], planes, stride))
                inplanes, k = planes, k + 1
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.n = n
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(inplanes, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))

    def channel_slots(self) -> Slots:
        slots: Slots = {}
        for k in range(len(self.channels)):
            block = f"layer{k // self.n + 1}.{k % self.n}"
            slots[f"{block}.conv1"] = (k, None)
            slots[f"{block}.bn1"] = (k, None)
            slots[f"{block}.conv2"] = (None, k)
        return slots


@register("vgg")
def vgg(
    in_channels: int,
    num_classes: int,
    image_size: int,
    depth: int = 16,
    width: float = 1.0,
    channels: Sequence[int] | None = None,
    dropout: float = 0.0,
) -> VGG:
    """CIFAR VGG-11/13/16/19 with BN; `width` scales every layer unless `channels` is given.

    `dropout` (before the classifier) defaults to none, as in the network-slimming code.
    """
    if depth not in VGG_LAYOUTS:
        raise LottoError(f"vgg depth must be one of {sorted(VGG_LAYOUTS)}, got {depth}")
    if channels is None:
        channels = [scale_width(c, width) for c in VGG_LAYOUTS[depth] if c != "M"]
    return VGG(in_channels, num_classes, image_size, depth, channels, dropout)


@register("resnet20")
def resnet20(
    in_channels: int,
    num_classes: int,
    image_size: int,
    width: float = 1.0,
    channels: Sequence[int] | None = None,
    dropout: float = 0.0,
) -> ResNetCifar:
    return ResNetCifar(in_channels, num_classes, image_size, 20, width, channels, dropout)


@register("resnet56")
def resnet56(
    in_channels: int,
    num_classes: int,
    image_size: int,
    width: float = 1.0,
    channels: Sequence[int] | None = None,
    dropout: float = 0.0,
) -> ResNetCifar:
    return ResNetCifar(in_channels, num_classes, image_size, 56, width, channels, dropout)
