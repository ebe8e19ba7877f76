"""Channel selection, rebuild + weight copy, FLOP/parameter counts of pruned models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lotto.errors import LottoError
from lotto.flops import count_macs, count_params
from lotto.models import build_model
from lotto.structured import (
    keep_counts,
    prune_channels,
    scaling_factors,
    select_channels,
    silence_channels,
    slimming_penalty,
)

TINY = [2, 3, 4, 4, 5, 5, 6, 6]  # a VGG-11 channel list small enough to count by hand


def tiny_vgg(channels: list[int] = TINY) -> nn.Module:
    torch.manual_seed(0)
    return build_model("vgg", 1, 10, 8, depth=11, channels=channels)


def randomise_bn(model: nn.Module, seed: int = 1) -> None:
    """Non-trivial BN statistics and affine terms, as a trained network would have."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=gen))
            m.bias.data.copy_(torch.randn(n, generator=gen))


def test_hand_count_dense() -> None:
    # 8x8 input, pools after convs 1, 2, 4 (8->4->2->1), the last pool is skipped at 1x1.
    # 3x3 conv MACs = H*W*Cin*Cout*9 at the output size; FC 6*10.
    macs = (64 * 1 * 2 + 16 * 2 * 3 + 4 * 3 * 4 + 4 * 4 * 4 + 4 * 5 + 5 * 5 + 5 * 6 + 6 * 6) * 9
    assert count_macs(tiny_vgg(), 1, 8) == macs + 60 == 4083
    conv = 9 * (1 * 2 + 2 * 3 + 3 * 4 + 4 * 4 + 4 * 5 + 5 * 5 + 5 * 6 + 6 * 6)
    assert count_params(tiny_vgg()) == conv + 2 * sum(TINY) + 6 * 10 + 10 == 1463


def test_hand_count_pruned() -> None:
    model = tiny_vgg()
    keep = [torch.arange(k) for k in [1, 2, 2, 2, 3, 3, 3, 3]]
    small = prune_channels(model, keep)
    assert small.channels == [1, 2, 2, 2, 3, 3, 3, 3]
    macs = (64 * 1 * 1 + 16 * 1 * 2 + 4 * 2 * 2 + 4 * 2 * 2 + 2 * 3 + 3 * 3 + 3 * 3 + 3 * 3) * 9
    assert count_macs(small, 1, 8) == macs + 30 == 1479
    conv = 9 * (1 + 2 + 4 + 4 + 6 + 9 + 9 + 9)
    assert count_params(small) == conv + 2 * 19 + 3 * 10 + 10 == 474


def test_masked_counts() -> None:
    model = tiny_vgg()
    first = model.features[0].weight  # 2x1x3x3, 1152 MACs
    mask = torch.ones_like(first)
    mask[0] = 0  # half of the layer's weights
    masks = {"features.0.weight": mask}
    assert count_macs(model, 1, 8, masks) == 4083 - 576
    assert count_params(model, masks) == 1463 - 9


@pytest.mark.parametrize("name", ["vgg", "resnet20"])
@pytest.mark.parametrize("method", ["l1-filter", "slimming", "random"])
def test_pruned_model_equals_silenced_original(name: str, method: str) -> None:
    torch.manual_seed(0)
    opts = {"depth": 11, "width": 0.125} if name == "vgg" else {"width": 0.25}
    model = build_model(name, 1, 10, 16, **opts).eval()
    randomise_bn(model)
    keep = select_channels(model, method, 0.5)
    assert [len(k) for k in keep] != model.channels
    small = prune_channels(model, keep).eval()
    silenced = copy.deepcopy(model)
    silence_channels(silenced, keep)
    x = torch.randn(4, 1, 16, 16)
    # a channel whose BN output is zero contributes nothing downstream: removing it is exact
    torch.testing.assert_close(small(x), silenced(x).detach(), atol=1e-5, rtol=1e-5)
    # and the dropped channels did matter in the unsilenced model
    assert not torch.allclose(model(x), small(x), atol=1e-3)


def test_zero_filters_are_pruned_first() -> None:
    model = tiny_vgg()
    with torch.no_grad():
        model.features[0].weight[1] = 0.0  # channel 1 of layer 0 has zero L1 norm
        model.features[0].weight[0] = 1.0
    keep = select_channels(model, "l1-filter", 0.5)
    assert keep[0].tolist() == [0]
    assert [len(k) for k in keep] == keep_counts(TINY, 0.5) == [1, 2, 2, 2, 2, 2, 3, 3]


def test_slimming_uses_a_global_threshold() -> None:
    model = tiny_vgg([4, 4, 4, 4, 4, 4, 4, 4])
    gammas = scaling_factors(model)
    with torch.no_grad():
        for i, g in enumerate(gammas):
            # layer 0 holds the 4 smallest scales overall, layer 7 the largest
            g.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]) + i)
    keep = select_channels(model, "slimming", 4 / 32)
    assert keep[0].tolist() == [3]  # all four fall under the threshold; clamp keeps the largest
    assert all(len(k) == 4 for k in keep[1:])
    keep = select_channels(model, "slimming", 4 / 32, min_channels=2)
    assert keep[0].tolist() == [2, 3]


def test_no_layer_drops_to_zero() -> None:
    assert keep_counts([1, 2, 8], 0.99) == [1, 1, 1]
    assert keep_counts([4, 8], 0.99, min_channels=3) == [3, 3]
    model = tiny_vgg()
    for method in ("l1-filter", "slimming", "random"):
        assert min(len(k) for k in select_channels(model, method, 0.95)) >= 1


def test_ticket_init_is_theta0_restricted() -> None:
    model = tiny_vgg()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # "training" moves the weights away from theta_0
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    keep = select_channels(model, "l1-filter", 0.5)
    ticket = prune_channels(model, keep, state=theta0)
    w = ticket.features[4].weight  # conv 2 (after conv 1 and a pool): out keep[1], in keep[0]
    expected = theta0["features.4.weight"][keep[1]][:, keep[0]]
    assert torch.equal(w, expected)
    assert torch.equal(ticket.classifier.weight, theta0["classifier.weight"][:, keep[-1]])
    assert torch.equal(ticket.classifier.bias, theta0["classifier.bias"])


def test_slimming_penalty_adds_the_l1_subgradient() -> None:
    model = tiny_vgg()
    with torch.no_grad():
        scaling_factors(model)[0].copy_(torch.tensor([0.5, -0.5]))
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    before = scaling_factors(model)[0].grad.clone()
    slimming_penalty(model, 1e-2)(model)
    after = scaling_factors(model)[0].grad
    torch.testing.assert_close(after - before, torch.tensor([1e-2, -1e-2]))


def test_bad_requests() -> None:
    model = tiny_vgg()
    with pytest.raises(LottoError, match="unknown structured method"):
        select_channels(model, "taylor", 0.5)
    for ratio in (0.0, 1.0, -0.1):
        with pytest.raises(LottoError, match="ratio"):
            select_channels(model, "l1-filter", ratio)
    lenet = build_model("lenet_300_100", 1, 10, 28)
    with pytest.raises(LottoError, match="prunable channels"):
        select_channels(lenet, "l1-filter", 0.5)
