"""`lotto.progress`: bars on a terminal, plain rate-limited lines when output is captured."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from lotto.progress import PlainProgress, make_progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_terminal_gets_bars_captured_output_gets_lines() -> None:
    assert isinstance(make_progress(Console(file=io.StringIO(), force_terminal=True)), Progress)
    assert isinstance(make_progress(Console(file=io.StringIO())), PlainProgress)


def test_lines_are_rate_limited_and_say_count_eta_and_last_unit() -> None:
    out = io.StringIO()
    clock = FakeClock()
    bar = PlainProgress(Console(file=out, width=200), interval=10, clock=clock)
    overall = bar.add_task("lottery", total=4)  # first line: nothing printed before
    for unit in range(4):
        inner = bar.add_task(f"[bold]seed 0 round {unit}[/]", total=100)
        for it in (50, 100):
            clock.now += 1
            bar.update(inner, completed=it, description=f"seed 0 round {unit} val_acc=0.{it}")
        bar.remove_task(inner)
        clock.now += 3
        bar.advance(overall)
    lines = out.getvalue().splitlines()
    # 20 s in all, one line per 10 s at most, plus the line when the whole command completes
    assert 2 <= len(lines) <= 4, lines
    assert lines[0].startswith("lottery 0/4 | elapsed 0:00"), lines
    last = lines[-1]
    assert last.startswith("lottery 4/4 | elapsed 0:20 | done"), last
    assert "last finished: seed 0 round 3 val_acc=0.100" in last, last
    middle = [line for line in lines if "ETA" in line]
    assert middle, lines
    # 2 units in 10 s: 2 more to go -> ETA 0:10
    assert any("lottery 2/4" in line and "ETA 0:10" in line for line in lines), lines
    assert "[bold]" not in out.getvalue()


def test_resumed_work_is_not_in_the_rate() -> None:
    out = io.StringIO()
    clock = FakeClock()
    bar = PlainProgress(Console(file=out, width=200), interval=0, clock=clock)
    overall = bar.add_task("rethink", total=10)
    bar.advance(overall, 8)  # found finished on disk, in no time
    clock.now = 30
    bar.advance(overall)  # one unit in 30 s: one more to go -> 30 s
    assert "rethink 9/10 | elapsed 0:30 | ETA 0:30" in out.getvalue()


def test_captured_lottery_run_prints_progress_lines(tmp_path: Path) -> None:
    """A real `lotto lottery > log`: plain lines, no bar, no escape codes."""
    env = {**os.environ, "LOTTO_PROGRESS_SECONDS": "0", "PYTHONPATH": os.getcwd(),
           "TERM": "dumb"}
    env.pop("FORCE_COLOR", None)
    done = subprocess.run(
        [sys.executable, "-m", "lotto", "lottery", "data.name=digits",
         "train.iterations=20it", "train.eval_every=10it", "lottery.rounds=1",
         "lottery.controls=[]", "device=cpu", f"run.runs_dir={tmp_path}"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    progress = [line for line in lines if line.startswith("lottery ") and "elapsed" in line]
    assert progress, done.stdout
    assert any(line.startswith("lottery 2/2 |") and "done" in line for line in progress)
    assert any("val_acc=" in line for line in progress), progress
    assert "\x1b[" not in done.stdout
