"""Optional experiment tracking: `run.tensorboard=true` mirrors every metrics row a run appends
to TensorBoard event files in `<run dir>/tensorboard` (`tensorboard --logdir runs`).

A row becomes scalars `<table>/<group>/<column>` at step `<step column>`: the step is a curve
row's iteration, else the first of round, step, sample, iteration that the row has; the group
is the row's seed, its round or step when that is not the step, and its text cells (variant,
mode, method, ...). E.g. `curves/seed0/round1/ticket/val_accuracy` at iteration 100, or
`metrics/seed0/ticket/test_accuracy` at round 1. Rows found on disk when a run resumes were
logged when they were written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lotto.errors import LottoError

STEP_COLUMNS = ("round", "step", "sample", "iteration")  # a unit's table: per round, step, ...
CURVE_STEP = ("iteration",)  # a training curve's table (curves.csv): per iteration
GROUP_INTS = ("seed", "round", "step")
SKIPPED_TABLES = ("failures",)  # error text, no numbers worth a curve


class TensorBoardMirror:
    def __init__(self, path: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LottoError("run.tensorboard=true needs the tensorboard package: "
                             "pip install 'lotto[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(path))
        self.counts: dict[str, int] = {}  # rows per table: the step of rows without a step column

    def rows(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        if table in SKIPPED_TABLES:
            return
        for row in rows:
            index = self.counts.get(table, 0)
            self.counts[table] = index + 1
            order = CURVE_STEP if table == "curves" else STEP_COLUMNS
            step_col = next((c for c in order if _number(row.get(c)) is not None), None)
            step = int(row[step_col]) if step_col is not None else index
            group = [f"{c}{int(row[c])}" for c in GROUP_INTS
                     if c != step_col and _number(row.get(c)) is not None]
            group += [str(v) for v in row.values() if isinstance(v, str) and len(v) <= 40
                      and "/" not in v and " " not in v]
            prefix = "/".join([table, *group])
            for col, value in row.items():
                number = _number(value)
                if number is None or col == step_col or col in GROUP_INTS:
                    continue
                self.writer.add_scalar(f"{prefix}/{col}", number, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _number(value: Any) -> float | None:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
