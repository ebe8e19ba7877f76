"""`lotto runs`: every run with its status (complete / incomplete and how far / failed), the
config keys that differ, a headline; --json; bad inputs are one line and exit status 2."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from report_runs import assert_user_error, copy_run, real_runs
from rich.console import Console
from typer.testing import CliRunner

from lotto.cli import app
from lotto.report.discover import HIDDEN_KEYS, lottery_units, open_run, rethink_cells

NAMES = ("half", "fifth", "fifth-s1", "tiny", "small", "rl-run", "random-run", "adapt")


@pytest.fixture(scope="module")
def root() -> Path:
    return real_runs()


def invoke(*args: str):
    return CliRunner().invoke(app, ["runs", *args])


def listing(*args: str) -> dict[str, dict]:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    return {r["name"]: r for r in json.loads(result.stdout)}


def test_lists_every_run_complete_with_its_progress(root: Path) -> None:
    runs = listing("--runs-dir", str(root))
    assert set(runs) == set(NAMES)
    assert {r["status"] for r in runs.values()} == {"complete"}
    half = runs["half"]
    assert half["command"] == "lottery" and half["progress"] == "rounds 2/2"
    assert (half["done"], half["total"]) == (15, 15)  # 3 seeds x (dense + 2 rounds x 2 variants)
    assert runs["fifth"]["total"] == 5
    assert runs["tiny"]["progress"] == "cells 12/12"  # 2 seeds x (baseline + 5 modes)
    assert runs["small"]["progress"] == "steps 5"
    assert runs["rl-run"]["progress"] == "samples 5/5"
    # the lottery runs differ in prune rate, seeds and seed: those keys are its columns
    assert set(half["config"]) == {"lottery.prune_rate", "lottery.seeds", "seed"}
    assert half["config"]["lottery.prune_rate"] == 0.5
    assert set(runs["rl-run"]["config"]) == {"search.controller"}
    assert "dense" in half["headline"] and "%" in half["headline"]
    assert "mobilenet_v3_small" in runs["small"]["headline"]


def test_table_shows_names_status_and_differing_keys(root: Path) -> None:
    result = invoke("--runs-dir", str(root))
    assert result.exit_code == 0, result.output
    for needle in (*NAMES, "complete", "rounds 2/2", "cells 12/12", "lottery.prune_rate",
                   "search.controller", "8 runs (8 complete)"):
        assert needle in result.output, needle
    assert "parallel.workers" not in result.output  # placement keys never count as differing


def test_incomplete_and_failed_runs(root: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    half = copy_run(root / "lottery" / "half", runs)
    frame = pd.read_csv(half / "metrics.csv")
    keep = (frame["round"] == 0) | ((frame["round"] == 1) & (frame["seed"] == 0))
    frame[keep].to_csv(half / "metrics.csv", index=False)
    (half / ".metrics.csv.length").unlink()
    tiny = copy_run(root / "rethink" / "tiny", runs)
    pd.read_csv(tiny / "metrics.csv").head(7).to_csv(tiny / "metrics.csv", index=False)
    (tiny / ".metrics.csv.length").unlink()
    failed = copy_run(root / "lottery" / "fifth", runs)
    pd.DataFrame([{"seed": 0, "round": 2, "variant": "reinit", "status": "failed",
                   "error": "RuntimeError: boom"}]).to_csv(failed / "failures.csv", index=False)
    small = copy_run(root / "build-v3" / "small", runs)
    (small / "summary.json").unlink()  # killed before the end
    search = copy_run(root / "search" / "rl-run", runs)
    pd.read_csv(search / "metrics.csv").head(3).to_csv(search / "metrics.csv", index=False)
    found = listing("--runs-dir", str(runs))
    assert found["rl-run"]["status"] == "incomplete"
    assert found["rl-run"]["progress"] == "samples 3/5"
    assert found["half"]["status"] == "incomplete"
    assert found["half"]["progress"] == "rounds 0/2" and found["half"]["done"] == 5
    assert found["tiny"]["status"] == "incomplete" and found["tiny"]["progress"] == "cells 7/12"
    assert found["fifth"]["status"] == "failed" and found["fifth"]["failures"] == 1
    assert "1 failed/skipped" in found["fifth"]["progress"]
    assert found["small"]["status"] == "incomplete"


def test_partial_last_line_is_not_counted(root: Path, tmp_path: Path) -> None:
    """A row cut by a kill (past the committed length) is no finished unit, as for MetricsLog."""
    half = copy_run(root / "lottery" / "half", tmp_path / "runs")
    with open(half / "metrics.csv", "a") as f:
        f.write("2,ticket,9,0.1,10.0")  # no newline: a partial append
    assert open_run(half).done == 15


def test_uncommitted_whole_rows_are_not_read(root: Path, tmp_path: Path) -> None:
    """Whole rows past `.metrics.csv.length` (appended, then killed before the length file was
    rewritten) are no finished units: not for `lotto runs`, not for `lotto compare`."""
    half = copy_run(root / "lottery" / "half", tmp_path / "runs")
    lines = (half / "metrics.csv").read_bytes().splitlines(keepends=True)
    assert len(lines) == 1 + 15
    (half / "metrics.csv").write_bytes(b"".join(lines[:-1]))
    (half / ".metrics.csv.length").write_text(f"{(half / 'metrics.csv').stat().st_size}\n")
    with open(half / "metrics.csv", "ab") as f:
        f.write(lines[-1])  # a whole line, never committed
    run = open_run(half)
    assert (run.done, run.status, len(run.rows)) == (14, "incomplete", 14)
    from lotto.report.aggregate import run_frame

    assert len(run_frame(run)) == 14
    assert listing(str(half))["half"]["progress"] == "rounds 1/2"


def test_an_unreadable_config_hides_no_other_run(root: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    copy_run(root / "lottery" / "half", runs)
    bad = copy_run(root / "lottery" / "fifth", runs)
    (bad / "config.yaml").write_text("seed: [unclosed\n")
    odd = copy_run(root / "search" / "rl-run", runs)
    (odd / "config.yaml").write_text("search: {samples: many}\n")  # not a search config
    for args in (("--runs-dir", str(runs)), (str(runs / "*" / "*"),)):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert "half" in result.output and "1 runs (1 complete)" in result.output
        warnings = result.stderr.strip().splitlines()
        assert len(warnings) == 2 and all("warning: skipped" in w for w in warnings), warnings
        assert str(bad) in result.stderr and str(odd) in result.stderr
    assert set(listing("--runs-dir", str(runs))) == {"half"}
    assert_user_error(invoke(str(bad)), "config.yaml is unreadable")  # named: must read


def test_netadapt_headline_counts_steps_and_quotes_the_long_fine_tune(root: Path,
                                                                       tmp_path: Path) -> None:
    adapt = root / "netadapt" / "adapt"  # seed + 2 chosen steps, long_ft val 0.79
    assert open_run(adapt).headline == ("latency 16.00 ms after 2 steps, long fine-tune "
                                        "val_accuracy 79.00%")
    copy = copy_run(adapt, tmp_path / "runs")
    frame = pd.read_csv(copy / "metrics.csv")
    frame["test_accuracy"] = None
    frame.loc[frame.kind == "long_ft", "test_accuracy"] = 0.785
    frame.to_csv(copy / "metrics.csv", index=False)
    (copy / ".metrics.csv.length").unlink(missing_ok=True)
    assert open_run(copy).headline.endswith("long fine-tune test_accuracy 78.50%")
    frame[frame.kind != "long_ft"].to_csv(copy / "metrics.csv", index=False)  # not run yet
    assert open_run(copy).headline == ("latency 16.00 ms after 2 steps, short fine-tune "
                                       "val_accuracy 76.00%")


def test_bench_runs_made_with_arch_show_no_preset(tmp_path: Path) -> None:
    from lotto.arch import preset

    runs = tmp_path / "runs"
    spec = tmp_path / "mynet.yaml"
    preset("mnasnet_a1", 0.5, 128).replace(name="mynet").save(spec)
    for args in (["--arch", str(spec), "--name", "a"],
                 ["--model", "mobilenet_v3_small", "--name", "b"]):
        result = CliRunner().invoke(app, ["bench", "--device", "pixel1", "--runs-dir", str(runs),
                                          *args])
        assert result.exit_code == 0, result.output
    found = listing("--runs-dir", str(runs))
    assert found["a"]["config"]["model"] is None  # not the default preset it never used
    assert found["a"]["config"]["arch"] == str(spec)
    assert found["b"]["config"]["model"] == "mobilenet_v3_small"
    assert found["a"]["headline"].startswith("mynet on pixel1")
    table = invoke("--runs-dir", str(runs)).output
    assert "mobilenet_v3_large" not in table


def test_headers_do_not_wrap_and_keys_are_capped(root: Path, tmp_path: Path,
                                                  monkeypatch) -> None:
    runs = tmp_path / "runs"
    keys = {"train": {"lr": 0.1, "batch_size": 60, "weight_decay": 0.0},
            "data": {"val_size": 5000}, "lottery": {"prune_rate": 0.2},
            "model": {"name": "lenet300"}}
    for i, name in enumerate(("one", "two")):
        run = copy_run(root / "lottery" / "fifth", runs, name)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        for section, values in keys.items():
            for k, v in values.items():
                cfg.setdefault(section, {})[k] = v if i == 0 else (
                    v + 1 if isinstance(v, (int, float)) else f"{v}x")
        (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    keys = ("data.val_size", "lottery.prune_rate", "model.name", "train.lr",
            "train.batch_size", "train.weight_decay")
    result = invoke("--runs-dir", str(runs))  # not a terminal: 140 columns
    assert result.exit_code == 0, result.output
    assert_whole(result.output, keys, 4)
    module = sys.modules["lotto.cli.runs"]
    for width, columns in ((100, 1), (80, 0)):  # narrower terminals: fewer key columns
        buffer = io.StringIO()
        monkeypatch.setattr(module, "console", Console(width=width, file=buffer))
        assert invoke("--runs-dir", str(runs)).exit_code == 0
        assert_whole(buffer.getvalue(), keys, columns)


def assert_whole(output: str, keys: tuple[str, ...], columns: int) -> None:
    """`columns` of the differing keys on the header line, each whole (no word cut in two),
    the others named on one line below; every status whole."""
    lines = output.splitlines()
    header = next(line for line in lines if " name " in line)
    assert header.split()[:4] == ["name", "status", "progress", "started"], header
    assert header.split()[-1] == "headline", header
    shown = [k for k in keys if k in header]
    assert len(shown) == len(header.split()) - 5 == columns, (header, output)
    more = [line for line in lines if "more config keys differ" in line]
    assert len(more) == 1 and f"{len(keys) - columns} more" in more[0], output
    assert sum(" complete " in line for line in lines) == 2, output


def test_command_filter_and_targets(root: Path) -> None:
    assert set(listing("--runs-dir", str(root), "--command", "rethink")) == {"tiny"}
    assert set(listing(str(root / "lottery" / "*"))) == {"half", "fifth", "fifth-s1"}


def test_bad_inputs_are_one_line(root: Path, tmp_path: Path) -> None:
    assert_user_error(invoke("--runs-dir", str(root), "--command", "nope"), "--command")
    assert_user_error(invoke(str(tmp_path / "nothing-*")), "no run directory matches")
    (tmp_path / "lottery" / "stray").mkdir(parents=True)
    assert_user_error(invoke(str(tmp_path / "lottery" / "stray")), "not a run directory")
    empty = invoke("--runs-dir", str(tmp_path / "none"))
    assert empty.exit_code == 0 and "no runs under" in empty.output


def test_expected_units_follow_the_config() -> None:
    units, rounds = lottery_units({"seed": 3, "lottery": {"rounds": 2, "seeds": 2,
                                                          "controls": ["reinit", "random_mask"]}})
    assert rounds == 2 and len(units) == 2 * (1 + 2 * 3) and (4, 0, "ticket") in units
    cfg = {"train": {"lr": 0.1}, "grid": {"lrs": None, "seeds": 2},
           "pruning": {"kinds": ["structured", "unstructured"],
                       "structured": {"methods": ["l1-filter", "slimming"], "ratios": [0.5],
                                      "modes": ["finetune", "scratch_e"]},
                       "unstructured": {"methods": ["magnitude"], "ratios": [0.5, 0.9],
                                        "modes": ["ticket"]}}}
    # 2 seeds x 2 lrs x (dense + slimming baselines + 2 x 2 structured + 2 x 1 unstructured)
    assert rethink_cells(cfg) == 2 * 2 * (2 + 4 + 2)


def test_hidden_keys_are_the_placement_keys() -> None:
    from lotto.config import PLACEMENT_KEYS

    assert HIDDEN_KEYS == PLACEMENT_KEYS
