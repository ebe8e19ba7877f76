"""A multilayer perceptron's training loss and gradients computed by hand, bit for bit as
autograd computes them, without autograd.

For a plain `Sequential(Flatten, Linear, ReLU, ..., Linear)` (LeNet-300-100, the demo's network)
`train.train` spends about 0.35 ms of a ~1.9 ms step on autograd, module dispatch and Python
above the matrix multiplies. `mlp_loss_and_grads` calls the same aten kernels, with the same
arguments and operand layouts, that `F.cross_entropy(model(x), y).backward()` runs (read off
PyTorch's derivative formulas: `addmm` for `F.linear`, `mm` of the transposed gradient for the
weight, a sum over the batch for the bias, `threshold_backward` for ReLU, the log-softmax and
NLL backward kernels), so the loss and every `.grad` are the same numbers bit for bit
(`tests/test_mlp_step.py` checks it, and checks whole trainings against the autograd path).
`mlp_layers` says when a model is such a network; anything else keeps autograd.
"""

from __future__ import annotations

import torch
from torch import nn

_aten = torch.ops.aten
_IGNORE_INDEX = -100  # F.cross_entropy's default


def _hooked(module: nn.Module) -> bool:
    """A hook on the module or its own parameters, or a forward replaced on the instance:
    anything that would run (or change) code the hand-written step does not."""
    if "forward" in module.__dict__:
        return True
    if any(
        getattr(module, name, None)
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                     "_backward_pre_hooks")
    ):
        return True
    return any(
        p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None)
        for p in module.parameters(recurse=False)
    )


def _global_hooks() -> bool:
    """Hooks registered for every module (`nn.modules.module.register_module_forward_hook`...)."""
    from torch.nn.modules import module as m

    return bool(
        m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks
        or m._global_backward_pre_hooks
    )


def _plain_linear(layer: nn.Module) -> bool:
    """An `nn.Linear` (not a subclass) with a bias, float32 weights in their usual row-major
    layout: the layout decides which of two equal-valued but differently rounded products
    autograd uses for the weight gradient (`mm_mat2_backward`), so anything else keeps autograd."""
    return (
        type(layer) is nn.Linear
        and layer.bias is not None
        and all(p.dtype == torch.float32 and p.is_contiguous() for p in (layer.weight, layer.bias))
    )


def mlp_layers(model: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of `model` when it is exactly `nn.Sequential([Flatten(1, -1)], Linear,
    ReLU, Linear, ..., ReLU, Linear)` (plain Linear layers with biases, float32, a ReLU between
    each two, nothing after the last) with no hooks anywhere; None for anything else."""
    if type(model) is not nn.Sequential or _hooked(model) or _global_hooks():
        return None
    modules = list(model)
    if modules and type(modules[0]) is nn.Flatten:
        if (modules[0].start_dim, modules[0].end_dim) != (1, -1) or _hooked(modules[0]):
            return None
        modules = modules[1:]
    layers = modules[0::2]
    relus = modules[1::2]
    if not layers or len(relus) != len(layers) - 1:
        return None
    if not all(_plain_linear(m) and not _hooked(m) for m in layers):
        return None
    if not all(type(m) is nn.ReLU and not _hooked(m) for m in relus):
        return None
    return layers


def mlp_loss_and_grads(layers: list[nn.Linear], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`F.cross_entropy` (mean, no weights or smoothing) of the network `layers` on a batch,
    with each weight's and bias's `.grad` set (fresh, not accumulated) to what
    `loss.backward()` would give after zeroing them, bit for bit. `x` is the flattened batch
    (rows of inputs: apply the model's Flatten first), `y` the class indices. Returns the loss
    (no autograd graph)."""
    if x.dim() != 2 or y.dim() != 1:
        shapes = f"{tuple(x.shape)}, {tuple(y.shape)}"
        raise ValueError(f"expected a 2-d batch and 1-d labels, got {shapes}")
    with torch.no_grad():
        inputs = [x]  # each layer's input: the batch, then the ReLU outputs
        h = x
        for i, layer in enumerate(layers):
            h = torch.addmm(layer.bias, h, layer.weight.t())  # F.linear on a 2-d input
            if i < len(layers) - 1:
                h = torch.relu(h)
                inputs.append(h)
        logp = torch.log_softmax(h, 1)
        loss, total = _aten.nll_loss_forward(logp, y, None, 1, _IGNORE_INDEX)  # 1: mean
        # backward, in the order and with the operands autograd's derivative formulas use
        g = _aten.nll_loss_backward(
            torch.ones((), dtype=loss.dtype), logp, y, None, 1, _IGNORE_INDEX, total
        )
        g = _aten._log_softmax_backward_data(g, logp, 1, logp.dtype)
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            # addmm(b, a, W.t()): W.t() is column-major, so mm_mat2_backward gives the
            # transposed product (g.t() @ a).t(), and the t() backward turns it back
            layer.weight.grad = g.t().mm(inputs[i])
            layer.bias.grad = g.sum(0)  # the engine's sum_to of the broadcast bias
            if i > 0:
                g = _aten.threshold_backward(g.mm(layer.weight), inputs[i], 0)  # ReLU's backward
    return loss
