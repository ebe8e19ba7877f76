"""The Lottery Ticket paper's networks: weight counts of PAPERS.md 1.1, shapes, Glorot init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lotto.errors import LottoError
from lotto.models import MODELS, build_model


def weights(model: nn.Module, kind: type | tuple[type, ...] = (nn.Linear, nn.Conv2d)) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, kind))


def test_registered() -> None:
    build_model("lenet_300_100", 1, 10, 28)
    assert {"lenet_300_100", "conv2", "conv4", "conv6"} <= set(MODELS)


def test_lenet_300_100_has_266200_weights() -> None:
    model = build_model("lenet_300_100", 1, 10, 28)
    assert weights(model) == 266_200
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [300, 100, 10]


# PAPERS.md 1.1, "Weights, counted (all / conv)", on CIFAR-10 (3x32x32, 10 classes)
@pytest.mark.parametrize(
    "name,total,conv",
    [("conv2", 4_300_992, 38_592), ("conv4", 2_425_024, 259_776), ("conv6", 2_261_184, 1_144_512)],
)
def test_conv_nets_have_the_counted_weights(name: str, total: int, conv: int) -> None:
    model = build_model(name, 3, 10, 32)
    assert weights(model) == total
    assert weights(model, nn.Conv2d) == conv
    assert all(
        m.kernel_size == (3, 3) and m.padding == (1, 1)
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    )
    linear = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert linear == [256, 256, 10]


@pytest.mark.parametrize("name", ["lenet_300_100", "conv2", "conv4", "conv6"])
@pytest.mark.parametrize("channels,size,classes", [(1, 28, 10), (3, 32, 10), (1, 8, 7)])
def test_forward_shapes(name: str, channels: int, size: int, classes: int) -> None:
    model = build_model(name, channels, classes, size)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, classes)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_gaussian_glorot_init_and_zero_biases() -> None:
    torch.manual_seed(0)
    model = build_model("lenet_300_100", 1, 10, 28)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            expected = (2.0 / (m.in_features + m.out_features)) ** 0.5
            assert m.weight.std().item() == pytest.approx(expected, rel=0.05)
            assert abs(m.weight.mean().item()) < 5 * expected / m.weight.numel() ** 0.5
            assert torch.count_nonzero(m.bias) == 0
    conv = next(m for m in build_model("conv2", 3, 10, 32).modules() if isinstance(m, nn.Conv2d))
    fan_in, fan_out = 3 * 9, 64 * 9
    assert conv.weight.std().item() == pytest.approx((2.0 / (fan_in + fan_out)) ** 0.5, rel=0.1)


def test_init_follows_the_global_seed() -> None:
    torch.manual_seed(5)
    a = build_model("conv2", 1, 10, 8).state_dict()
    torch.manual_seed(5)
    b = build_model("conv2", 1, 10, 8).state_dict()
    torch.manual_seed(6)
    c = build_model("conv2", 1, 10, 8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.weight"], c["0.weight"])


def test_dropout_option() -> None:
    model = build_model("lenet_300_100", 1, 10, 28, dropout=0.5)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    assert not any(isinstance(m, nn.Dropout) for m in build_model("conv2", 1, 10, 8).modules())


def test_unknown_model() -> None:
    with pytest.raises(LottoError, match="unknown model 'nope'.*lenet_300_100"):
        build_model("nope", 1, 10, 28)


def test_bad_option_is_a_user_error() -> None:
    with pytest.raises(LottoError, match="model lenet_300_100"):
        build_model("lenet_300_100", 1, 10, 28, depth=3)


def test_image_too_small_for_the_pooling_stages_is_a_user_error() -> None:
    with pytest.raises(LottoError, match="model conv6: image size 4 is too small"):
        build_model("conv6", 1, 10, 4)
