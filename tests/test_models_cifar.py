"""CIFAR-style VGG / ResNet: shapes on both input kinds, paper parameter counts, channel lists."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lotto.errors import LottoError
from lotto.models import MODELS, build_model
from lotto.models.cifar import VGG, ResNetCifar


def conv_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize(
    "name,options",
    [
        ("vgg", {"depth": 11, "width": 0.125}),
        ("vgg", {"depth": 16, "width": 0.125}),
        ("vgg", {"depth": 19, "width": 0.125}),
        ("resnet20", {"width": 0.25}),
        ("resnet56", {"width": 0.25}),
    ],
)
@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32), (1, 8)])
def test_forward_backward(name: str, options: dict, in_channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels, 10, size, **options)
    out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_registered() -> None:
    build_model("vgg", 1, 10, 28)  # loads the families
    assert {"vgg", "resnet20", "resnet56"} <= set(MODELS)


def test_vgg19_conv_weights_match_the_paper_count() -> None:
    # PAPERS.md 1.1, counted: VGG-19 conv 20,018,880, FC 5,120 (CIFAR-10, 3 channels)
    model = build_model("vgg", 3, 10, 32, depth=19)
    assert conv_weights(model) == 20_018_880
    assert model.classifier.weight.numel() == 5_120


def test_resnet20_weights_match_the_paper_count() -> None:
    # PAPERS.md 1.1: conv 267,696 + 2,560 projection-shortcut weights, FC 640
    model = build_model("resnet20", 3, 10, 32)
    assert conv_weights(model) == 267_696 + 2_560
    assert model.fc.weight.numel() == 640
    assert len(model.channels) == 9
    assert len(build_model("resnet56", 3, 10, 32).channels) == 27


def test_width_and_channel_list() -> None:
    narrow = build_model("vgg", 1, 10, 28, depth=11, width=0.25)
    assert narrow.channels == [16, 32, 64, 64, 128, 128, 128, 128]
    pruned = narrow.with_channels([8, 16, 32, 32, 64, 64, 64, 5])
    assert type(pruned) is VGG
    assert pruned.channels[-1] == 5 and pruned.classifier.in_features == 5
    res = build_model("resnet20", 1, 10, 28, width=0.5)
    small = res.with_channels([1] * 9)
    assert type(small) is ResNetCifar and small.layer3[2].conv1.out_channels == 1
    # block outputs are residual-coupled and keep their width
    assert small.layer3[2].conv2.out_channels == res.layer3[2].conv2.out_channels
    assert small.options()["channels"] == [1] * 9


def test_small_inputs_skip_pools() -> None:
    model = build_model("vgg", 1, 10, 8, depth=11, width=0.125)
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3  # 8 -> 4 -> 2 -> 1; the fourth would need a 0x0 map


@pytest.mark.parametrize(
    "name,options",
    [
        ("vgg", {"depth": 12}),
        ("vgg", {"channels": [4, 4]}),
        ("resnet20", {"channels": [4, 0, 4, 4, 4, 4, 4, 4, 4]}),
        ("resnet20", {"bogus": 1}),
    ],
)
def test_bad_options(name: str, options: dict) -> None:
    with pytest.raises(LottoError):
        build_model(name, 1, 10, 28, **options)
