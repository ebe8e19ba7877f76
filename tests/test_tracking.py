"""run.tensorboard=true: the metrics rows of a real run, mirrored to TensorBoard event files."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.progress import Progress

from lotto.config import load_config
from lotto.experiments.lottery import run_lottery

pytest.importorskip("tensorboard")  # the optional extra: lotto[tensorboard]
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

ARGS = ["data.name=digits", "train.iterations=20it", "train.eval_every=10it", "lottery.rounds=1",
        "lottery.controls=[]", "device=cpu"]


def test_tensorboard_mirrors_the_metrics_rows(tmp_path: Path) -> None:
    cfg = load_config("lottery", overrides=[*ARGS, f"run.runs_dir={tmp_path}",
                                            "run.tensorboard=true"])
    result = run_lottery(cfg, progress=Progress(disable=True))
    events = EventAccumulator(str(result.run.path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for row in result.metrics.itertuples():
        (point,) = events.Scalars(f"metrics/seed{row.seed}/{row.variant}/test_accuracy")[
            row.round:row.round + 1]
        assert point.step == row.round
        assert point.value == pytest.approx(row.test_accuracy, abs=1e-6)
    curve = events.Scalars("curves/seed0/round1/ticket/val_accuracy")
    assert [p.step for p in curve] == [0, 10, 20]
    assert "failures" not in " ".join(tags)


def test_off_by_default(tmp_path: Path) -> None:
    cfg = load_config("lottery", overrides=[*ARGS, f"run.runs_dir={tmp_path}"])
    result = run_lottery(cfg, progress=Progress(disable=True))
    assert not (result.run.path / "tensorboard").exists()
