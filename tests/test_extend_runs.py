"""Extending a finished run (lotto.config.EXTENSION_KEYS): more rounds or seeds for a lottery run,
more seeds for rethink, more samples for a search continue the run under the same default name,
reuse every finished unit and give the numbers a run done in one go gives."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from rich.progress import Progress

from lotto.config import default_run_name, load_config
from lotto.errors import LottoError
from lotto.experiments.lottery import run_lottery
from lotto.experiments.rethink import run_rethink
from lotto.runs import RunDir

LOTTERY = ["data.name=digits", "train.iterations=20it", "train.eval_every=10it",
           "lottery.controls=[reinit]", "device=cpu"]
RETHINK = ["data.name=digits", "data.val_size=100", "model.width=0.0625", "train.iterations=4it",
           "train.batch_size=32", "finetune.iterations=2it", "grid.lrs=[0.1]",
           "pruning.kinds=[unstructured]", "pruning.unstructured.modes=[finetune,ticket]",
           "device=cpu"]
KEYS = {"lottery": ["seed", "round", "variant"],
        "rethink": ["pruning", "method", "ratio", "mode", "lr", "seed"]}


def quiet() -> Progress:
    return Progress(disable=True)


def numbers(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    cols = [c for c in frame.columns if c != "seconds"]
    return frame[cols].sort_values(keys).reset_index(drop=True)


def test_more_rounds_and_seeds_extend_a_finished_lottery_run(tmp_path: Path) -> None:
    def cfg(root: Path, *extra: str):
        return load_config("lottery", overrides=[*LOTTERY, f"run.runs_dir={root}", *extra])

    small = cfg(tmp_path / "a", "lottery.rounds=1")
    first = run_lottery(small, progress=quiet())
    assert len(first.metrics) == 3
    big = cfg(tmp_path / "a", "lottery.rounds=2", "lottery.seeds=2")
    assert default_run_name(big, "lottery") == default_run_name(small, "lottery")
    before = {p: p.stat().st_mtime_ns for p in first.run.path.rglob("*.safetensors")}
    extended = run_lottery(big, progress=quiet())
    assert extended.run.path == first.run.path and len(extended.metrics) == 10
    # the finished units were reused: their rows and tensors are untouched
    pd.testing.assert_frame_equal(extended.metrics.iloc[:3], first.metrics)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    once = run_lottery(cfg(tmp_path / "b", "lottery.rounds=2", "lottery.seeds=2"),
                       progress=quiet())
    pd.testing.assert_frame_equal(numbers(extended.metrics, KEYS["lottery"]),
                                  numbers(once.metrics, KEYS["lottery"]))
    # a key that changes what a unit computes still refuses
    with pytest.raises(LottoError, match=r"train\.lr: 0\.0012 -> 0\.1"):
        RunDir.open(cfg(tmp_path / "a", "lottery.rounds=2", "train.lr=0.1",
                        f"run.name={first.run.path.name}"), "lottery")


def test_more_seeds_extend_a_finished_rethink_run(tmp_path: Path) -> None:
    def cfg(root: Path, *extra: str):
        return load_config("rethink", overrides=[*RETHINK, f"run.runs_dir={root}", *extra])

    first = run_rethink(cfg(tmp_path / "a", "grid.seeds=1"), progress=quiet())
    extended = run_rethink(cfg(tmp_path / "a", "grid.seeds=2"), progress=quiet())
    assert extended.run.path == first.run.path
    assert len(first.metrics) == 3 and len(extended.metrics) == 6
    pd.testing.assert_frame_equal(extended.metrics.iloc[:3], first.metrics)
    once = run_rethink(cfg(tmp_path / "b", "grid.seeds=2"), progress=quiet())
    pd.testing.assert_frame_equal(numbers(extended.metrics, KEYS["rethink"]),
                                  numbers(once.metrics, KEYS["rethink"]))
