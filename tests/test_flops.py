"""Multiply-adds counted two ways agree: `ArchSpec.macs()` (analytic, specs) and
`lotto.flops` (FlopCounterMode, any module). Counted: convolutions and linear layers (SE FCs
included); BN, activations, pooling, bias adds, residual adds and the SE gate multiply are free."""

from __future__ import annotations

import pytest
import torch
import torchvision

from lotto.arch import preset
from lotto.arch.build import build_network
from lotto.flops import count_macs, macs_by_module
from lotto.latency.phone import FEATURES, module_features, spec_features
from lotto.models import build_model


@pytest.mark.parametrize("name, published", [
    ("mobilenet_v2", 300e6), ("mobilenet_v3_large", 217e6), ("mobilenet_v3_small", 56e6)])
def test_spec_and_module_counts_agree_on_presets(name: str, published: float) -> None:
    spec = preset(name)
    ours = count_macs(build_network(spec), 3, 224)
    theirs = count_macs(getattr(torchvision.models, name)(), 3, 224)
    assert spec.macs() == ours == theirs
    assert abs(spec.macs() / published - 1) < 0.01  # the papers' MAdds, to 1%


def test_mobilenet_v3_small_count() -> None:
    assert preset("mobilenet_v3_small").macs() == 56_510_400


def _conv3(hw: int, cin: int, cout: int) -> int:
    return hw * hw * cin * cout * 9


def test_cifar_vgg16_and_resnet56_match_closed_forms() -> None:
    # VGG-16 (CIFAR, one FC): 13 3x3 convs at 32/16/8/4/2 px, FC 512 x 10 -> Li et al.'s 3.13e8
    vgg = (_conv3(32, 3, 64) + _conv3(32, 64, 64) + _conv3(16, 64, 128) + _conv3(16, 128, 128)
           + _conv3(8, 128, 256) + 2 * _conv3(8, 256, 256) + _conv3(4, 256, 512)
           + 2 * _conv3(4, 512, 512) + 3 * _conv3(2, 512, 512) + 512 * 10)
    assert vgg == 313_201_664
    assert count_macs(build_model("vgg", 3, 10, 32, depth=16), 3, 32) == vgg
    # ResNet-56: stem, 3 stages of 9 blocks (2 convs), 1x1 projection shortcuts (option B)
    resnet = (_conv3(32, 3, 16) + 18 * _conv3(32, 16, 16)
              + _conv3(16, 16, 32) + 17 * _conv3(16, 32, 32) + 16 * 16 * 16 * 32
              + _conv3(8, 32, 64) + 17 * _conv3(8, 64, 64) + 8 * 8 * 32 * 64 + 64 * 10)
    assert count_macs(build_model("resnet56", 3, 10, 32), 3, 32) == resnet == 125_747_840


def test_per_module_counts_add_up_and_masks_scale_them() -> None:
    model = build_model("resnet20", 3, 10, 32)
    per = macs_by_module(model, torch.zeros(1, 3, 32, 32))
    assert per["conv1"] == _conv3(32, 3, 16) and per["fc"] == 640
    assert per[""] == sum(per[n] for n in ("conv1", "layer1", "layer2", "layer3", "fc"))
    mask = torch.zeros_like(model.conv1.weight)
    mask[:4] = 1  # a quarter of the stem's weights survive
    assert count_macs(model, 3, 32, {"conv1.weight": mask}) == per[""] - per["conv1"] * 3 // 4


def test_traced_phone_features_use_the_same_count() -> None:
    spec = preset("mobilenet_v3_small", resolution=96)
    module = build_network(spec)
    traced = module_features(module, (1, 3, 96, 96))
    macs = [FEATURES.index(f) for f in ("conv_macs", "pw_macs", "dw_macs", "fc_macs")]
    assert traced[macs].sum() == spec.macs() == spec_features(spec)[macs].sum()
