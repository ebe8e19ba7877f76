"""Parameter and FLOP counts, dense or under unstructured masks.

Convention: `macs` are multiply-accumulates of the convolutions and linear layers for one input
image (what the pruning papers call FLOPs, and MobileNet papers "MAdds").
`torch.utils.flop_counter.FlopCounterMode` counts 2 FLOPs per multiply-add, so we halve it; like
the papers it ignores BatchNorm, activations, pooling, bias adds and residual additions.
Under a mask a layer's MACs scale with the fraction of its weights that survive (the weight-level
FLOPs of Liu et al.'s Scratch-B rule); parameters count every element minus the masked zeros.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> int:
    """All parameter elements, minus the weights a mask removes."""
    total = sum(p.numel() for p in model.parameters())
    pruned = sum(int((m == 0).sum().item()) for m in (masks or {}).values())
    return total - pruned


@torch.no_grad()
def count_macs(
    model: nn.Module,
    in_channels: int,
    image_size: int,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> int:
    """Multiply-accumulates of one forward pass on one `in_channels` x `image_size`^2 image."""
    device = next(model.parameters()).device
    x = torch.zeros(1, in_channels, image_size, image_size, device=device)
    was_training = model.training
    model.eval()  # a forward in train mode would move the BatchNorm running statistics
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(x)
    finally:
        model.train(was_training)
    flops = counter.get_total_flops()
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    for name, mask in (masks or {}).items():
        module = name.rsplit(".", 1)[0] if "." in name else ""
        counts = per_module.get(f"{root}.{module}" if module else root, {})
        kept = float(mask.float().mean().item())
        flops -= sum(counts.values()) * (1.0 - kept)
    return int(round(flops / 2))
