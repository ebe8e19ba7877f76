"""Unstructured magnitude pruning with plain mask tensors.

Masks are {parameter name: 0/1 tensor}. The trainer multiplies them into the weights after every
optimizer step (one fused `_foreach_mul_`), which is cheaper than `torch.nn.utils.prune`'s
re-parametrisation (a mask multiply in every forward and a second weight copy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from lotto.errors import LottoError

Masks = dict[str, torch.Tensor]


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of the Linear and Conv2d layers, by parameter name, in forward order."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            out[f"{name}.weight" if name else "weight"] = module.weight
    return out


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """'conv', 'fc' or 'output' (the last Linear) for each prunable weight."""
    kinds = {}
    modules = dict(model.named_modules())
    for name in prunable(model):
        module = modules[name.rsplit(".", 1)[0] if "." in name else ""]
        kinds[name] = "conv" if isinstance(module, nn.Conv2d) else "fc"
    linear = [k for k, v in kinds.items() if v == "fc"]
    if linear:
        kinds[linear[-1]] = "output"
    return kinds


def layer_rates(
    model: nn.Module, rate: float, conv_factor: float = 0.5, output_factor: float = 0.5
) -> dict[str, float]:
    """Per-layer pruning rates of the Lottery Ticket paper: FC at `rate`, conv and output less."""
    factor = {"fc": 1.0, "conv": conv_factor, "output": output_factor}
    return {name: rate * factor[kind] for name, kind in layer_kinds(model).items()}


def global_groups(model: nn.Module) -> dict[str, str]:
    """The pools of global ranking: 'hidden' (every conv and hidden FC layer) and 'output'.

    OpenLTH's `sparse_global`: one ranking over all hidden layers, whatever their kind; the
    output layer is ranked on its own, at its own rate.
    """
    return {k: "output" if kind == "output" else "hidden" for k, kind in layer_kinds(model).items()}


def ones_masks(model: nn.Module) -> Masks:
    return {k: torch.ones_like(p, dtype=torch.float32) for k, p in prunable(model).items()}


def magnitude_prune(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    rates: Mapping[str, float],
    ranking: str = "layerwise",
    *,
    groups: Mapping[str, str] | None = None,
    min_weights: int = 1,
) -> Masks:
    """Prune `rates[name]` of each layer's surviving weights, smallest magnitudes first.

    `global` ranks the layers of each pool in `groups` (layer name -> pool label, e.g. from
    `global_groups`) together and prunes `round(rate x pooled survivors)` of them; the layers of
    a pool must share one rate. Without `groups`, global ranking pools all layers.

    No layer is left with fewer than `min_weights` survivors (its largest ones are spared; a
    layer that already has fewer keeps them all): `round(rate x alive)` would otherwise empty a
    small layer and cut the network in two. A global pool then takes the count from its other
    layers; 0 allows empty layers.
    """
    if ranking not in ("layerwise", "global"):
        raise LottoError(f"unknown ranking {ranking!r}; choose layerwise or global")
    new = {k: m.clone().float() for k, m in masks.items()}
    pools: dict[str, list[str]] = {}
    for k in rates:
        label = k if ranking == "layerwise" else (groups or {}).get(k, "all")
        pools.setdefault(label, []).append(k)
    for label, names in pools.items():
        rate = rates[names[0]]
        if any(rates[k] != rate for k in names):
            raise LottoError(f"global ranking: the layers of pool {label!r} need one rate, got "
                             f"{sorted({rates[k] for k in names})}")
        scores = torch.cat([_scores(weights[k], masks[k], min_weights) for k in names])
        alive = int(sum(masks[k].sum().item() for k in names))
        count = min(round(rate * alive), int(torch.isfinite(scores).sum()))
        if count == 0:
            continue
        # stable sort: ties broken by position, so pruning is deterministic
        order = torch.sort(scores, stable=True).indices[:count]
        flat = torch.cat([new[k].flatten() for k in names])
        flat[order] = 0.0
        offset = 0
        for k in names:
            size = new[k].numel()
            new[k] = flat[offset : offset + size].view_as(new[k]).clone()
            offset += size
    return new


def _scores(weight: torch.Tensor, mask: torch.Tensor, spare: int) -> torch.Tensor:
    """|w| of the survivors that may be pruned; inf for the pruned and the `spare` largest."""
    alive = mask.bool().flatten()
    scores = torch.where(alive, weight.detach().abs().float().cpu().flatten(), float("inf"))
    keep = max(0, min(spare, int(alive.sum())))
    if keep:
        # the survivors a stable ascending sort puts last: those that would be pruned last
        survivors = alive.nonzero().flatten()
        last = torch.sort(scores[survivors], stable=True).indices[-keep:]
        scores[survivors[last]] = float("inf")
    return scores


def density(masks: Mapping[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    return sum(m.sum().item() for m in masks.values()) / total


def random_masks_like(masks: Mapping[str, torch.Tensor], generator: torch.Generator) -> Masks:
    """Random masks with exactly the same number of survivors per layer."""
    return random_masks({k: (m.shape, int(m.sum().item())) for k, m in masks.items()}, generator)


def random_masks(
    counts: Mapping[str, tuple[torch.Size, int]], generator: torch.Generator
) -> Masks:
    """Random masks of the given shapes with the given survivors per layer, drawn in order."""
    out = {}
    for k, (shape, keep) in counts.items():
        flat = torch.zeros(math.prod(shape))
        flat[torch.randperm(len(flat), generator=generator)[:keep]] = 1.0
        out[k] = flat.view(shape)
    return out


def layerwise_survivors(alive: int, rate: float, min_weights: int = 1) -> int:
    """The survivors of one layer-wise `magnitude_prune` step: the same count whatever the
    weights (so a lottery's random-mask controls can start before the tickets they mirror)."""
    finite = alive - max(0, min(min_weights, alive))
    return alive - min(round(rate * alive), finite)


def masked_state(
    state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A copy of a state dict with the masked weights zeroed (theta_0 under a ticket's mask)."""
    return {k: v * masks[k] if k in masks else v.clone() for k, v in state.items()}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for k, m in masks.items():
        params[k].mul_(m.to(params[k].device, params[k].dtype))
