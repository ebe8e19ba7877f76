"""NetAdapt's weight truncation and proposals on small specs (lotto.netadapt)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lotto.arch import ArchSpec, HeadSpec, StemSpec, parse_blocks
from lotto.arch.build import build_network
from lotto.errors import LottoError
from lotto.netadapt import (
    candidates,
    channel_norms,
    floor_spec,
    kept_channels,
    knobs,
    set_width,
    topology,
    truncate_state,
    widest_within,
)


def tiny(se_rule: str = "exp", hidden: int = 0) -> ArchSpec:
    # stem 16 -> block0 residual (stem and block0 tied) -> block1 (SE) -> block2 residual (SE)
    blocks = ["ir_k3_s1_e32_c16_re", "ir_k3_s2_e48_c24_se0.25_re", "ir_k3_s1_e64_c24_se0.25_hs"]
    return ArchSpec(name="tiny", stem=StemSpec(16, 3, 2, "hswish"),
                    blocks=tuple(parse_blocks(blocks, 16)),
                    head=HeadSpec(conv=40, hidden=hidden, act="hswish", dropout=0.0),
                    resolution=16, in_channels=3, num_classes=5, se_rule=se_rule,
                    bn_momentum=0.1).validate()


def outputs(spec: ArchSpec, state: dict) -> torch.Tensor:
    model = build_network(spec).eval()
    model.load_state_dict(state)
    torch.manual_seed(1)
    with torch.no_grad():
        return model(torch.randn(4, 3, 16, 16))


def random_state(spec: ArchSpec, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = build_network(spec)
    state = model.state_dict()
    for k, v in state.items():  # non-trivial BN statistics and affine terms
        if v.dtype.is_floating_point and ".1." in k or k.startswith("stem.1"):
            if v.dtype.is_floating_point:
                state[k] = v + 0.1 * torch.rand_like(v)
    return state


def kill(state: dict, conv_bn: list[str], channels: list[int]) -> None:
    """Make `channels` of the spaces written by these conv+BN layers exactly zero."""
    for prefix in conv_bn:
        for suffix in (".0.weight", ".1.weight", ".1.bias"):
            state[prefix + suffix][channels] = 0.0


def test_noop_truncation_keeps_function():
    spec = tiny(hidden=32)
    state = random_state(spec)
    same = truncate_state(spec, spec, state)
    assert set(same) == set(state)
    assert all(torch.equal(same[k], state[k]) for k in state)
    assert torch.equal(outputs(spec, same), outputs(spec, state))


def test_dead_expansion_channels_removed_keeps_function():
    spec = tiny(se_rule="in")  # SE squeeze from the block input: unchanged by the expansion
    state = random_state(spec)
    dead = list(range(0, 48, 2))[:16]  # 16 of block1's 48 expansion channels
    kill(state, ["blocks.1.expand", "blocks.1.dw"], dead)
    knob = next(k for k in knobs(spec) if k.name == "block1.expand")
    new = set_width(spec, knob, 32).validate()
    cut = truncate_state(spec, new, state)
    kept = kept_channels(spec, new, state)["e1"]
    assert not set(kept.tolist()) & set(dead)  # the zero-norm channels are the ones dropped
    assert torch.allclose(outputs(new, cut), outputs(spec, state), atol=1e-5)


def test_largest_norm_channels_are_kept_in_every_layer():
    spec = tiny()
    state = random_state(spec)
    w = state["blocks.2.expand.0.weight"]
    norms = w.reshape(64, -1).pow(2).sum(1).sqrt()
    knob = next(k for k in knobs(spec) if k.name == "block2.expand")
    new = set_width(spec, knob, 32).validate()
    assert new.se_width(new.blocks[2], 24) == 8  # the SE squeeze follows the V3 rule: 16 -> 8
    cut = truncate_state(spec, new, state)
    keep = torch.sort(torch.topk(norms, 32).indices).values
    assert torch.equal(cut["blocks.2.expand.0.weight"], w[keep])
    for key in ("blocks.2.expand.1.weight", "blocks.2.expand.1.running_var",
                "blocks.2.dw.0.weight", "blocks.2.dw.1.bias", "blocks.2.se.fc2.bias"):
        assert torch.equal(cut[key], state[key][keep]), key
    project = state["blocks.2.project.0.weight"]
    assert torch.equal(cut["blocks.2.project.0.weight"], project[:, keep])
    mid_norms = state["blocks.2.se.fc1.weight"].reshape(16, -1).pow(2).sum(1).sqrt()
    mid = torch.sort(torch.topk(mid_norms, 8).indices).values
    assert torch.equal(cut["blocks.2.se.fc1.weight"], state["blocks.2.se.fc1.weight"][mid][:, keep])
    assert torch.equal(cut["blocks.2.se.fc2.weight"], state["blocks.2.se.fc2.weight"][keep][:, mid])
    build_network(new).load_state_dict(cut)  # fits


def test_residual_group_shares_one_kept_set():
    spec = tiny()
    state = random_state(spec)
    group = next(k for k in knobs(spec) if "c0" in k.members)
    assert set(group.members) >= {"c0", "c1"}  # stem and block0 are tied by the residual
    new = set_width(spec, group, 8).validate()
    # the stem alone and block0's projection alone would pick different channels: the group
    # ranks them together
    stem = state["stem.0.weight"].reshape(16, -1).pow(2).sum(1)
    proj = state["blocks.0.project.0.weight"].reshape(16, -1).pow(2).sum(1)
    keep = torch.sort(torch.topk((stem + proj).sqrt(), 8).indices).values
    assert torch.equal(kept_channels(spec, new, state)["c0"], keep)
    assert torch.allclose(channel_norms(spec, state)["c0"], (stem + proj).sqrt())
    cut = truncate_state(spec, new, state)
    assert torch.equal(cut["stem.0.weight"], state["stem.0.weight"][keep])
    assert torch.equal(cut["stem.1.running_mean"], state["stem.1.running_mean"][keep])
    assert torch.equal(cut["blocks.0.expand.0.weight"], state["blocks.0.expand.0.weight"][:, keep])
    assert torch.equal(cut["blocks.0.project.0.weight"], state["blocks.0.project.0.weight"][keep])
    assert torch.equal(cut["blocks.1.expand.0.weight"], state["blocks.1.expand.0.weight"][:, keep])


def test_dead_group_channels_removed_keeps_function():
    spec = tiny()
    state = random_state(spec)
    dead = [1, 4, 5, 9, 11, 12, 14, 15]
    kill(state, ["stem", "blocks.0.project"], dead)
    group = next(k for k in knobs(spec) if "c0" in k.members)
    new = set_width(spec, group, 8).validate()
    cut = truncate_state(spec, new, state)
    assert torch.allclose(outputs(new, cut), outputs(spec, state), atol=1e-5)


def test_truncation_refuses_wider_or_other_topology():
    spec = tiny()
    state = random_state(spec)
    knob = next(k for k in knobs(spec) if k.name == "block1.expand")
    with pytest.raises(LottoError, match="widen"):
        truncate_state(spec, set_width(spec, knob, 56), state)
    no_skip = spec.replace(blocks=(dataclasses.replace(spec.blocks[0], skip=False),
                                   *spec.blocks[1:]))
    with pytest.raises(LottoError, match="topology"):
        truncate_state(spec, no_skip, state)


def test_binary_search_finds_the_widest_width_within_budget():
    spec = tiny()
    calls = []

    def latency(s: ArchSpec) -> float:
        calls.append(s)
        return s.macs() / 1e6

    for knob in knobs(spec):
        cands = candidates(spec, knob, 8)
        assert all(topology(s) == topology(spec) for _, s in cands)
        assert all(w % 8 == 0 and w < knob.width(spec) for w, _ in cands)
        budget = spec.macs() / 1e6 * 0.97
        calls.clear()
        p = widest_within(spec, knob, budget, 8, latency)
        fits = [w for w, s in cands if latency(s) <= budget]
        if not fits:
            assert p is None
            continue
        assert p is not None and p.new_width == max(fits)
        assert p.latency_ms <= budget and p.queries <= 1 + len(cands).bit_length()


def test_expansion_never_collapses_onto_the_input_width():
    spec = tiny()
    knob = next(k for k in knobs(spec) if k.name == "block2.expand")
    widths = [w for w, _ in candidates(spec, knob, 8)]
    assert 24 not in widths  # e == input width would drop the expand conv
    low = floor_spec(spec, 8)
    assert topology(low) == topology(spec) and low.macs() < spec.macs()


def test_pooling_skip_ties_its_input_and_output_widths():
    """A pooling skip (16 -> 16, stride 2) adds its pooled input to its output: NetAdapt's width
    group holds both, and removing the group's dead channels keeps the function."""
    blocks = ["ir_k3_s1_e32_c16_re_noskip", "ir_k3_s2_e48_c16_re_poolskip",
              "ir_k3_s1_e64_c24_re"]
    spec = ArchSpec(name="pooled", stem=StemSpec(16, 3, 2, "hswish"),
                    blocks=tuple(parse_blocks(blocks, 16)),
                    head=HeadSpec(conv=40, hidden=0, act="hswish", dropout=0.0),
                    resolution=16, in_channels=3, num_classes=5, bn_momentum=0.1).validate()
    group = next(k for k in knobs(spec) if "c1" in k.members)
    assert {"c1", "c2"} <= set(group.members)  # block1's input and output: one width
    state = random_state(spec)
    kill(state, ["blocks.0.project", "blocks.1.project"], [1, 4, 5, 9, 11, 12, 14, 15])
    new = set_width(spec, group, 8).validate()
    assert new.blocks[1].skip == "pool" and topology(new) == topology(spec)
    cut = truncate_state(spec, new, state)
    assert torch.allclose(outputs(new, cut), outputs(spec, state), atol=1e-5)
