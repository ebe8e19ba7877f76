"""The Lottery Ticket paper's networks (Frankle & Carbin 2019, Figure 2): LeNet-300-100, Conv-2/4/6.

Gaussian Glorot initialisation, as in the paper; 3x3 convs with padding 1, 2x2 max-pooling.
"""

from __future__ import annotations

from torch import nn

from lotto.models import register


def _glorot(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _mlp(sizes: list[int], dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return layers


@register("lenet_300_100")
def lenet_300_100(
    in_channels: int, num_classes: int, image_size: int, dropout: float = 0.0
) -> nn.Module:
    inputs = in_channels * image_size * image_size
    return _glorot(nn.Sequential(nn.Flatten(), *_mlp([inputs, 300, 100, num_classes], dropout)))


def _conv_net(
    stages: list[int], in_channels: int, num_classes: int, image_size: int, dropout: float
) -> nn.Module:
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for width in stages:
        for _ in range(2):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
        layers.append(nn.MaxPool2d(2))
        size //= 2
    if size < 1:
        raise ValueError(f"image size {image_size} is too small for {len(stages)} pooling stages")
    head = _mlp([channels * size * size, 256, 256, num_classes], dropout)
    return _glorot(nn.Sequential(*layers, nn.Flatten(), *head))


for _name, _stages in {"conv2": [64], "conv4": [64, 128], "conv6": [64, 128, 256]}.items():
    register(_name)(
        lambda in_channels, num_classes, image_size, dropout=0.0, _s=_stages: _conv_net(
            _s, in_channels, num_classes, image_size, dropout
        )
    )
