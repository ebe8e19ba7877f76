"""Structured (channel) pruning of the channel-list models in lotto/models/cifar.py.

A model lists its prunable widths (`model.channels`) and, per module, which entry of that list
indexes its output and input channels (`model.channel_slots()`). Pruning is then: score the
channels of each entry, keep a list of indices per entry, build `model.with_channels(...)` and copy
the kept slices of every tensor. The same slicing restricts the initial weights theta_0 to the
kept structure (the winning-ticket initialisation under structured pruning).

Selection methods (the ratio is the fraction of channels removed):
- `l1-filter` (Li et al. 2017): per layer, keep the filters with the largest L1 norm.
- `slimming` (Liu et al. 2017): one global threshold on |BatchNorm scale| across all layers; the
  baseline is trained with an L1 penalty on those scales (`slimming_penalty`).
- `random`: per layer, a uniformly random subset of the same size as `l1-filter` keeps.
Every layer keeps at least `min_channels` (never zero).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from lotto.errors import LottoError
from lotto.models.cifar import ChannelModel

METHODS = ("l1-filter", "slimming", "random")
Keep = list[torch.Tensor]  # per entry of model.channels: sorted indices of the kept channels


def as_channel_model(model: nn.Module, model_name: str = "") -> ChannelModel:
    if not isinstance(model, ChannelModel):
        name = model_name or type(model).__name__
        raise LottoError(
            f"model {name} has no prunable channels; structured pruning needs vgg, resnet20 or "
            "resnet56"
        )
    return model


def _modules_of(model: ChannelModel, group: int, kind: type) -> list[nn.Module]:
    modules = dict(model.named_modules())
    return [
        modules[name]
        for name, (out, _) in model.channel_slots().items()
        if out == group and isinstance(modules[name], kind)
    ]


def _producer(model: ChannelModel, group: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    convs = _modules_of(model, group, nn.Conv2d)
    bns = _modules_of(model, group, nn.BatchNorm2d)
    if len(convs) != 1 or len(bns) != 1:
        raise RuntimeError(f"channel entry {group} needs exactly one conv and one BN producing it")
    return convs[0], bns[0]


def scaling_factors(model: ChannelModel) -> list[nn.Parameter]:
    """The BatchNorm scales (gamma) of every prunable channel entry, in order."""
    return [_producer(model, g)[1].weight for g in range(len(model.channels))]


def keep_counts(channels: Sequence[int], ratio: float, min_channels: int = 1) -> list[int]:
    """Channels each layer keeps when `ratio` of them is removed, clamped to [min, width]."""
    return [min(c, max(min_channels, round((1.0 - ratio) * c))) for c in channels]


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    # stable descending sort: ties keep the lower index, so selection is deterministic
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return torch.sort(order).values


@torch.no_grad()
def select_channels(
    model: nn.Module,
    method: str,
    ratio: float,
    *,
    min_channels: int = 1,
    generator: torch.Generator | None = None,
) -> Keep:
    """Indices of the channels to keep in each prunable layer of `model`."""
    model = as_channel_model(model)
    if method not in METHODS:
        known = ", ".join(METHODS)
        raise LottoError(f"unknown structured method {method!r}; choose one of {known}")
    if not 0.0 < ratio < 1.0:
        raise LottoError(f"pruning ratio must be in (0, 1), got {ratio}")
    groups = range(len(model.channels))
    if method == "slimming":
        gammas = [g.detach().abs().float().cpu() for g in scaling_factors(model)]
        pooled = torch.cat(gammas)
        count = round(ratio * len(pooled))
        order = torch.sort(pooled, stable=True).indices
        # the smallest `count` scales fall below the global threshold; ties break by position
        alive = torch.ones(len(pooled), dtype=torch.bool)
        alive[order[:count]] = False
        keep, offset = [], 0
        for gamma in gammas:
            mine = alive[offset : offset + len(gamma)]
            offset += len(gamma)
            if int(mine.sum()) >= min_channels:
                keep.append(torch.nonzero(mine).flatten())
            else:  # clamp: the layer keeps its largest scales
                keep.append(_top(gamma, min(len(gamma), min_channels)))
        return keep
    counts = keep_counts(model.channels, ratio, min_channels)
    if method == "l1-filter":
        filters = [_producer(model, g)[0].weight.detach().abs().float().cpu() for g in groups]
        return [_top(w.flatten(1).sum(1), k) for w, k in zip(filters, counts, strict=True)]
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    return [
        torch.sort(torch.randperm(c, generator=gen)[:k]).values
        for c, k in zip(model.channels, counts, strict=True)
    ]


def slice_state(
    state: Mapping[str, torch.Tensor], model: ChannelModel, keep: Keep
) -> dict[str, torch.Tensor]:
    """The state dict of `model` (full widths) restricted to the kept channels."""
    slots = model.channel_slots()
    out = {}
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        out_slot, in_slot = slots.get(module, (None, None))
        t = tensor
        if leaf != "num_batches_tracked" and t.dim() >= 1:
            if out_slot is not None:
                t = t.index_select(0, keep[out_slot].to(t.device))
            if in_slot is not None and t.dim() >= 2:
                t = t.index_select(1, keep[in_slot].to(t.device))
        out[key] = t.clone()
    return out


def prune_channels(
    model: nn.Module, keep: Keep, state: Mapping[str, torch.Tensor] | None = None
) -> ChannelModel:
    """A smaller model of the same class holding the kept slices of `state` (default: `model`'s).

    Pass `state` = the saved theta_0 of `model` to get the ticket initialisation of the pruned
    structure.
    """
    model = as_channel_model(model)
    if len(keep) != len(model.channels):
        raise ValueError(f"keep lists {len(keep)} layers, the model has {len(model.channels)}")
    small = model.with_channels([len(k) for k in keep])
    device = next(model.parameters()).device
    source = state if state is not None else model.state_dict()
    small.load_state_dict(slice_state(source, model, keep))
    return small.to(device)


@torch.no_grad()
def silence_channels(model: nn.Module, keep: Keep) -> None:
    """Zero the BN scale and shift of the dropped channels, in place (outputs exactly 0 then).

    In eval mode such a model computes what the pruned model computes: the test of the rebuild.
    """
    model = as_channel_model(model)
    for g, kept in enumerate(keep):
        _, bn = _producer(model, g)
        drop = torch.ones(bn.num_features, dtype=torch.bool)
        drop[kept] = False
        bn.weight[drop.to(bn.weight.device)] = 0.0
        bn.bias[drop.to(bn.bias.device)] = 0.0


def slimming_penalty(model: nn.Module, strength: float) -> Callable[[nn.Module], None]:
    """`after_backward` hook adding the subgradient of strength * sum|gamma| (network slimming)."""
    gammas = scaling_factors(as_channel_model(model))

    @torch.no_grad()
    def add_l1(_: nn.Module) -> None:
        for g in gammas:
            if g.grad is not None:
                g.grad.add_(torch.sign(g), alpha=strength)

    return add_l1
