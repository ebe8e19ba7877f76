"""One training over several processes, launched by `torchrun` (data parallel).

Under `torchrun` (WORLD_SIZE > 1 in the environment) the CLI calls `init_if_launched()` once;
from then on:

- every rank draws the same global batch order from the seed, and rank r trains on a contiguous
  slice of each global batch (`shard_rows`); DistributedDataParallel averages the gradients, and
  the trainer scales each rank's loss so that the average is the gradient of the global batch
  mean: the update is the single-process update on the same global batch, up to rounding;
- every rank evaluates the full validation and test splits with identical weights and buffers,
  so every rank sees the same numbers (and takes the same resume and early-stop decisions);
- only rank 0 writes run files (`lotto.runs` does nothing on the other ranks) and prints.

Without a process group every helper here is a no-op, so single-process code paths are unchanged.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable

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
    atexit.register(shutdown)
    return True


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_device(device: torch.device) -> torch.device:
    """`cuda` (no index) means this rank's GPU, `cuda:LOCAL_RANK`, under torchrun."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", local_rank())
    return device


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
    from torch.nn.parallel import DistributedDataParallel

    swapped = _sync_batchnorm(model) if device.type == "cuda" else []
    ids = [device.index] if device.type == "cuda" else None
    net = DistributedDataParallel(model, device_ids=ids)

    def unwrap() -> None:
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
