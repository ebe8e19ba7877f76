"""Parameter and multiply-add counts of modules, dense or under unstructured masks.

The project counts multiply-adds two ways, and tests that they agree (tests/test_flops.py):
`ArchSpec.macs()` analytically for architecture specs, and this module for any `nn.Module`,
by running one forward under `torch.utils.flop_counter.FlopCounterMode`.

Convention: `macs` are the multiply-accumulates of the convolutions and linear layers for one
input image (what the pruning papers call FLOPs, and MobileNet papers "MAdds").
FlopCounterMode counts 2 FLOPs per multiply-add (convolution, mm/addmm), so we halve it; like
the papers it ignores BatchNorm, activations, pooling, bias adds, residual additions and the
SE gate's multiply (elementwise ops are not counted by FlopCounterMode).
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
def macs_by_module(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-adds of one forward on `example`, per module name ("" = the whole model).

    A parent's count includes its children's; a module called twice counts twice. The model
    runs in eval mode (a train-mode forward would move BatchNorm statistics) and is restored.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(example)
    finally:
        model.train(was_training)
    root = type(model).__name__
    out: dict[str, int] = {}
    for name, counts in counter.get_flop_counts().items():
        if name == root or name.startswith(root + "."):
            out[name[len(root) + 1:]] = int(sum(counts.values())) // 2
    out.setdefault("", int(counter.get_total_flops()) // 2)
    return out


def count_macs(
    model: nn.Module,
    in_channels: int,
    image_size: int,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> int:
    """Multiply-accumulates of one forward pass on one `in_channels` x `image_size`^2 image."""
    device = next(model.parameters()).device
    x = torch.zeros(1, in_channels, image_size, image_size, device=device)
    per_module = macs_by_module(model, x)
    macs = float(per_module[""])
    for name, mask in (masks or {}).items():
        module = name.rsplit(".", 1)[0] if "." in name else ""
        kept = float(mask.float().mean().item())
        macs -= per_module.get(module, 0) * (1.0 - kept)
    return int(round(macs))
