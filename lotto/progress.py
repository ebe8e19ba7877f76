"""The progress display every long command shares.

In a terminal: rich progress bars. When output is not a terminal (`make demo > log`, nohup, a CI
or cluster batch job) bars would print nothing until the end, so `make_progress` returns
`PlainProgress` instead: the same calls (`add_task`, `advance`, `update`, `remove_task`,
`console`), printed as plain lines — the overall count, elapsed time, ETA and the last finished
unit with its key numbers (a training's description ends with its last `val_acc`) — at most one
line per `LOTTO_PROGRESS_SECONDS` (default 10 s), plus a line when a top-level task completes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

INTERVAL_ENV = "LOTTO_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 10.0
INSTANT = 0.5  # seconds: a unit finished faster was found done on disk (resumed), not trained


def make_progress(console: Console | None = None) -> Progress:
    """Bars on a terminal; plain, rate-limited lines otherwise (see the module docstring)."""
    console = console or Console()
    if not console.is_terminal:
        return PlainProgress(console)  # type: ignore[return-value]  (same calls, duck-typed)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float
    started: float  # monotonic time of add_task
    # the rate (ETA) counts from (base_time, base_completed): advances made within INSTANT
    # seconds of the base (units found finished on disk when a run resumes) move the base
    base_time: float
    base_completed: float

    @property
    def finished(self) -> bool:
        return self.total is not None and self.completed >= self.total


class PlainProgress:
    """`rich.progress.Progress`'s calls as plain lines, for output that is not a terminal."""

    def __init__(self, console: Console, interval: float | None = None,
                 clock: Any = time.monotonic):
        self.console = console
        if interval is None:
            interval = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))
        self.interval = interval
        self._clock = clock
        self._tasks: dict[int, _Task] = {}
        self._next = 0
        self._last_line = -float("inf")
        self._last_done = ""  # the description of the last training (task) that ended

    # -- the Progress calls the experiments make --------------------------------------------------
    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def add_task(self, description: str, total: float | None = 100.0, completed: float = 0,
                 **_: Any) -> TaskID:
        tid = self._next
        self._next += 1
        now = self._clock()
        self._tasks[tid] = _Task(_plain(description), total, completed, now, now, completed)
        self._maybe_print()
        return TaskID(tid)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        task = self._tasks[task_id]
        task.completed += advance
        now = self._clock()
        if now - task.base_time < INSTANT:
            task.base_time, task.base_completed = now, task.completed
        self._maybe_print(force=task.finished and self._is_top(task_id))

    def update(self, task_id: TaskID, *, total: float | None = None,
               completed: float | None = None, advance: float | None = None,
               description: str | None = None, **_: Any) -> None:
        task = self._tasks[task_id]
        was_finished = task.finished
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        if description is not None:
            task.description = _plain(description)
        self._maybe_print(force=task.finished and not was_finished and self._is_top(task_id))

    @property
    def task_ids(self) -> list[TaskID]:
        return [TaskID(t) for t in self._tasks]

    def remove_task(self, task_id: TaskID) -> None:
        was_top = self._is_top(task_id)
        task = self._tasks.pop(task_id, None)
        if task is not None and not was_top:
            self._last_done = task.description
            self._maybe_print()

    # -- the lines --------------------------------------------------------------------------------
    def _is_top(self, task_id: int) -> bool:
        return bool(self._tasks) and min(self._tasks) == task_id

    def _maybe_print(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last_line < self.interval:
            return
        line = self.line(now)
        if line:
            self._last_line = now
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def line(self, now: float | None = None) -> str:
        """`lottery 5/30 | elapsed 1:23 | ETA 6:55 | last finished: seed 0 round 1 ticket ...`."""
        if not self._tasks:
            return ""
        now = self._clock() if now is None else now
        top_id = min(self._tasks)
        top = self._tasks[top_id]
        parts = [f"{top.description} {_count(top)}", f"elapsed {_clock(now - top.started)}"]
        done_here = top.completed - top.base_completed
        if top.finished:
            parts.append("done")
        elif top.total is not None and done_here > 0:
            eta = (now - top.base_time) / done_here * (top.total - top.completed)
            parts.append(f"ETA {_clock(eta)}")
        for tid, task in self._tasks.items():  # what runs now, innermost last
            if tid != top_id:
                parts.append(f"{task.description} {_count(task)}")
        if self._last_done:
            parts.append(f"last finished: {self._last_done}")
        return " | ".join(parts)


def _count(task: _Task) -> str:
    done = f"{task.completed:g}"
    return f"{done}/{task.total:g}" if task.total is not None else done


def _plain(description: str) -> str:
    return Text.from_markup(description).plain
