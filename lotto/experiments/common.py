"""Pieces the experiments share: seeded models, run-dir tensors, random streams, turning
a diverged training run into a user error, and running trainings as tasks of `lotto.parallel`
(a failures table; the data cache per worker and the fault-injection hook for tests live below
the experiments, in `lotto.tasks`, and are re-exported here).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress
from torch import nn

from lotto.data import Data
from lotto.errors import LottoError
from lotto.models import build_model
from lotto.parallel import ParallelConfig, Runner, parallel_config
from lotto.runs import MetricsLog, RunDir
from lotto.tasks import (  # noqa: F401  (re-exported: the experiments' one import)
    FAULT_ENV,
    inject,
    injected_fault,
    shared_data,
    unit_label,
)
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
def divergence_is_a_user_error(what: str) -> Iterator[None]:
    """Turn `TrainingDiverged` inside the block (a task) into one LottoError line naming `what`.

    A diverged recipe would diverge again on a re-run: it stops the run (see `lotto.parallel`)
    instead of becoming a failed unit that a re-run retries.
    """
    try:
        yield
    except TrainingDiverged as e:
        raise LottoError(f"NaN/inf loss in {what} at iteration {e.iteration}") from None


@contextmanager
def finished_work_is_kept(kept: Callable[[], str], run: RunDir) -> Iterator[None]:
    """Add what is kept to a LottoError that stops the run inside the block (a batch of tasks)."""
    try:
        yield
    except LottoError as e:
        raise LottoError(f"{e}; {kept()} are kept in {run.path}") from None


# ---- trainings as tasks -------------------------------------------------------------------------

def open_runner(cfg: DictConfig) -> Runner:
    """The `Runner` of the command's `parallel:` section (validated: a LottoError naming a key)."""
    return Runner(**parallel_settings(cfg).run_options())


def parallel_settings(cfg: DictConfig) -> ParallelConfig:
    return parallel_config(OmegaConf.to_container(cfg.parallel, resolve=True))


def task_function(fn: Callable, runner: Runner, progress: Progress | None) -> Callable:
    """`fn` as the runner calls it: in this process it also draws per-training progress bars
    (a worker cannot draw in this terminal, and a Progress does not pickle)."""
    if runner.backend == "serial" and progress is not None:
        return functools.partial(fn, progress=progress)
    return fn


class FailureLog:
    """`failures.csv` / `.parquet`: the units of a run that failed (status=failed, error) or
    could not start because a unit they need failed (status=skipped), with their keys.

    A unit without a metrics row is retried by the next run; on `close` the table keeps only
    units still without a row, and is removed when none is left. `failed` and `skipped` list
    this run's entries, for the terminal summary and the exit status.
    """

    def __init__(self, run: RunDir, metrics: MetricsLog):
        self.log, self.metrics = MetricsLog(run, "failures"), metrics
        self.entries: list[dict] = []

    def add(self, key: dict, status: str, error: str) -> None:
        row = {**key, "status": status, "error": error}
        self.log.drop(**key)
        self.log.append(row)
        self.entries.append(row)

    @property
    def failed(self) -> list[dict]:
        return [e for e in self.entries if e["status"] == "failed"]

    def close(self, keys: Sequence[str]) -> None:
        """Forget units that now have a metrics row (finished by this run or a past one)."""
        rows = self.log.rows
        left = [r for r in rows if not self.metrics.find(**{k: r[k] for k in keys})]
        if len(left) == len(rows):
            return
        if left:
            self.log.drop()  # every row: the next append rewrites the table whole
            self.log.append(left)
        else:
            for path in (self.log.csv, self.log.parquet, self.log.length_file):
                path.unlink(missing_ok=True)
