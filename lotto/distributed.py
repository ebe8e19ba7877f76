"""One training over several processes, launched by `torchrun` (data parallel).

Under `torchrun` (WORLD_SIZE > 1 in the environment) the CLI calls `init_if_launched()` once;
from then on:

- every rank draws the same global batch order from the seed, and rank r trains on a contiguous
  slice of each global batch (`shard_rows`); DistributedDataParallel averages the gradients, and
  the trainer scales each rank's loss so that the average is the gradient of the global batch
  mean: the update is the single-process update on the same global batch, up to rounding;
- every rank evaluates the full validation and test splits with identical weights and buffers,
  so every rank sees the same numbers (and takes the same resume and early-stop decisions);
- only rank 0 writes run files (`lotto.runs` does nothing on the other ranks) and prints;
- every rank agrees on every unit's outcome (`settle`, called by `lotto.parallel` after each
  task, and `checkpoint`, called before a training's first collective): a unit that fails on one
  rank fails on all, before any rank writes its row or starts a collective of the next unit.

Without a process group every helper here is a no-op, so single-process code paths are unchanged.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lotto.errors import LottoError


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """True on rank 0, and in any process that is not part of a torchrun launch."""
    return rank() == 0


def launched() -> bool:
    """True when started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_if_launched() -> bool:
    """Join the torchrun process group (once); True when this process is one of several ranks.

    Both backends are registered when a GPU is present (gloo for CPU tensors, NCCL for CUDA
    ones), so that `--device cpu` still works on a GPU host; each rank owns `cuda:LOCAL_RANK`.
    """
    if not launched() or active():
        return active()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    # outcomes travel on a group of their own (gloo: CPU objects, whatever the device), so that
    # an exchange can never be paired with a training collective of the default group
    global _STATUS_GROUP
    _STATUS_GROUP = dist.new_group(backend="gloo")
    atexit.register(shutdown)
    return True


def shutdown() -> None:
    global _STATUS_GROUP
    if active():
        dist.destroy_process_group()
    _STATUS_GROUP = None


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_device(device: torch.device) -> torch.device:
    """`cuda` (no index) means this rank's GPU, `cuda:LOCAL_RANK`, under torchrun."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", local_rank())
    return device


# ------------------------------------------------------------------------------- outcomes

# A unit (one task of `lotto.parallel`) runs on every rank in step: each training's collectives
# pair with the same training's collectives on the other ranks. A rank whose unit fails before
# its training (a bad tensor, an injected fault) must not go on to the next unit while the
# others train this one: their collectives would pair with the next unit's and mix two trainings
# silently. So the ranks exchange their state (on `_STATUS_GROUP`) before each training's first
# collective (`checkpoint`: "running") and at the end of the unit (`settle`: "done", "failed",
# "peer" or "stop"); a rank seeing a peer's end state at a checkpoint stops its unit (`PeerFailed`).
# Every rank makes the same exchanges: `settle` repeats its own while a peer is still "running".
_STATUS_GROUP: Any = None
_IN_TRAINING = False  # between a passed checkpoint and the end of that training (`unwrap`)


class PeerFailed(Exception):
    """Another rank's unit failed: this rank stops the same unit (raised at a checkpoint)."""


def unit_begins() -> None:
    global _IN_TRAINING
    _IN_TRAINING = False


def in_training() -> bool:
    """True when this rank's unit stopped inside a training, its collectives under way: the
    other ranks may be waiting in one, and no later exchange of this rank can pair with theirs."""
    return _IN_TRAINING


def _exchange(state: tuple[str, str]) -> list[tuple[str, str]]:
    states: list[Any] = [None] * world()
    dist.all_gather_object(states, state, group=_STATUS_GROUP)
    return [tuple(s) for s in states]


def checkpoint() -> None:
    """Before a training's first collective: go on only if every rank is still in the unit."""
    global _IN_TRAINING
    if world() == 1:
        return
    states = _exchange(("running", ""))
    ended = [r for r, (s, _) in enumerate(states) if s != "running"]
    if ended:
        raise PeerFailed(f"rank {ended[0]} ended this unit first")
    _IN_TRAINING = True


def settle(state: str, text: str = "") -> list[tuple[str, str]]:
    """Every rank's end state of the unit (this rank's: `state`, `text`); one list for all."""
    if world() == 1:
        return [(state, text)]
    while True:
        states = _exchange((state, text))
        if all(s != "running" for s, _ in states):
            return states


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written what the others read)."""
    if world() > 1:
        dist.barrier()


# ------------------------------------------------------------------------------- sharding


def shard_rows(global_batch: int) -> slice | None:
    """This rank's rows of every global batch: a contiguous slice (None in one process).

    Sizes differ by at most one when the batch does not divide by the world size; the trainer's
    loss scaling keeps the update exact anyway.
    """
    n = world()
    if n == 1:
        return None
    if global_batch < n:
        raise LottoError(f"a batch of {global_batch} cannot be split over {n} torchrun processes")
    r = rank()
    return slice(r * global_batch // n, (r + 1) * global_batch // n)


def shard_order(
    order: torch.Tensor, per_epoch: int, global_batch: int, rows: slice
) -> torch.Tensor:
    """The epoch order restricted to this rank: its batch b is `rows` of global batch b."""
    batches = order[: per_epoch * global_batch].view(per_epoch, global_batch)
    return batches[:, rows].reshape(-1)


# ------------------------------------------------------------------------------- the model


def data_parallel(
    model: nn.Module, device: torch.device
) -> tuple[nn.Module, Callable[[], None]]:
    """`model` wrapped for training across ranks, and a function that undoes the wrapping.

    In one process: the model itself. On CUDA, BatchNorm layers become SyncBatchNorm (batch
    statistics over the global batch) for the duration; they share their parameters and buffers
    with the original layers, which `unwrap` puts back, so callers see the same module tree and
    parameter names (no `module.` prefix) before and after.
    """
    if world() == 1:
        return model, lambda: None
    checkpoint()  # DDP's constructor already broadcasts: agree before it
    from torch.nn.parallel import DistributedDataParallel

    swapped = _sync_batchnorm(model) if device.type == "cuda" else []
    ids = [device.index] if device.type == "cuda" else None
    net = DistributedDataParallel(model, device_ids=ids)

    def unwrap() -> None:
        global _IN_TRAINING
        _IN_TRAINING = False  # the training's collectives are over
        for parent, name, original in swapped:
            setattr(parent, name, original)

    return net, unwrap


def _sync_batchnorm(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                # the SyncBatchNorm shares the child's parameters and buffers (no copies)
                setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
                swapped.append((parent, name, child))
    return swapped


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over the ranks (`value` itself in one process)."""
    if world() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / world()


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP broadcasts them before each training forward, so after the last one each rank holds
    statistics updated by its own shard (on CPU, without SyncBatchNorm): evaluation would differ.
    """
    if world() == 1:
        return
    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
