"""The one trainer: budgets in iterations or epochs, optimizers and schedules from config,
periodic evaluation with early-stop bookkeeping, masks that keep pruned weights at zero.

Batches are index operations on in-memory tensors (see `lotto.data`), the training loss is
accumulated on the device and read only at evaluation time, so the loop stays cheap on CPU and
never synchronises a GPU per step.
"""

from __future__ import annotations

import math
import random
import re
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from rich.progress import Progress
from torch import nn

from lotto import distributed
from lotto.data import Data, ImageStream, eval_batches
from lotto.errors import LottoError
from lotto.mlp_step import mlp_layers, mlp_loss_and_grads

# False sends every training through autograd (the tests compare the two paths): see
# `_mlp_fast_path`.
MLP_FAST_PATH = True

_STEP = re.compile(r"^\s*(\d+)\s*(it|ep)?\s*$")


def parse_step(value: str | int, iterations_per_epoch: int) -> int:
    """'500it' -> 500, '2ep' -> 2 epochs of iterations, 500 -> 500."""
    if isinstance(value, int) and not isinstance(value, bool):
        count, unit = value, "it"
    else:
        match = _STEP.match(str(value))
        if not match:
            raise LottoError(f"{value!r} is not a step count like '500it' or '2ep'")
        count, unit = int(match.group(1)), match.group(2) or "it"
    return count * iterations_per_epoch if unit == "ep" else count


def resolve_device(name: str) -> torch.device:
    # under torchrun, "cuda" is this rank's GPU (cuda:LOCAL_RANK)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LottoError(f"device {name!r} asked for, but no CUDA GPU is available here")
        return distributed.local_device(torch.device(name))
    raise LottoError(f"unknown device {name!r}; choose cpu, cuda or auto")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TrainingDiverged(LottoError):
    """The loss became NaN or infinite."""

    def __init__(self, iteration: int):
        super().__init__(f"loss is not finite at iteration {iteration}")
        self.iteration = iteration


@dataclass
class TrainResult:
    iterations: int
    epochs: float
    train_loss: float
    val_loss: float
    val_accuracy: float
    test_accuracy: float
    early_stop_iteration: int
    early_stop_val_loss: float
    early_stop_test_accuracy: float
    seconds: float
    history: list[dict] = field(default_factory=list)
    start_iteration: int = 0  # the first step trained (k when resumed from theta_k)
    eval_seconds: float = 0.0  # of `seconds`, the time spent evaluating
    evaluated_images: int = 0  # images passed through the model by the evaluations

    def eval_warning(self, threshold: float = 0.5) -> str | None:
        """One line when evaluation took more than `threshold` of the training's time."""
        if self.seconds <= 0 or self.eval_seconds / self.seconds <= threshold:
            return None
        return (
            f"evaluation took {self.eval_seconds / self.seconds:.0%} of this training's "
            f"{self.seconds:.1f} s ({self.evaluated_images:,} images over {len(self.history)} "
            f"evaluations for {self.iterations - self.start_iteration:,} steps): raise "
            f"train.eval_every, or shrink data.val_size"
        )


# Input bytes per forward pass when evaluating. Measured 2026-12-06 on this project's 2-core AMD
# EPYC (MKL sgemm), LeNet-300-100 over Fashion-MNIST: with 2 threads, passes of 1,000-3,000 rows
# ran at 156-162 GFLOP/s and passes of 5,000 or 15,000 rows at 55; with 1 thread (a `--workers 2`
# worker), 5,000 validation rows took 32 ms in passes of 256-1,000 rows, 37 ms in passes of 2,000
# and 55 ms in one pass. 3 MiB is about 1,000 Fashion-MNIST rows. The logits are the same
# whatever the pass size (a row's logits do not depend on its batch: checked bit for bit).
EVAL_CHUNK_BYTES = 3 * 2**20


@torch.inference_mode()
def evaluate(
    model: nn.Module, x: torch.Tensor | ImageStream, y: torch.Tensor, batch_size: int = 2000
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on (x, y), in eval mode.

    The forward passes take up to `EVAL_CHUNK_BYTES` of input each: several `batch_size` blocks
    at once, or a block in pieces; the loss is still summed per `batch_size` block in the same
    order, so the numbers are the ones block-by-block evaluation gives.
    """
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=y.device)
    correct = torch.zeros((), device=y.device, dtype=torch.int64)
    chunk, rows = batch_size, batch_size  # rows per block read, rows per forward pass
    if isinstance(x, torch.Tensor) and len(x):
        rows = max(1, EVAL_CHUNK_BYTES // (x[0].numel() * x.element_size()))
        chunk = batch_size * max(1, rows // batch_size)
    for xb, yb in eval_batches(x, y, chunk):  # x: a tensor, or a split streamed from disk
        out = torch.cat([model(piece).float() for piece in xb.split(rows)])
        for i in range(0, len(yb), batch_size):
            block = slice(i, i + batch_size)
            loss += F.cross_entropy(out[block], yb[block], reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    return loss.item() / len(y), correct.item() / len(y)


def make_optimizer(params: list[nn.Parameter], cfg: DictConfig) -> torch.optim.Optimizer:
    """The `train.optimizer`. Adam and SGD use PyTorch's fused kernels (one pass over each tensor
    per step, on CPU and CUDA): at the demo's settings a step of LeNet-300-100 took 1.43 ms fused
    against 1.69 ms with the multi-tensor (`foreach`) path on one thread, and 1.5 against 2.0 ms
    with two trainings side by side (2026-12-06, this project's 2-core machine). The updates are
    the same formulas, so results agree with `foreach` to float rounding, not bit for bit.
    RMSprop has no fused kernel: it keeps `foreach` (one kernel per op for all parameters)."""
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    fast = {"fused": True} if fused else {"foreach": True}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            **fast,
        )
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True
        )
    raise LottoError(f"config key train.optimizer: unknown optimizer {cfg.optimizer!r}")


def step_function(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """`optimizer.step`, or for a single-group fused Adam on CPU (the demo's optimizer) the same
    kernel called directly: `torch._fused_adam_` on the optimizer's own state, after
    `optimizer.step` has created it. torch.optim's per-step Python around the kernel (grouping
    the tensors by device and dtype, hooks, a profiler record, `_init_group`) cost about 100 us
    of a 2.4 ms LeNet-300-100 step on one thread of this project's machine (273 vs 173 us for
    the step alone, 2026-12-06). The updates are the same kernel with the same arguments: bit
    for bit the same weights and state (`test_step_function_matches_optimizer_step`). A step
    where a parameter has no gradient goes through `optimizer.step`, which skips it."""
    group = optimizer.param_groups[0]
    direct = (
        type(optimizer) is torch.optim.Adam
        and len(optimizer.param_groups) == 1
        and group["fused"]
        and not (group["amsgrad"] or group["maximize"] or group["capturable"])
        and not (group["differentiable"] or group.get("decoupled_weight_decay", False))
        and all(p.device.type == "cpu" for p in group["params"])
    )
    if not direct:
        return optimizer.step
    params: list[torch.Tensor] = group["params"]
    state: list[list[torch.Tensor]] = []  # exp_avg, exp_avg_sq, step: filled by the first step

    def step() -> None:
        grads = [p.grad for p in params]
        if not state or any(g is None for g in grads):
            optimizer.step()
            if not state and all(p in optimizer.state for p in params):
                per = [optimizer.state[p] for p in params]
                state.extend([s[k] for s in per] for k in ("exp_avg", "exp_avg_sq", "step"))
            return
        beta1, beta2 = group["betas"]
        with torch.no_grad():
            torch._foreach_add_(state[2], 1)
            torch._fused_adam_(
                params, grads, state[0], state[1], [], state[2], amsgrad=False,
                lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                eps=group["eps"], maximize=False,
            )

    return step


def lr_factor(cfg: DictConfig, total: int, warmup: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at each iteration: warm-up, then the schedule."""
    milestones = [round(f * total) for f in cfg.milestones]

    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "step":
            return cfg.gamma ** sum(it >= m for m in milestones)
        if cfg.schedule == "cosine":
            progress = (it - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * progress))
        raise LottoError(f"config key train.schedule: unknown schedule {cfg.schedule!r}")

    return factor


def check_train_config(cfg: DictConfig) -> None:
    from lotto.config import check

    check(cfg.optimizer in ("adam", "sgd", "rmsprop"), "train.optimizer", "adam, sgd or rmsprop")
    check(
        cfg.schedule in ("constant", "step", "cosine"), "train.schedule", "constant, step or cosine"
    )
    check(cfg.lr > 0, "train.lr", "must be positive")
    check(
        cfg.get("test_eval", "every") in ("every", "reported"),
        "train.test_eval",
        "every or reported",
    )
    check(cfg.batch_size >= 1, "train.batch_size", "must be at least 1")
    check(
        all(0 < f < 1 for f in cfg.milestones),
        "train.milestones",
        "fractions of the budget, each in (0, 1)",
    )
    for key in ("iterations", "eval_every", "warmup"):
        try:
            parse_step(cfg[key], 1)
        except LottoError as e:
            raise LottoError(f"config key train.{key}: {e}") from None


def eval_test_mode(cfg: DictConfig) -> bool | str:
    """`train`'s `eval_test` for a config's `train.test_eval` (`every` where the key is absent)."""
    return "reported" if cfg.get("test_eval", "every") == "reported" else True


def _augment_draws(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The random numbers `_augment` draws for a batch of `n` (also replayed to skip batches)."""
    flip = torch.rand(n, generator=gen, device=gen.device) < 0.5
    shift = torch.randint(0, 9, (2, n, 1, 1, 1), generator=gen, device=gen.device)
    return flip, shift


def _augment(
    x: torch.Tensor, gen: torch.Generator, shard: tuple[int, slice] | None = None
) -> torch.Tensor:
    """Per-example random horizontal flip and 4-pixel pad-and-crop, on the whole batch at once.

    `shard` = (global batch size, this rank's rows) under torchrun: the draws are made for the
    global batch and this rank keeps its rows, so each example is augmented as in one process.
    """
    n, c, h, w = x.shape
    if shard is None:
        flip, (dy, dx) = _augment_draws(n, gen)
    else:
        flip, shift = _augment_draws(shard[0], gen)
        flip, (dy, dx) = flip[shard[1]], shift[:, shard[1]]
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (4, 4, 4, 4))
    rows = dy + torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = dx + torch.arange(w, device=x.device).view(1, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chans, rows, cols]


@dataclass(frozen=True)
class Budget:
    """A run's step counts, parsed from the `train` config for a training set of `n` examples."""

    n: int
    per_epoch: int
    total: int
    start: int  # the first step trained (k when resumed from theta_k)
    eval_every: int
    warmup: int

    def evaluates_at(self, it: int) -> bool:
        return it % self.eval_every == 0 or it == self.total


def budget(cfg: DictConfig, n: int, start_iteration: int = 0) -> Budget:
    """Check the `train` config and parse its budget (shared by `train` and `train_replicas`)."""
    check_train_config(cfg)
    per_epoch = max(1, n // cfg.batch_size)
    total = parse_step(cfg.iterations, per_epoch)
    start = int(start_iteration)
    if not 0 <= start < total:
        raise LottoError(f"start iteration {start} is not within the budget of {total}")
    eval_every = max(1, parse_step(cfg.eval_every, per_epoch))
    return Budget(n, per_epoch, total, start, eval_every, parse_step(cfg.warmup, per_epoch))


class Draws:
    """The seeded draws that fix a run's batches: the epoch orders, drawn on the CPU so that the
    same seed gives the same batches on every device, and the augmentation."""

    def __init__(self, seed: int, device: torch.device):
        self.order = torch.Generator().manual_seed(seed)
        self.augment = torch.Generator(device=device).manual_seed(seed)

    def epoch(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.order)

    def skip(self, data: Data, batch_size: int) -> None:
        """Fast-forward one step (resuming at step k): draw what it would, train nothing."""
        if data.augment:
            _augment_draws(min(batch_size, len(data.train_x)), self.augment)


class History:
    """Evaluation rows, the early stop (the first minimum of validation loss) and the result."""

    def __init__(self, budget: Budget):
        self.budget, self.rows, self.best = budget, [], None
        self.start = time.perf_counter()
        self.eval_seconds, self.evaluated_images = 0.0, 0

    def add(
        self, it: int, train_loss: float, val: tuple[float, float], test_acc: float, lr: float
    ) -> dict:
        row = {
            "iteration": it,
            "epoch": it / self.budget.per_epoch,
            "train_loss": train_loss,
            "val_loss": val[0],
            "val_accuracy": val[1],
            "test_accuracy": test_acc,
            "lr": lr,
            "seconds": time.perf_counter() - self.start,
        }
        self.rows.append(row)
        if self.best is None or val[0] < self.best["val_loss"]:
            self.best = row
        return row

    def result(self, it: int) -> TrainResult:
        last, best = self.rows[-1], self.best
        return TrainResult(
            iterations=it,
            epochs=it / self.budget.per_epoch,
            train_loss=last["train_loss"],
            val_loss=last["val_loss"],
            val_accuracy=last["val_accuracy"],
            test_accuracy=last["test_accuracy"],
            early_stop_iteration=best["iteration"],
            early_stop_val_loss=best["val_loss"],
            early_stop_test_accuracy=best["test_accuracy"],
            seconds=time.perf_counter() - self.start,
            history=self.rows,
            start_iteration=self.budget.start,
            eval_seconds=self.eval_seconds,
            evaluated_images=self.evaluated_images,
        )


def _mlp_fast_path(
    model: nn.Module, net: nn.Module, data: Data, cfg: DictConfig, device: torch.device,
    shard: slice | None, after_backward: Callable | None,
) -> tuple[list[nn.Linear], bool] | None:
    """The Linear layers (and whether the batch is flattened first) when a step of `train` may be
    computed by `lotto.mlp_step` instead of autograd: a plain ReLU MLP on the CPU in float32,
    one process, no AMP, no hook reading gradients, every parameter trained. The numbers are the
    same bit for bit (`tests/test_mlp_step.py`). Why: autograd, module dispatch and Python cost
    about 0.35 ms of a ~1.9 ms LeNet-300-100 step; at the demo's settings (1 thread, evaluation
    excluded, 12 interleaved pairs of 1,500 steps, 2026-12-06, shared 2-core machine) a step took
    1,445 us median against 1,635 through autograd, 1.10x paired. None: the autograd path."""
    if not (MLP_FAST_PATH and device.type == "cpu" and not cfg.amp and shard is None):
        return None
    if net is not model or after_backward is not None or not model.training:
        return None
    if not torch.is_grad_enabled() or torch.is_anomaly_enabled():  # autograd's own checks
        return None
    if data.train_y.dtype != torch.int64:  # class indices, not probabilities
        return None
    if not all(p.requires_grad for p in model.parameters()):
        return None
    layers = mlp_layers(model)
    if layers is None:
        return None
    return layers, type(model[0]) is nn.Flatten


def train(
    model: nn.Module,
    data: Data,
    cfg: DictConfig,
    *,
    seed: int,
    device: torch.device,
    masks: Mapping[str, torch.Tensor] | None = None,
    after_backward: Callable[[nn.Module], None] | None = None,
    checkpoints: Mapping[int, Callable[[nn.Module], None]] | None = None,
    progress: Progress | None = None,
    desc: str = "train",
    start_iteration: int = 0,
    eval_start: bool = True,
    eval_test: bool | str = True,
) -> TrainResult:
    """Train `model` in place on `data` for the budget in `cfg` (the `train` config section).

    `start_iteration` k resumes a run at step k (late rewinding: the survivors rewound to
    theta_k): it trains steps k..T only, with the warm-up and schedule at absolute steps, the
    batches the same seed gives from step k on (the skipped epochs and batches are drawn and
    dropped; dropout is not replayed), evaluation at absolute multiples of `eval_every` and
    absolute iterations in the history, the early stop and `checkpoints`. The optimizer starts
    fresh (no momentum or Adam moments from before k), as in OpenLTH.

    `eval_start=False` skips the evaluation before the first step and `eval_test=False` the test
    split (test accuracy NaN): proxy trainings (`search`, `netadapt`) score on validation only,
    and on a small network two passes over 15,000 images cost as much as ~80 training steps.
    `eval_test="reported"` evaluates the test split only where the result reports it: at the
    early stop (the weights of the best validation loss are kept, then tested once at the end)
    and at the last evaluation; other history rows get NaN. Validation, which the early stop
    needs, is evaluated at every evaluation. The time spent evaluating is in the result
    (`eval_seconds`), and a training whose evaluation took most of its time prints one line
    saying so (`TrainResult.eval_warning`).
    """
    if eval_test not in (True, False, "reported"):
        raise ValueError(f"eval_test must be True, False or 'reported', not {eval_test!r}")
    steps = budget(cfg, len(data.train_x), start_iteration)
    n, per_epoch, total, start_at = steps.n, steps.per_epoch, steps.total, steps.start
    warmup = steps.warmup
    checkpoints = dict(checkpoints or {})

    model.to(device).train()
    channels_last = bool(cfg.channels_last)  # read once: a DictConfig lookup is ~10 us a step
    if channels_last:
        model.to(memory_format=torch.channels_last)
    named = dict(model.named_parameters())
    masked = [
        (named[k], m.to(device=device, dtype=named[k].dtype)) for k, m in (masks or {}).items()
    ]
    mask_params, mask_values = [p for p, _ in masked], [m for _, m in masked]

    def apply_masks() -> None:
        if mask_params:
            with torch.no_grad():
                torch._foreach_mul_(mask_params, mask_values)

    apply_masks()
    # under torchrun: this rank's rows of every global batch, and DDP around the model (`net`
    # runs the forward; masks, hooks, checkpoints and evaluation see `model` itself)
    global_batch = min(cfg.batch_size, n)
    shard = distributed.shard_rows(global_batch)
    net, unwrap = distributed.data_parallel(model, device)
    params = list(model.parameters())
    optimizer = make_optimizer(params, cfg)
    factor = lr_factor(cfg, total, warmup)
    # LambdaLR counts the steps taken here; the schedule is a function of the absolute step
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: factor(i + start_at))
    optimizer_step = step_function(optimizer)  # after the scheduler has wrapped optimizer.step
    # a constant rate without warm-up never changes: skip the scheduler's per-step Python
    step_schedule = not (cfg.schedule == "constant" and warmup == 0)
    seed_everything(seed)  # dropout and anything else drawing from the global generator
    if distributed.rank():  # other ranks' shards get their own dropout masks, not rank 0's
        torch.manual_seed(seed + 1_000_003 * distributed.rank())
    draws = Draws(seed, device)
    augment_gen = draws.augment
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.amp else nullcontext()

    log = History(steps)
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    task = None
    if progress is not None:
        task = progress.add_task(desc, total=total, completed=start_at)

    def record(it: int) -> dict:
        nonlocal loss_sum, loss_count
        # under torchrun: the global batches' loss; identical buffers, so identical evaluations
        total_loss = distributed.mean_over_ranks(loss_sum)
        train_loss = total_loss.item() / loss_count if loss_count else float("nan")
        if loss_count and not math.isfinite(train_loss):
            raise TrainingDiverged(it)
        distributed.sync_buffers(model)
        started = time.perf_counter()
        val_loss, val_acc = evaluate(model, data.val_x, data.val_y)
        log.evaluated_images += len(data.val_y)
        test_acc = float("nan")
        if eval_test is True:
            test_acc = evaluate(model, data.test_x, data.test_y)[1]
            log.evaluated_images += len(data.test_y)
        lr = optimizer.param_groups[0]["lr"]
        row = log.add(it, train_loss, (val_loss, val_acc), test_acc, lr)
        if eval_test == "reported" and log.best is row:  # a new early stop: keep its weights
            best_state.clear()
            best_state.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        log.eval_seconds += time.perf_counter() - started
        loss_sum = torch.zeros((), device=device)
        loss_count = 0
        if task is not None:
            progress.update(task, completed=it, description=f"{desc} val_acc={val_acc:.3f}")
        return row

    def fast_path() -> tuple[list[nn.Linear], bool] | None:
        return _mlp_fast_path(model, net, data, cfg, device, shard, after_backward)

    best_state: dict[str, torch.Tensor] = {}
    it = 0
    if start_at in checkpoints:
        checkpoints.pop(start_at)(model)
    fast = fast_path()
    if eval_start:
        record(start_at)
    while it < total:
        order = draws.epoch(n)
        batches = None  # this epoch's batches from the first one trained, in memory or streamed
        for b in range(per_epoch):
            if it >= total:
                break
            if it < start_at:  # fast-forward to step k
                draws.skip(data, cfg.batch_size)
                it += 1
                continue
            if batches is None and shard is None:
                batches = data.batches(order, cfg.batch_size, first=b, count=total - it)
            elif batches is None:  # torchrun: read this rank's rows of each global batch only
                mine = distributed.shard_order(order, per_epoch, global_batch, shard)
                batches = data.batches(mine, shard.stop - shard.start, first=b, count=total - it)
            x, y = next(batches)
            if data.augment:
                x = _augment(x, augment_gen, None if shard is None else (global_batch, shard))
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if fast is not None:  # the same loss and gradients, bit for bit, without autograd
                layers, flatten = fast
                loss = mlp_loss_and_grads(layers, x.flatten(1) if flatten else x, y)
            else:
                with autocast:
                    out = net(x).float()
                    if shard is None:
                        loss = F.cross_entropy(out, y)
                    else:  # DDP averages the ranks' gradients: this scaling makes that average
                        # the gradient of the global batch's mean loss, whatever the shard sizes
                        loss = F.cross_entropy(out, y, reduction="sum") * (
                            distributed.world() / global_batch
                        )
                for p in params:  # optimizer.zero_grad(set_to_none=True), without its wrapper
                    p.grad = None
                loss.backward()
            if after_backward is not None:
                after_backward(model)
            optimizer_step()
            if step_schedule:
                scheduler.step()
            apply_masks()
            loss_sum += loss.detach()
            loss_count += 1
            it += 1
            if it in checkpoints:
                checkpoints.pop(it)(model)
                fast = fast_path()  # the callback may have added a hook or frozen a parameter
            if steps.evaluates_at(it):
                record(it)
    if eval_test == "reported" and log.rows:
        _test_reported(model, data, log, best_state)
    if task is not None:
        progress.remove_task(task)
    unwrap()  # callers get back their own module tree (no DDP, no SyncBatchNorm)
    result = log.result(it)
    warning = result.eval_warning()
    if warning is not None and distributed.rank() == 0 and not _EVAL_WARNED:
        # once per process: a lottery's 46 trainings of one shape would say it 46 times
        _EVAL_WARNED.append(desc)
        print(f"{desc}: {warning}", file=sys.stderr)
    return result


_EVAL_WARNED: list[str] = []  # the training that said evaluation dominated, if one did


def _test_reported(model: nn.Module, data: Data, log: History, best: dict) -> None:
    """Test accuracy of the last evaluation and of the early stop (from its kept weights)."""
    started = time.perf_counter()
    last = log.rows[-1]
    last["test_accuracy"] = evaluate(model, data.test_x, data.test_y)[1]
    log.evaluated_images += len(data.test_y)
    if log.best is not last and best:
        final = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best)
        log.best["test_accuracy"] = evaluate(model, data.test_x, data.test_y)[1]
        log.evaluated_images += len(data.test_y)
        model.load_state_dict(final)
    log.eval_seconds += time.perf_counter() - started
