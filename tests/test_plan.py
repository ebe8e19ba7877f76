"""`--dry-run` (lotto.experiments.plan): the trainings a command would run, what a past run
would reuse, a time estimate; no run directory is created."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from lotto.cli import app
from lotto.config import load_config
from lotto.experiments.plan import plan_lottery, plan_rethink

LOTTERY = ["data.name=digits", "train.iterations=20it", "train.eval_every=10it",
           "lottery.rounds=1", "lottery.controls=[reinit]", "device=cpu"]
RETHINK = ["data.name=digits", "data.val_size=100", "model.width=0.0625",
           "train.iterations=6it", "train.batch_size=32", "finetune.iterations=2it",
           "grid.seeds=1", "grid.lrs=[0.1]", "pruning.unstructured.modes=[finetune,ticket]",
           "pruning.structured.modes=[finetune,scratch_b]", "device=cpu"]


def dry(command: str, *args: str) -> str:
    out = CliRunner().invoke(app, [command, *args, "--dry-run"])
    assert out.exit_code == 0, (out.output, out.exception)
    return out.output


def test_lottery_dry_run_creates_nothing_then_counts_what_a_run_left(tmp_path: Path) -> None:
    tmp_path = tmp_path / "runs"
    args = [*LOTTERY, f"run.runs_dir={tmp_path}"]
    text = dry("lottery", *args)
    assert not tmp_path.exists()  # no run directory, not even the root
    assert "prune_rate: 0.2" in text  # the resolved config
    # seed 0: round 0 ticket; round 1 ticket + reinit
    assert "trainings: 3 planned, 0 reused, 3 to train (60 steps, 9 evaluations" in text
    assert "(new)" in text
    assert re.search(r"time: about \d+ s", text), text
    run = CliRunner().invoke(app, ["lottery", *args])
    assert run.exit_code == 0, run.output
    again = dry("lottery", *args)
    assert "trainings: 3 planned, 3 reused, 0 to train" in again
    assert "(exists: 3 of 3 trainings finished there are reused)" in again
    name = next((tmp_path / "lottery").iterdir()).name
    changed = dry("lottery", *args, "train.lr=0.1", f"--name={name}")
    assert "cannot be resumed" in changed and "train.lr: 0.0012 -> 0.1" in changed


def test_rethink_plan_counts_the_grid(tmp_path: Path) -> None:
    tmp_path = tmp_path / "runs"
    cfg = load_config("rethink", overrides=[*RETHINK, f"run.runs_dir={tmp_path}"])
    plan = plan_rethink(cfg)
    modes = [t.key["mode"] for t in plan.trainings]
    # one baseline; structured l1-filter 0.5: finetune, scratch_b; unstructured 0.9: 2 modes
    assert modes == ["baseline", "finetune", "scratch_b", "finetune", "ticket"]
    steps = {(t.key["pruning"], t.key["mode"]): t.steps for t in plan.trainings}
    assert steps[("none", "baseline")] == 6 and steps[("structured", "finetune")] == 2
    assert steps[("structured", "scratch_b")] == 24  # 6 x 1 / (1 - 0.5)^2
    assert plan.step_seconds > 0 and plan.eval_seconds > 0 and plan.seconds() > 0
    assert not tmp_path.exists()


def test_estimate_scales_with_the_work(tmp_path: Path) -> None:
    small = plan_lottery(load_config("lottery", overrides=[*LOTTERY, f"run.runs_dir={tmp_path}"]))
    big = plan_lottery(load_config("lottery", overrides=[*LOTTERY, "lottery.rounds=3",
                                                         f"run.runs_dir={tmp_path}"]))
    # the same machine speed: compare the work only
    big.step_seconds, big.eval_seconds = small.step_seconds, small.eval_seconds
    big.fixed_seconds = small.fixed_seconds
    assert len(big.trainings) == 7 and len(small.trainings) == 3
    assert abs(big.seconds() / small.seconds() - 7 / 3) < 1e-9
