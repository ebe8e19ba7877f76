"""Which runs `lotto bench --calibrate RUNS --as NAME` reads, and how: bench runs only, their
committed metrics rows only; `--as` alone is refused."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from report_runs import assert_user_error, real_runs
from typer.testing import CliRunner

from lotto.cli import app
from lotto.experiments.bench import collect_measurements

runner = CliRunner()
FAST = ["measure.min_run_time=0.02", "measure.warmup=1"]


def test_a_run_of_another_command_is_one_line(tmp_path: Path) -> None:
    lottery = real_runs() / "lottery" / "half"
    result = runner.invoke(app, ["bench", "--calibrate", str(lottery), "--as", "mine",
                                 "--runs-dir", str(tmp_path)])
    assert_user_error(result, "--calibrate", "a lottery run, not a bench run")
    assert not (tmp_path / "devices").exists()


def test_as_without_calibrate_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "--device", "pixel1", "--model", "mobilenet_v3_small",
                                 "--as", "mine", "--runs-dir", str(tmp_path)])
    assert_user_error(result, "--as NAME", "--calibrate")
    assert not (tmp_path / "bench").exists()


def test_rows_past_the_committed_length_are_not_read(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "--device", "cpu", "--model", "mobilenet_v3_small",
                                 "--resolution", "32", "--width-mult", "0.35", "--runs-dir",
                                 str(tmp_path), "--name", "m", *FAST])
    assert result.exit_code == 0, result.output
    run = tmp_path / "bench" / "m"
    (measured,) = collect_measurements(str(run))[1]
    # a whole row appended after the last commit (a kill before .metrics.csv.length was
    # rewritten): the same network, 1000x slower; it is no finished measurement
    rows = pd.read_csv(run / "metrics.csv")
    bogus = rows[rows.source == "measured"].copy()
    bogus["latency_ms"] *= 1000
    with open(run / "metrics.csv", "a") as f:
        bogus.to_csv(f, header=False, index=False)
    (again,) = collect_measurements(str(run))[1]
    assert again["latency_ms"] == pytest.approx(measured["latency_ms"])
    assert (run / ".metrics.csv.length").is_file()
