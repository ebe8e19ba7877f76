"""Spec -> nn.Module: parity with torchvision, exact counts, per-unit building, registry."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lotto.arch import PRESETS, adapt_to_resolution, preset
from lotto.arch.build import (
    build_block,
    build_network,
    load_pretrained,
    load_torchvision_state_dict,
)
from lotto.errors import LottoError
from lotto.flops import count_macs
from lotto.models import build_model


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    # non-trivial running statistics, so that BN eps and folding order matter in the comparison
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


TORCHVISION = {
    "mobilenet_v3_large": lambda m: torchvision.models.mobilenet_v3_large(weights=None,
                                                                          width_mult=m),
    "mobilenet_v3_small": lambda m: torchvision.models.mobilenet_v3_small(weights=None,
                                                                          width_mult=m),
    "mobilenet_v2": lambda m: torchvision.models.mobilenet_v2(weights=None, width_mult=m),
    "mnasnet_b1": lambda m: torchvision.models.MNASNet(m),
}


@pytest.mark.parametrize(
    ("name", "mult", "resolution"),
    [
        ("mobilenet_v3_large", 1.0, 224),
        ("mobilenet_v3_small", 1.0, 224),
        ("mobilenet_v3_large", 0.75, 96),
        ("mobilenet_v3_small", 0.5, 96),
        ("mobilenet_v2", 1.0, 64),
        ("mnasnet_b1", 1.0, 64),
    ],
)
def test_torchvision_weights_load_and_logits_match(name: str, mult: float, resolution: int) -> None:
    torch.manual_seed(0)
    ref = TORCHVISION[name](mult)
    _randomise_bn(ref)
    ours = build_network(preset(name, mult))
    assert _n_params(ours) == _n_params(ref) == preset(name, mult).params()
    load_torchvision_state_dict(ours, ref.state_dict())
    ref.eval()
    ours.eval()
    x = torch.randn(2, 3, resolution, resolution)
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert a.abs().max() > 1e-3  # the comparison is not between zeros
    assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_pretrained_file_loads_torchvision_or_our_state_dicts(tmp_path) -> None:
    torch.manual_seed(1)
    ref = torchvision.models.mobilenet_v3_small(weights=None)
    _randomise_bn(ref)
    path = tmp_path / "tv.pth"
    torch.save(ref.state_dict(), path)
    model = build_model("mobilenet_v3_small", 3, 1000, 224, pretrained=str(path), adapt=False)
    ours = tmp_path / "ours.pth"
    torch.save(model.state_dict(), ours)
    again = build_network(preset("mobilenet_v3_small"))
    load_pretrained(again, ours)
    x = torch.randn(1, 3, 64, 64)
    for m in (ref, model, again):
        m.eval()
    with torch.no_grad():
        assert torch.allclose(ref(x), model(x), atol=1e-5, rtol=0)
        assert torch.equal(model(x), again(x))


def test_pretrained_errors_are_one_line(tmp_path) -> None:
    model = build_network(preset("mobilenet_v3_small"))
    with pytest.raises(LottoError, match="not found"):
        load_pretrained(model, tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save(torchvision.models.mobilenet_v3_large(weights=None).state_dict(), wrong)
    with pytest.raises(LottoError, match="not the same architecture"):
        load_pretrained(model, wrong)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(LottoError, match="cannot read"):
        load_pretrained(model, junk)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_small_and_counts_exactly(name: str) -> None:
    spec = adapt_to_resolution(preset(name, num_classes=10, in_channels=1), 32)
    model = build_network(spec)
    assert _n_params(model) == spec.params()
    x = torch.randn(2, 1, 32, 32)
    assert count_macs(model, 1, 32) == spec.macs()  # the module counter agrees
    modules = dict(model.named_modules())
    assert all(layer.name in modules for layer in spec.layers())
    model.train()
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_block_units_chain_to_the_whole_network() -> None:
    spec = preset("mobilenet_v3_small", resolution=64)
    model = build_network(spec).eval()
    state = model.state_dict()
    x = torch.randn(1, 3, 64, 64)
    y = x
    for ctx in spec.block_contexts():
        unit = build_block(spec, ctx).eval()
        assert tuple(y.shape[1:]) == (ctx.in_shape[2], ctx.in_shape[0], ctx.in_shape[1])
        assert _n_params(unit) == ctx.params
        # copy the whole model's weights in, so the chain must reproduce its output exactly
        prefix = ctx.name + "."
        if ctx.name == "classifier":
            sub = {k: v for k, v in state.items() if k.split(".")[0] in ("hidden", "classifier")}
            unit.load_state_dict(dict(zip(unit.state_dict(), sub.values(), strict=True)))
        else:
            unit.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                  if k.startswith(prefix)})
        with torch.no_grad():
            y = unit(y)
    with torch.no_grad():
        assert torch.allclose(y, model(x), atol=1e-6)
    with pytest.raises(LottoError, match="no unit"):
        build_block(spec, "blocks.99")


def test_registry_builds_adapted_networks() -> None:
    model = build_model("mobilenet_v3_large", 1, 10, 28)
    assert model.spec.stem.stride == 1 and model.spec.output_size() == 4
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    half = build_model("mnasnet_a1", 3, 100, 32, width_mult=0.5, dropout=0.0)
    assert half.spec.head.dropout == 0.0 and half.spec.stem.channels == 16
    with pytest.raises(LottoError, match="unknown model"):
        build_model("mobilenet_v9", 3, 10, 32)


def test_registry_builds_a_spec_file_or_a_run(tmp_path) -> None:
    """`model.name` may be a spec file or a run directory (search's best.yaml, netadapt's
    final.yaml): built like a preset, with the data's channels and classes and cut strides."""
    spec = preset("mobilenet_v3_small", 0.5)
    spec.save(tmp_path / "final.yaml")
    for source in (tmp_path, tmp_path / "final.yaml"):
        model = build_model(str(source), 1, 10, 28)
        expected = adapt_to_resolution(spec.replace(in_channels=1, num_classes=10), 28)
        assert model.spec == expected
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    (tmp_path / "final.yaml").unlink()
    with pytest.raises(LottoError, match="holds no spec"):
        build_model(str(tmp_path), 1, 10, 28)


def test_pooling_skip_adds_the_pooled_input() -> None:
    """blocks.0 = ds 16 -> 16 stride 2 with a pooling skip: output = body(x) + avgpool2(x),
    odd input sizes included (ceil mode: the conv's output size); MACs by hooks = the spec's."""
    import torch.nn.functional as F

    from lotto.arch import parse_blocks, preset
    from lotto.arch.build import build_block, build_network
    from lotto.flops import count_macs

    base = preset("mobilenet_v3_small", num_classes=10)
    spec = base.replace(resolution=15, blocks=tuple(parse_blocks(
        ["ds_k3_s2_c16_poolskip", "ir_k3_s1_e32_c24"], 16))).validate()
    block = build_block(spec, "blocks.0").eval()
    x = torch.randn(2, 16, 7, 7)
    with torch.no_grad():
        body = block.project(block.dw(x))
        want = body + F.avg_pool2d(x, 2, 2, ceil_mode=True)
        assert torch.allclose(block(x), want, atol=1e-6)
        assert block(x).shape == (2, 16, 4, 4)
    net = build_network(spec)
    assert count_macs(net, 3, 15) == spec.macs()


def test_mobilenet_takes_prebuilt_blocks_one_per_spec_block():
    """`MobileNet(spec, blocks)` uses the given block modules (a supernet's scoring reuses
    them) and refuses a count that does not match the spec."""
    from lotto.arch.build import Block, MobileNet

    spec = adapt_to_resolution(preset("mobilenet_v3_small", 0.5), 32)
    blocks = [Block(spec, i) for i in range(len(spec.blocks))]
    net = MobileNet(spec, blocks)
    assert all(a is b for a, b in zip(net.blocks, blocks))
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    fresh = build_network(spec)
    fresh.load_state_dict(net.state_dict())
    net.eval()
    fresh.eval()
    torch.testing.assert_close(net(x), fresh(x))
    with pytest.raises(ValueError, match="prebuilt blocks"):
        MobileNet(spec, blocks[:-1])
