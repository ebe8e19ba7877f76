"""Batched replicas: networks of one shape (a lottery round's variants x seeds) trained together.

`train_replicas(models, data, cfg, seeds=..., masks=...)` has the semantics of calling
`lotto.train.train(models[i], data, cfg, seed=seeds[i], masks=masks[i], ...)` for each i: the
same batches (replicas that share a seed share them), augmentation, schedule, masks re-applied
after every step, evaluation rows, early stop and `start_iteration` fast-forward. The replicas'
parameters are stacked along a new leading dimension and trained by one optimizer: Adam, SGD and
RMSprop update elementwise, and the loss is the sum of the replicas' mean losses, so each
replica's gradient and update are its own. Results agree with one-by-one training to
floating-point rounding (batched matmuls sum in another order), not bit for bit.

The forward runs the layers as grouped ops rather than through `torch.func.vmap`: on the CPU it
was as fast or faster (scripts/bench_parallel.py), and it lets replicas that share a batch share
one wide matmul (or convolution) in their first layer. Supported: nested `nn.Sequential`s of
Linear, Conv2d and stateless per-example layers (ReLU, pooling, Flatten...), i.e. the Lottery
Ticket networks. `can_batch` says why anything else must be trained one by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from rich.progress import Progress
from torch import nn

from lotto.data import Data, eval_batches
from lotto.errors import LottoError
from lotto.train import (
    Budget,
    Draws,
    History,
    TrainingDiverged,
    TrainResult,
    _augment,
    budget,
    lr_factor,
    make_optimizer,
    seed_everything,
)

# Layers without state that act on each example alone: run on (replicas x batch) flattened.
STATELESS = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,  # p = 0 only (checked)
)
EVAL_EXAMPLES = 2000  # examples x replicas per evaluation batch, as `evaluate` uses for one


class ReplicaDiverged(TrainingDiverged):
    """One replica's loss became NaN or infinite (the whole batched training stops)."""

    def __init__(self, iteration: int, replica: int):
        super().__init__(iteration)
        self.replica = replica
        self.args = (f"replica {replica}: loss is not finite at iteration {iteration}",)


def can_batch(model: nn.Module, cfg: DictConfig) -> str | None:
    """None if `model` can train as a batched replica under the `train` config `cfg`, else why
    not (the caller then trains it one by one with `train`). `train.channels_last` is accepted
    and has no effect here: it is a memory-layout hint, not a change of the numbers."""
    if cfg.amp:
        return "train.amp: bfloat16 rounding would make batched and one-by-one training differ"
    layers = [(f"layer {name or type(m).__name__}", m) for name, m in model.named_modules()]
    for where, m in layers:  # the fundamental reasons first, then what this path lacks
        if isinstance(m, nn.modules.batchnorm._NormBase):
            return f"{where} keeps running statistics (BatchNorm), not batchable per replica"
        if isinstance(m, nn.Dropout) and m.p > 0:
            return f"{where}: dropout > 0 would draw other random masks than one by one"
    for where, m in layers:
        if list(m.buffers(recurse=False)):
            return f"{where} has buffers (state outside its parameters)"
        if list(m.children()):
            if type(m) is not nn.Sequential:
                return f"{where} ({type(m).__name__}) is not a plain nn.Sequential"
        elif isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            return f"{where}: padding_mode={m.padding_mode!r} is not supported batched"
        elif isinstance(m, nn.Flatten) and m.start_dim != 1:
            return f"{where}: Flatten(start_dim={m.start_dim}) is not supported batched"
        elif not isinstance(m, (nn.Linear, nn.Conv2d, *STATELESS)):
            return f"{where} ({type(m).__name__}) is not supported by the batched path"
    return None


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers in forward order (a nested Sequential runs its modules in order)."""
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


class _Stack:
    """The replicas' parameters stacked on a leading dimension, and the batched forward.

    Replicas are kept sorted by input group (`group` consecutive replicas read the same input
    rows), so that a first layer fed one batch per group is one wide matmul per group.
    """

    def __init__(self, models: Sequence[nn.Module], device: torch.device):
        self.layers = _leaves(models[0])
        self.count = len(models)
        self.params = {
            name: torch.stack([dict(m.named_parameters())[name].detach() for m in models])
            .to(device)
            .requires_grad_()
            for name, _ in models[0].named_parameters()
        }

    def forward(self, x: torch.Tensor, group: int) -> torch.Tensor:
        """x: [inputs, batch, ...], input j feeding replicas j*group..(j+1)*group-1 ->
        logits [replicas, batch, classes]."""
        shared = True  # x has one row per input group until the first layer with weights
        for name, m in self.layers:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                w, b = self.params[f"{name}.weight"], self.params.get(f"{name}.bias")
                if shared and group > 1 and (isinstance(m, nn.Linear) or m.groups == 1):
                    x = self._wide(m, x, w, b, group)
                else:
                    if shared and group > 1:
                        x = x.repeat_interleave(group, dim=0)
                    x = self._per_replica(m, x, w, b)
                shared = False
            else:  # stateless and per example: run on replicas x batch at once
                x = m(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        if shared:  # a network without weights; every replica sees its own copy
            x = x.repeat_interleave(group, dim=0)
        return x

    @staticmethod
    def _wide(m: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, g: int):
        """A first layer fed one batch per group of `g` replicas: one matmul (or conv) per group
        over the group's weights side by side, then split per replica."""
        inputs, n = x.shape[:2]
        out = w.shape[1]
        if isinstance(m, nn.Linear):
            wide = w.reshape(inputs, g * out, -1).transpose(1, 2)
            y = (
                torch.bmm(x, wide)
                if b is None
                else torch.baddbmm(b.reshape(inputs, 1, -1), x, wide)
            )
            return y.view(inputs, n, g, out).transpose(1, 2).reshape(inputs * g, n, out)
        ys = []
        for j in range(inputs):
            rows = slice(j * g, (j + 1) * g)
            bias = None if b is None else b[rows].flatten()
            y = F.conv2d(x[j], w[rows].flatten(0, 1), bias, m.stride, m.padding, m.dilation)
            ys.append(y.view(n, g, out, *y.shape[2:]).transpose(0, 1))
        return torch.cat(ys)

    @staticmethod
    def _per_replica(m: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None):
        if isinstance(m, nn.Linear):
            wt = w.transpose(1, 2)
            return torch.bmm(x, wt) if b is None else torch.baddbmm(b[:, None], x, wt)
        # one conv per replica: as fast as one grouped conv on the CPU, and any `groups` works
        return torch.stack(
            [
                F.conv2d(
                    x[i],
                    w[i],
                    None if b is None else b[i],
                    m.stride,
                    m.padding,
                    m.dilation,
                    m.groups,
                )
                for i in range(len(w))
            ]
        )

    def write_back(self, models: Sequence[nn.Module], order: Sequence[int]) -> None:
        """Copy stacked replica r into models[order[r]]."""
        with torch.no_grad():
            for r, i in enumerate(order):
                for name, p in models[i].named_parameters():
                    p.copy_(self.params[name][r])


def _seed_batches(
    data: Data, batch_size: int, steps: Budget, seed: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (augmented) batches `train` trains on for `seed`, steps start..total-1."""
    draws = Draws(seed, device)
    it = 0
    while it < steps.total:
        order = draws.epoch(steps.n)
        skip = min(steps.per_epoch, max(0, steps.start - it))  # fast-forward to step k
        for _ in range(skip):
            draws.skip(data, batch_size)
        it += skip
        count = min(steps.per_epoch - skip, steps.total - it)
        if count > 0:
            for x, y in data.batches(order, batch_size, first=skip, count=count):
                yield (_augment(x, draws.augment) if data.augment else x), y
            it += count


@torch.inference_mode()
def _evaluate(stack: _Stack, x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float]]:
    """(mean cross-entropy, accuracy) of each replica on (x, y), all replicas in one pass."""
    r = stack.count
    loss = torch.zeros(r, device=y.device)
    correct = torch.zeros(r, device=y.device, dtype=torch.int64)
    for xb, yb in eval_batches(x, y, max(1, EVAL_EXAMPLES // r)):
        out = stack.forward(xb[None], r).float()
        loss += (
            F.cross_entropy(out.flatten(0, 1), yb.repeat(r), reduction="none").view(r, -1).sum(1)
        )
        correct += (out.argmax(2) == yb).sum(1)
    return [(l_ / len(y), c / len(y)) for l_, c in zip(loss.tolist(), correct.tolist())]


def _test_reported(
    stack: _Stack, data: Data, logs: Sequence[History], best: dict[str, torch.Tensor]
) -> None:
    """Each replica's test accuracy at its last evaluation and at its early stop (`best` holds
    every replica's weights of its early stop), as `lotto.train` does for one network."""
    last = _evaluate(stack, data.test_x, data.test_y)
    early = last
    if any(log.best is not log.rows[-1] for log in logs):
        with torch.no_grad():
            final = {name: p.detach().clone() for name, p in stack.params.items()}
            for name, p in stack.params.items():
                p.copy_(best[name])
            early = _evaluate(stack, data.test_x, data.test_y)
            for name, p in stack.params.items():
                p.copy_(final[name])
    for k, log in enumerate(logs):
        log.rows[-1]["test_accuracy"] = last[k][1]
        log.best["test_accuracy"] = early[k][1] if log.best is not log.rows[-1] else last[k][1]


def train_replicas(
    models: Sequence[nn.Module],
    data: Data,
    cfg: DictConfig,
    *,
    seeds: Sequence[int],
    device: torch.device,
    masks: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    start_iteration: int = 0,
    checkpoints: Sequence[Mapping[int, Callable[[nn.Module], None]] | None] | None = None,
    progress: Progress | None = None,
    desc: str = "replicas",
    eval_test: bool | str = True,
) -> list[TrainResult]:
    """Train `models[i]` as `train(models[i], data, cfg, seed=seeds[i], masks=masks[i],
    start_iteration=..., checkpoints=checkpoints[i])` would, all in one batched pass; the final
    weights are written back into `models`, and a checkpoint callback sees its replica's model
    with the weights of that step. Results are in the order of `models`.

    A replica whose loss is not finite stops the whole batch with `ReplicaDiverged` (a
    `TrainingDiverged` naming its index) at the evaluation where `train` would raise; the other
    replicas' results are lost, so the caller retrains them (e.g. one by one). The global random
    generators end seeded as after the last `train` call (nothing draws from them here).
    `eval_test` as in `train`: True (every evaluation) or "reported" (the early stop, from each
    replica's kept weights, and the end).
    """
    if eval_test not in (True, "reported"):
        raise ValueError(f"eval_test must be True or 'reported', not {eval_test!r}")
    r = len(models)
    masks = list(masks) if masks is not None else [None] * r
    checkpoints = [dict(c or {}) for c in (checkpoints or [None] * r)]
    if not r or len(seeds) != r or len(masks) != r or len(checkpoints) != r:
        raise LottoError("train_replicas needs one seed, mask and checkpoint map per model")
    for i, model in enumerate(models):
        why = can_batch(model, cfg)
        if why:
            raise LottoError(f"replica {i} cannot be trained batched: {why}")
        shapes = [p.shape for p in model.parameters()]
        if shapes != [p.shape for p in models[0].parameters()]:
            raise LottoError(f"replica {i} does not have the shape of replica 0")
    steps = budget(cfg, len(data.train_x), start_iteration)

    # replicas sorted by seed (first appearance); equal-sized seed groups share first layers
    unique = list(dict.fromkeys(seeds))
    order = sorted(range(r), key=lambda i: unique.index(seeds[i]))
    sizes = {seeds.count(s) for s in unique}
    group = sizes.pop() if len(sizes) == 1 else 1
    feed = torch.tensor([unique.index(seeds[i]) for i in order], device=device)

    for model in models:
        model.to(device).train()
    stack = _Stack([models[i] for i in order], device)
    mask_params, mask_values = [], []
    for name in dict.fromkeys(k for m in masks if m for k in m):
        p = stack.params[name]
        ones = torch.ones(p.shape[1:])
        stacked = [masks[i][name] if masks[i] and name in masks[i] else ones for i in order]
        mask_params.append(p)
        mask_values.append(torch.stack([m.float() for m in stacked]).to(device, p.dtype))

    def apply_masks() -> None:
        if mask_params:
            with torch.no_grad():
                torch._foreach_mul_(mask_params, mask_values)

    apply_masks()
    optimizer = make_optimizer(list(stack.params.values()), cfg)
    factor = lr_factor(cfg, steps.total, steps.warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: factor(i + steps.start))
    seed_everything(seeds[-1])
    streams = [_seed_batches(data, cfg.batch_size, steps, s, device) for s in unique]
    logs = [History(steps) for _ in range(r)]
    loss_sum = torch.zeros(r, device=device)
    loss_count = 0
    task = None
    if progress is not None:
        task = progress.add_task(desc, total=steps.total, completed=steps.start)

    def run_checkpoints(it: int) -> None:
        due = [k for k in range(r) if it in checkpoints[order[k]]]
        if due:
            stack.write_back(models, order)
            for k in due:
                checkpoints[order[k]].pop(it)(models[order[k]])

    reported = eval_test == "reported"
    # reported: each replica's weights at its early stop so far, tested once at the end
    best = {name: p.detach().clone() for name, p in stack.params.items()} if reported else {}

    def record(it: int) -> None:
        nonlocal loss_sum, loss_count
        losses = (loss_sum / max(1, loss_count)).tolist()
        for k, loss in enumerate(losses):
            if loss_count and not math.isfinite(loss):
                raise ReplicaDiverged(it, order[k])
        val = _evaluate(stack, data.val_x, data.val_y)
        test = None if reported else _evaluate(stack, data.test_x, data.test_y)
        lr = optimizer.param_groups[0]["lr"]
        for k in range(r):
            train_loss = losses[k] if loss_count else float("nan")
            row = logs[k].add(it, train_loss, val[k], math.nan if reported else test[k][1], lr)
            if reported and logs[k].best is row:  # a new early stop: keep replica k's weights
                with torch.no_grad():
                    for name, p in stack.params.items():
                        best[name][k].copy_(p[k])
        loss_sum, loss_count = torch.zeros(r, device=device), 0
        if task is not None:
            accs = " ".join(f"{v[1]:.3f}" for v in val)
            progress.update(task, completed=it, description=f"{desc} val_acc={accs}")

    run_checkpoints(steps.start)
    record(steps.start)
    for it in range(steps.start + 1, steps.total + 1):
        x, y = zip(*(next(s) for s in streams))
        x, y = torch.stack(x), torch.stack(y)[feed]
        if group == 1 and len(unique) < r:  # unequal seed groups: one input row per replica
            x = x[feed]
        out = stack.forward(x, group).float()
        losses = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
        losses = losses.view(r, -1).mean(1)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # each replica's parameters get their own loss's gradient
        optimizer.step()
        scheduler.step()
        apply_masks()
        loss_sum += losses.detach()
        loss_count += 1
        run_checkpoints(it)
        if steps.evaluates_at(it):
            record(it)
    if reported:
        _test_reported(stack, data, logs, best)
    if task is not None:
        progress.remove_task(task)
    stack.write_back(models, order)
    results = [None] * r
    for k, i in enumerate(order):
        results[i] = logs[k].result(steps.total)
    return results
