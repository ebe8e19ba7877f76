"""Pieces `lottery` and `rethink` share: seeded models, run-dir tensors, random streams, and
turning a diverged training run into a user error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lotto.data import Data
from lotto.errors import LottoError
from lotto.models import build_model
from lotto.runs import RunDir
from lotto.train import TrainingDiverged

# Offsets that give each random draw of a seed (and round) its own stream, so that adding a
# control or a mode never shifts the numbers of another.
REINIT_STREAM = 100_003  # a second draw of the dense init (the reinit control / mode)
RANDOM_STREAM = 200_003  # random masks and random channel selections
FRESH_STREAM = 300_007  # the pruned network's own fresh init (scratch modes)


def stream_seed(seed: int, offset: int, index: int = 0) -> int:
    """The seed of draw `offset` for replicate `seed` (and round `index`)."""
    return seed * 1000 + index + offset


def seeded_model(name: str, data: Data, init_seed: int, **options: Any) -> nn.Module:
    """`build_model` for `data`, initialised from the global generator seeded with `init_seed`."""
    torch.manual_seed(init_seed)
    return build_model(name, data.in_channels, data.num_classes, data.image_size, **options)


def load_or_make(
    run: RunDir, rel: str, make: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Tensors `rel` of the run directory: loaded if a past run saved them, else made and saved."""
    if run.has(rel):
        return run.load_tensors(rel)
    value = make()
    run.save_tensors(rel, value)
    return value


@contextmanager
def divergence_is_a_user_error(what: str, kept: str, run: RunDir) -> Iterator[None]:
    """Turn `TrainingDiverged` inside the block into one LottoError line naming what is kept."""
    try:
        yield
    except TrainingDiverged as e:
        raise LottoError(
            f"NaN/inf loss in {what} at iteration {e.iteration}; {kept} are kept in {run.path}"
        ) from None
