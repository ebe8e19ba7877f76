"""`lotto compare`: one frame (differing config keys as columns), aggregation over seeds checked
by hand, each command's table and figure, report.html, mixed commands, bad inputs."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from conftest import METRICS_COLUMNS
from report_runs import assert_user_error, copy_run, real_runs
from typer.testing import CliRunner

from lotto.cli import app


@pytest.fixture(scope="module")
def root() -> Path:
    return real_runs()


def compare(*args: str):
    result = CliRunner().invoke(app, ["compare", *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def assert_figure(out: Path, name: str) -> None:
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / f"{name}.svg").read_text().lstrip().startswith("<?xml")


def by_hand(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, sample std and the 95% Student-t interval of the mean."""
    mean, std = statistics.mean(values), statistics.stdev(values)
    half = scipy.stats.t.ppf(0.975, len(values) - 1) * std / len(values) ** 0.5
    return mean, std, mean - half, mean + half


def test_lottery_frame_aggregation_figure_report(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = compare(str(root / "lottery" / "half"), str(root / "lottery" / "fifth"),
                     "--out", str(out))
    assert "test acc % (ES)" in result.output and "half" in result.output
    frame = pd.read_parquet(out / "compare.parquet")
    assert list(frame.columns[:3]) == ["command", "run", "label"]
    assert {"lottery.prune_rate", "lottery.seeds", *METRICS_COLUMNS} <= set(frame.columns)
    assert len(frame) == 15 + 5
    assert set(frame[frame.run == "half"]["lottery.prune_rate"]) == {0.5}
    # aggregation against numbers computed by hand from the run's own metrics.csv
    raw = pd.read_csv(root / "lottery" / "half" / "metrics.csv")
    values = raw[(raw["round"] == 1) & (raw.variant == "ticket")].test_accuracy.tolist()
    assert len(values) == 3
    mean, std, lo, hi = by_hand(values)
    table = pd.read_csv(out / "lottery.csv")
    row = table[(table.label == "half") & (table["round"] == 1) & (table.variant == "ticket")]
    assert row.seeds.item() == 3
    assert row.test_accuracy.item() == pytest.approx(mean)
    assert row.test_accuracy_std.item() == pytest.approx(std)
    assert (row.test_accuracy_lo.item(), row.test_accuracy_hi.item()) == pytest.approx((lo, hi))
    one = table[(table.label == "fifth") & (table["round"] == 2) & (table.variant == "reinit")]
    assert one.seeds.item() == 1 and one.test_accuracy_std.item() == 0
    assert np.isnan(one.test_accuracy_lo.item())  # no interval under 3 seeds
    assert_figure(out, "lottery")
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    for name in ("half", "fifth"):
        assert f">{name}<" in html
    assert "| run |" in (out / "lottery.md").read_text()


def test_by_pools_runs_of_one_label_as_seeds(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "by"
    compare(str(root / "lottery" / "fifth"), str(root / "lottery" / "fifth-s1"),
            str(root / "lottery" / "half"), "--by", "prune_rate", "--out", str(out))
    table = pd.read_csv(out / "lottery.csv")
    assert set(table.label) == {"prune_rate=0.2", "prune_rate=0.5"}
    dense = table[(table.label == "prune_rate=0.2") & (table["round"] == 0)]
    values = [pd.read_csv(root / "lottery" / n / "metrics.csv").query("round == 0")
              .test_accuracy.item() for n in ("fifth", "fifth-s1")]
    assert dense.seeds.item() == 2
    assert dense.test_accuracy.item() == pytest.approx(statistics.mean(values))
    assert dense.test_accuracy_std.item() == pytest.approx(statistics.stdev(values))


def test_rethink_paper_table_and_bars(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "rethink"
    result = compare(str(root / "rethink" / "tiny"), "--out", str(out))
    for head in ("fine-tune", "scratch-E", "scratch-B", "ticket", "reinit", "unpruned"):
        assert head in result.output, head
    table = pd.read_csv(out / "rethink.csv")
    assert set(table["mode"]) == {"baseline", "finetune", "scratch_e", "scratch_b", "ticket",
                                  "reinit"}
    assert (table.seeds == 2).all()
    assert_figure(out, "rethink")


def test_search_pareto_fronts_and_target(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "search"
    compare(str(root / "search" / "*"), "--by", "controller", "--out", str(out))
    table = pd.read_csv(out / "search.csv").set_index("label")
    rl, rnd = table.loc["controller=rl"], table.loc["controller=random"]
    assert rl.best_accuracy == 0.85 and rl.best_latency_ms == 90
    assert (rl.pareto_points, rnd.pareto_points) == (3, 4)
    assert rl.target_ms == 75
    assert (rl.best_accuracy_within_target, rnd.best_accuracy_within_target) == (0.80, 0.65)
    assert_figure(out, "search")
    html = (out / "report.html").read_text()
    assert "rl-run" in html and "random-run" in html


def test_netadapt_trajectory_and_baselines(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "netadapt"
    compare(str(root / "netadapt" / "adapt"), "--out", str(out))
    row = pd.read_csv(out / "netadapt.csv").iloc[0]
    assert row.steps == 2 and row.seed_latency_ms == 20 and row.final_latency_ms == 16
    assert row.final_accuracy == 0.76 and row.long_ft_accuracy == 0.79
    assert row.scratch_accuracy == 0.77 and row.baseline_accuracy == 0.74
    assert "multiplier baseline" in (out / "netadapt.md").read_text()
    assert_figure(out, "netadapt")


def test_build_v3_latency_vs_madds(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "b3"
    compare(str(root / "build-v3" / "small"), "--out", str(out))
    table = pd.read_csv(out / "build-v3.csv")
    assert list(table.change) == ["seed", "hswish", "se", "stem16", "efficient_last_stage"]
    assert "latency_ms_pixel1" in table.columns
    assert_figure(out, "build-v3")


def test_mixed_commands_get_one_section_each(root: Path, tmp_path: Path) -> None:
    """Runs of different commands are never averaged together: each command's table is the one
    it gets alone; a shared accuracy-vs-latency figure where both have those columns."""
    out, alone = tmp_path / "mixed", tmp_path / "alone"
    compare(str(root / "lottery" / "fifth"), str(root / "rethink" / "tiny"), "--out", str(out))
    compare(str(root / "lottery" / "fifth"), "--out", str(alone / "lottery"))
    compare(str(root / "rethink" / "tiny"), "--out", str(alone / "rethink"))
    for command in ("lottery", "rethink"):
        mixed = pd.read_csv(out / f"{command}.csv").dropna(axis=1, how="all")
        single = pd.read_csv(alone / command / f"{command}.csv").dropna(axis=1, how="all")
        pd.testing.assert_frame_equal(mixed, single)
        assert_figure(out, command)
    assert not (out / "shared.csv").exists()  # lottery and rethink share no latency
    html = (out / "report.html").read_text()
    assert "<h2>lottery</h2>" in html and "<h2>rethink</h2>" in html
    # every row of both in the frame, each with its own columns
    frame = pd.read_parquet(out / "compare.parquet")
    assert set(frame.command) == {"lottery", "rethink"} and {"variant", "mode"} <= set(frame)

    out = tmp_path / "mixed2"
    result = compare(str(root / "netadapt" / "adapt"), str(root / "search" / "rl-run"),
                     "--out", str(out))
    assert "netadapt" in result.output and "search" in result.output
    assert pd.read_csv(out / "netadapt.csv").iloc[0].final_accuracy == 0.76
    assert pd.read_csv(out / "search.csv").iloc[0].best_accuracy == 0.85
    shared = pd.read_csv(out / "shared.csv").set_index("label")
    assert shared.loc["adapt"].best_accuracy == 0.80 and shared.loc["rl-run"].best_latency_ms == 90
    assert_figure(out, "shared")


def test_same_name_in_two_folders_gets_two_labels(root: Path, tmp_path: Path) -> None:
    a = copy_run(root / "lottery" / "fifth", tmp_path / "a" / "runs", "x")
    b = copy_run(root / "lottery" / "half", tmp_path / "b" / "runs", "x")
    out = tmp_path / "out"
    result = compare(str(a), str(b), "--out", str(out))
    table = pd.read_csv(out / "lottery.csv")
    assert set(table.label) == {"a/runs/lottery/x", "b/runs/lottery/x"}, set(table.label)
    dense = table[table["round"] == 0].set_index("label").test_accuracy
    own = [pd.read_csv(r / "metrics.csv").query("round == 0").test_accuracy.mean() for r in (a, b)]
    assert dense.to_dict() == pytest.approx(dict(zip(["a/runs/lottery/x", "b/runs/lottery/x"],
                                                     own)))
    assert own[0] != own[1]
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs.run) == ["a/runs/lottery/x", "b/runs/lottery/x"]
    assert "a/runs/lottery/x" in result.output


def test_duplicate_seeds_are_no_replicates(root: Path, tmp_path: Path) -> None:
    copy = copy_run(root / "lottery" / "fifth", tmp_path / "runs", "fifth-copy")
    result = CliRunner().invoke(app, ["compare", str(root / "lottery" / "fifth"), str(copy),
                                      "--by", "prune_rate"])
    assert_user_error(result, "fifth-copy", "both have seed 0", "prune_rate=0.2")
    # a different seed under the same label pools; without --by each run is its own label
    compare(str(root / "lottery" / "fifth"), str(root / "lottery" / "fifth-s1"), "--by",
            "prune_rate")
    compare(str(root / "lottery" / "fifth"), str(copy))


def test_rethink_table_has_the_scratch_b_multiplier(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "rethink"
    compare(str(root / "rethink" / "tiny"), "--out", str(out))
    factors = pd.read_csv(out / "rethink.csv").query("mode == 'scratch_b'").budget_factor
    html = (out / "report.html").read_text()
    assert "scratch-B ×" in html and "scratch-B ×" in (out / "rethink.md").read_text()
    for f in factors:
        assert f"<td>{f:.1f}</td>" in html


def test_bench_keeps_networks_of_one_name_apart(tmp_path: Path) -> None:
    """mobilenet_v3_small at 96 px and at 224 px are two networks, even pooled by --by."""
    runs = tmp_path / "runs"
    for px in ("96", "224"):
        result = CliRunner().invoke(app, ["bench", "--device", "pixel1", "--model",
                                          "mobilenet_v3_small", "--resolution", px,
                                          "--runs-dir", str(runs), "--name", f"r{px}"])
        assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    compare(str(runs / "bench" / "*"), "--by", "device", "--out", str(out))
    table = pd.read_csv(out / "bench.csv")
    table = table[table.kind == "bench"].sort_values("resolution")
    assert list(table.resolution) == [96, 224] and (table.seeds == 1).all()
    own = [pd.read_csv(runs / "bench" / f"r{px}" / "metrics.csv").query("kind == 'bench'")
           .latency_ms.item() for px in ("96", "224")]
    assert list(table.latency_ms) == pytest.approx(own) and own[0] < own[1]


def test_without_out_nothing_is_written(root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = compare(str(root / "lottery" / "fifth"))
    assert "--out DIR" in result.output and list(tmp_path.iterdir()) == []


def test_bad_inputs_are_one_line(root: Path, tmp_path: Path) -> None:
    run = CliRunner().invoke
    assert_user_error(run(app, ["compare", str(tmp_path / "runs" / "x*")]),
                      "no run directory matches")
    (tmp_path / "lottery" / "notarun").mkdir(parents=True)
    assert_user_error(run(app, ["compare", str(tmp_path / "lottery" / "notarun")]),
                      "not a run directory")
    assert_user_error(run(app, ["compare", str(tmp_path / "missing")]), "no such run directory")
    assert_user_error(run(app, ["compare", str(root / "lottery" / "half"), "--by", "nokey"]),
                      "--by nokey", "not a config key")
    # a glob under --runs-dir: relative names work
    ok = run(app, ["compare", "lottery/fifth*", "--runs-dir", str(root)])
    assert ok.exit_code == 0 and "fifth-s1" in ok.output
    # --out: an existing file, or a run directory (its own lottery.png would be overwritten)
    (tmp_path / "file.txt").write_text("mine")
    assert_user_error(run(app, ["compare", str(root / "lottery" / "half"), "--out",
                                str(tmp_path / "file.txt")]), "--out", "not a folder")
    assert (tmp_path / "file.txt").read_text() == "mine"
    half = copy_run(root / "lottery" / "half", tmp_path / "runs")
    figure = (half / "lottery.png").read_bytes()
    for out in (half, half / "report"):
        assert_user_error(run(app, ["compare", str(half), "--out", str(out)]),
                          "inside the run directory")
    assert (half / "lottery.png").read_bytes() == figure and not (half / "report").exists()
