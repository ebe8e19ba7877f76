"""Summaries notice chance-level and diverged results instead of claiming a finding."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from lotto.cli import app
from lotto.experiments.rethink import grid_table
from lotto.experiments.rethink import summarize as rethink_summary
from lotto.experiments.sanity import warning


def test_warning_at_chance_diverged_and_fine() -> None:
    assert "every one of the 3 trainings" in warning([0.10, 0.11, 0.095], 10)
    assert "NaN/inf" in warning([0.9, 0.8], 10, losses=[0.1, float("nan")])
    assert "reference (dense) network" in warning([0.1, 0.5], 10, reference=0.1)
    assert warning([0.10, 0.5], 10, reference=0.5) is None
    assert warning([0.53], 2) is None and "chance (50.0%" in warning([0.51], 2)


def test_lottery_at_chance_says_so_instead_of_a_finding(tmp_path: Path) -> None:
    """A real run that cannot learn (lr 1e-7, 2 steps): digits stays near 10%."""
    out = CliRunner().invoke(app, [
        "lottery", "data.name=digits", "train.iterations=2it", "train.eval_every=1it",
        "lottery.rounds=1", "train.lr=1e-7", "device=cpu", f"run.runs_dir={tmp_path}"])
    assert out.exit_code == 0, out.output
    (run,) = (tmp_path / "lottery").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["warning"] and "chance (10.0% for 10 classes)" in summary["warning"]
    assert "warning:" in out.output and "stays within 1 point" not in out.output


def test_rethink_summary_warns_on_chance_cells() -> None:
    rows = [{"pruning": p, "method": m, "ratio": r, "lr": 0.1, "mode": mode, "seed": 0,
             "test_accuracy": acc, "train_loss": 2.3, "params_pct": 50.0, "flops_pct": 50.0,
             "epochs": 1.0, "budget_factor": 1.0, "seconds": 1.0}
            for p, m, r, mode in [("none", "none", 0.0, "baseline"),
                                  ("unstructured", "magnitude", 0.9, "finetune"),
                                  ("unstructured", "magnitude", 0.9, "scratch_e")]
            for acc in [0.1]]
    frame = pd.DataFrame(rows)
    assert "every one of the 3 cells" in rethink_summary(grid_table(frame), frame, 10)["warning"]
    frame["test_accuracy"] = [0.9, 0.85, 0.8]
    assert rethink_summary(grid_table(frame), frame, 10)["warning"] is None
