"""Magnitude pruning: what is removed, compounding rates, layer-wise vs global, random masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lotto.errors import LottoError
from lotto.models import build_model
from lotto.pruning import (
    apply_masks,
    density,
    global_groups,
    layer_kinds,
    layer_rates,
    layerwise_survivors,
    magnitude_prune,
    ones_masks,
    prunable,
    random_masks_like,
)


def lenet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("lenet_300_100", 1, 10, 8)


def test_prunable_and_kinds() -> None:
    model = build_model("conv2", 1, 10, 8)
    names = list(prunable(model))
    assert all(n.endswith(".weight") for n in names) and len(names) == 5
    assert list(layer_kinds(model).values()) == ["conv", "conv", "fc", "fc", "output"]
    assert list(layer_kinds(lenet()).values()) == ["fc", "fc", "output"]
    assert not any("bias" in n for n in prunable(model))


def test_layer_rates_follow_the_paper() -> None:
    rates = layer_rates(build_model("conv2", 1, 10, 8), 0.2, conv_factor=0.5, output_factor=0.5)
    assert list(rates.values()) == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.1])
    rates = layer_rates(build_model("conv6", 1, 10, 8), 0.2, conv_factor=0.75)
    assert [
        r
        for r, k in zip(rates.values(), layer_kinds(build_model("conv6", 1, 10, 8)).values())
        if k == "conv"
    ] == pytest.approx([0.15] * 6)


def test_removes_exactly_the_smallest_survivors() -> None:
    w = torch.tensor([[0.5, -0.1, 0.3, -0.9, 0.2], [0.05, -0.7, 0.6, 0.01, -0.4]])
    mask = torch.ones_like(w)
    mask[0, 3] = 0.0  # already pruned, though the largest: stays pruned and is not counted
    new = magnitude_prune({"w": w}, {"w": mask}, {"w": 0.35})
    # 9 alive, round(0.35 * 9) = 3 pruned: 0.01, 0.05, -0.1
    expected = mask.clone()
    expected[1, 3] = expected[1, 0] = expected[0, 1] = 0.0
    assert torch.equal(new["w"], expected)
    assert torch.equal(mask[0], torch.tensor([1.0, 1, 1, 0, 1]))  # input masks untouched


def test_ties_are_broken_deterministically_by_position() -> None:
    w = {"w": torch.ones(10)}
    new = magnitude_prune(w, {"w": torch.ones(10)}, {"w": 0.3})
    assert new["w"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]


def test_zero_rate_and_rounding_to_zero_prune_nothing() -> None:
    w = {"w": torch.randn(3)}
    assert torch.equal(magnitude_prune(w, {"w": torch.ones(3)}, {"w": 0.1})["w"], torch.ones(3))


def iterate(model: nn.Module, rates: dict, rounds: int, ranking: str = "layerwise") -> list[dict]:
    """Prune `rounds` times, with fresh random weights each round (like a retrained ticket)."""
    masks, history = ones_masks(model), []
    gen = torch.Generator().manual_seed(0)
    for _ in range(rounds):
        weights = {k: torch.randn(p.shape, generator=gen) for k, p in prunable(model).items()}
        masks = magnitude_prune(weights, masks, rates, ranking, groups=global_groups(model))
        history.append(masks)
    return history


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_density_compounds_per_layer(p: float) -> None:
    model = lenet()
    rates = layer_rates(model, p)
    rounds = 5
    history = iterate(model, rates, rounds)
    sizes = {k: v.numel() for k, v in prunable(model).items()}
    previous = {k: n for k, n in sizes.items()}
    for r, masks in enumerate(history, start=1):
        for k, m in masks.items():
            alive = int(m.sum())
            # each round prunes round(rate * survivors) exactly ...
            assert alive == previous[k] - round(rates[k] * previous[k])
            # ... so the density is the compounded rate, up to one weight of rounding a round
            assert abs(alive - sizes[k] * (1 - rates[k]) ** r) <= r
            previous[k] = alive
    out = list(history[-1])[-1]
    assert rates[out] == pytest.approx(p / 2)  # the output layer at half rate


def test_masks_only_shrink() -> None:
    history = iterate(lenet(), layer_rates(lenet(), 0.3), 4)
    for before, after in zip(history, history[1:]):
        for k in before:
            assert torch.all(after[k] <= before[k])
            assert set(after[k].unique().tolist()) <= {0.0, 1.0}


def test_global_pools_the_layers_of_a_group() -> None:
    big = torch.randn(100, generator=torch.Generator().manual_seed(1)) * 10
    small = torch.randn(300, generator=torch.Generator().manual_seed(2))
    out = torch.randn(50, generator=torch.Generator().manual_seed(3))
    weights = {"a": big, "b": small, "out": out}
    masks = {k: torch.ones_like(v) for k, v in weights.items()}
    rates = {"a": 0.5, "b": 0.5, "out": 0.25}

    layerwise = magnitude_prune(weights, masks, rates, "layerwise")
    assert [int(layerwise[k].sum()) for k in ("a", "b", "out")] == [50, 150, 38]  # 37.5 -> 38

    groups = {"a": "hidden", "b": "hidden", "out": "output"}
    pooled = magnitude_prune(weights, masks, rates, "global", groups=groups)
    a, b = int(pooled["a"].sum()), int(pooled["b"].sum())
    assert a + b == 200  # the pooled density matches the rate ...
    assert a > 90 and b < 110  # ... but the small-magnitude layer loses far more
    assert int(pooled["out"].sum()) == 38  # the output layer keeps its own rate
    # global keeps the 200 largest magnitudes of the pool
    kept = torch.cat([big[pooled["a"].bool()], small[pooled["b"].bool()]]).abs()
    dropped = torch.cat([big[~pooled["a"].bool()], small[~pooled["b"].bool()]]).abs()
    assert kept.min() >= dropped.max()


def test_global_over_rounds_keeps_the_pooled_rate() -> None:
    model = lenet()
    rates = layer_rates(model, 0.2)
    hidden = [k for k, kind in layer_kinds(model).items() if kind == "fc"]
    sizes = {k: p.numel() for k, p in prunable(model).items()}
    masks = ones_masks(model)
    for r in range(1, 4):
        # make the first hidden layer's magnitudes twice the second's: global ranking notices
        weights = {
            k: torch.randn(p.shape) * (2.0 if k == hidden[0] else 1.0)
            for k, p in prunable(model).items()
        }
        masks = magnitude_prune(weights, masks, rates, "global", groups=global_groups(model))
        pooled = sum(masks[k].sum().item() for k in hidden) / sum(sizes[k] for k in hidden)
        assert pooled == pytest.approx(0.8**r, abs=r / sum(sizes[k] for k in hidden))
        d0, d1 = (masks[k].sum().item() / sizes[k] for k in hidden)
        assert d0 > 0.8**r + 0.02 and d1 < 0.8**r - 0.02


def test_unknown_ranking() -> None:
    with pytest.raises(LottoError, match="ranking"):
        magnitude_prune({"w": torch.ones(2)}, {"w": torch.ones(2)}, {"w": 0.5}, "sideways")


def test_density() -> None:
    masks = {"a": torch.tensor([1.0, 0.0, 1.0, 1.0]), "b": torch.zeros(4)}
    assert density(masks) == 3 / 8
    assert density(ones_masks(lenet())) == 1.0


def test_random_masks_keep_per_layer_counts_but_move() -> None:
    masks = iterate(lenet(), layer_rates(lenet(), 0.5), 2)[-1]
    a = random_masks_like(masks, torch.Generator().manual_seed(0))
    b = random_masks_like(masks, torch.Generator().manual_seed(0))
    c = random_masks_like(masks, torch.Generator().manual_seed(1))
    for k, m in masks.items():
        assert a[k].shape == m.shape
        assert int(a[k].sum()) == int(m.sum())
        assert not torch.equal(a[k], m)
        assert torch.equal(a[k], b[k])  # reproducible from the generator
        assert not torch.equal(a[k], c[k])
        assert set(a[k].unique().tolist()) <= {0.0, 1.0}


def test_apply_masks_zeroes_exactly() -> None:
    model = lenet()
    masks = iterate(model, layer_rates(model, 0.5), 1)[0]
    before = {k: p.detach().clone() for k, p in prunable(model).items()}
    apply_masks(model, masks)
    for k, p in prunable(model).items():
        assert torch.all(p[masks[k] == 0] == 0)
        assert torch.equal(p[masks[k] == 1], before[k][masks[k] == 1])


def test_global_ranks_conv_and_fc_together_and_the_output_apart() -> None:
    torch.manual_seed(0)
    model = build_model("conv2", 1, 10, 8)
    kinds = layer_kinds(model)
    hidden = [k for k, kind in kinds.items() if kind != "output"]
    (out,) = [k for k, kind in kinds.items() if kind == "output"]
    weights = {k: p.detach().clone() for k, p in prunable(model).items()}
    # survivors of an earlier round, so that only survivors count
    gen = torch.Generator().manual_seed(1)
    masks = {k: (torch.rand(p.shape, generator=gen) < 0.7).float() for k, p in weights.items()}
    # the output layer at the hidden rate too: grouping by equal rates would pool it with them
    rates = layer_rates(model, 0.2, conv_factor=1.0, output_factor=1.0)
    new = magnitude_prune(weights, masks, rates, "global", groups=global_groups(model))

    def split(names: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
        before = torch.cat([masks[k].flatten() for k in names]).bool()
        after = torch.cat([new[k].flatten() for k in names]).bool()
        w = torch.cat([weights[k].flatten() for k in names]).abs()
        return w[before & ~after], w[after], int(before.sum())

    removed, kept, alive = split(hidden)
    assert len(removed) == round(0.2 * alive)  # one ranking over conv and FC survivors
    assert removed.max() <= kept.min()  # the globally smallest
    per_layer = [new[k].sum() / masks[k].sum() for k in hidden]
    assert max(per_layer) - min(per_layer) > 0.05  # not a per-layer (or per-kind) 20%
    removed, kept, alive = split([out])
    assert len(removed) == round(0.2 * alive)  # the output layer at its own rate, apart
    assert removed.max() <= kept.min()


def test_global_pool_needs_one_rate() -> None:
    w = {"a": torch.randn(10), "b": torch.randn(10)}
    masks = {k: torch.ones(10) for k in w}
    with pytest.raises(LottoError, match="one rate"):
        magnitude_prune(w, masks, {"a": 0.2, "b": 0.1}, "global", groups={"a": "h", "b": "h"})


def test_a_small_layer_is_never_emptied_unless_asked() -> None:
    w = {"big": torch.arange(1.0, 101.0), "tiny": torch.tensor([0.01, -0.02])}
    masks = {k: torch.ones_like(v) for k, v in w.items()}
    rates = {"big": 0.9, "tiny": 0.9}  # round(0.9 x 2) = 2 would empty the tiny layer
    layerwise = magnitude_prune(w, masks, rates)
    assert layerwise["tiny"].tolist() == [0.0, 1.0]  # its largest survivor stays
    assert int(layerwise["big"].sum()) == 10
    assert int(magnitude_prune(w, masks, rates, min_weights=0)["tiny"].sum()) == 0
    assert magnitude_prune(w, masks, rates, min_weights=3)["tiny"].tolist() == [1.0, 1.0]
    # a layer already below the floor keeps what it has
    below = {"big": masks["big"], "tiny": torch.tensor([1.0, 0.0])}
    assert magnitude_prune(w, below, rates)["tiny"].tolist() == [1.0, 0.0]
    # global: the pool still loses round(0.9 x 102) = 92, the rest taken from the big layer
    pooled = magnitude_prune(w, masks, rates, "global", groups={"big": "h", "tiny": "h"})
    assert pooled["tiny"].tolist() == [0.0, 1.0]
    assert int(pooled["big"].sum()) == 102 - 92 - 1
    assert pooled["big"][-9:].tolist() == [1.0] * 9  # the largest 9
    empty = magnitude_prune(w, masks, rates, "global", groups={"big": "h", "tiny": "h"},
                            min_weights=0)
    assert int(empty["tiny"].sum()) == 0


@pytest.mark.parametrize("min_weights", [0, 1, 5])
def test_layerwise_survivors_are_the_counts_magnitude_pruning_keeps(min_weights: int) -> None:
    # a 7-weight layer reaches its floor within the rounds; 20 rounds at 30% and 50%
    shapes, rates = {"big": (40, 30), "small": (7,)}, {"big": 0.3, "small": 0.5}
    masks = {k: torch.ones(s) for k, s in shapes.items()}
    alive = {k: masks[k].numel() for k in shapes}
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        weights = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
        masks = magnitude_prune(weights, masks, rates, min_weights=min_weights)
        alive = {k: layerwise_survivors(n, rates[k], min_weights) for k, n in alive.items()}
        assert alive == {k: int(m.sum()) for k, m in masks.items()}
    # the floor was reached and held (0: round(0.5 x 1) = 0 leaves the last weight)
    assert alive["small"] == max(min_weights, 1)
