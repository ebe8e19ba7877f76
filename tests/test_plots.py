"""The shared plotting module and the statistics under it: t-intervals and aggregation
against hand-computed numbers, Pareto fronts, the figures (also written by single runs)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from report_runs import real_runs

from lotto.report import aggregate, plots
from lotto.report.aggregate import (
    Comparison,
    cell,
    pareto_front,
    parse_target,
    t_interval,
)
from lotto.report.aggregate import (
    aggregate as agg,
)

PNG = b"\x89PNG\r\n\x1a\n"


def test_t_interval_by_hand() -> None:
    # [1, 2, 3]: mean 2, s = 1, s/sqrt(3) = 0.57735, t(0.975, df 2) = 4.302653
    assert t_interval([1.0, 2.0, 3.0]) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
    x = np.array([0.61, 0.64, 0.70, 0.72])
    sem = statistics.stdev(x) / math.sqrt(len(x))
    expected = scipy.stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sem)
    assert t_interval(x) == pytest.approx(tuple(expected))
    lo, hi = t_interval(x)
    assert lo < x.min() and hi > x.max()  # at 4 seeds wider than [min, max], as it must be
    assert all(math.isnan(v) for v in t_interval([0.5, 0.6]))  # < 3 seeds: no interval
    assert t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert t_interval([0.5, float("nan"), 0.7, 0.9]) == t_interval([0.5, 0.7, 0.9])


def test_t_interval_covers_the_mean_95_percent_of_the_time() -> None:
    """What the interval is for: at 3 seeds it covers the true mean in 95% of experiments (a
    percentile bootstrap, about [min, max] at 3 values, covers it about 75% of the time)."""
    rng = np.random.default_rng(0)
    trials = rng.normal(0.9, 0.01, size=(4000, 3))
    hits = sum(lo <= 0.9 <= hi for lo, hi in map(t_interval, trials))
    assert 0.94 < hits / len(trials) < 0.96
    span = np.mean([(x.min() <= 0.9 <= x.max()) for x in trials])
    assert span < 0.8  # [min, max] of 3 misses one time in four


def test_aggregate_mean_std_seeds_by_hand() -> None:
    frame = pd.DataFrame({
        "label": ["a"] * 4 + ["b"],
        "round": [0, 0, 0, 1, 0],
        "seed": [0, 1, 2, 0, 0],
        "acc": [0.5, 0.7, 0.9, 0.4, 0.8],
    })
    table = agg(frame, ["round"], ["acc", "missing"]).set_index(["label", "round"])
    a0 = table.loc[("a", 0)]
    assert a0.acc == pytest.approx(0.7) and a0.seeds == 3
    assert a0.acc_std == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))
    assert (a0.acc_lo, a0.acc_hi) == pytest.approx(t_interval([0.5, 0.7, 0.9]))
    a1 = table.loc[("a", 1)]
    assert a1.seeds == 1 and a1.acc_std == 0 and math.isnan(a1.acc_lo)
    assert "missing" not in table.columns  # columns a run does not have are skipped
    row = {"acc": 0.7, "acc_std": 0.2, "acc_lo": 0.5, "acc_hi": 0.9, "seeds": 3}
    assert cell(row, "acc", 100) == "70.00 ± 20.00 [50.00, 90.00]"
    assert cell({"acc": 0.7, "acc_std": 0.0, "acc_lo": float("nan"), "seeds": 1}, "acc", 100) \
        == "70.00"


def test_pareto_front_and_targets() -> None:
    lat = [60, 70, 65, 90, 80, float("nan")]
    acc = [0.70, 0.80, 0.60, 0.85, 0.79, 0.99]
    assert pareto_front(lat, acc) == [0, 1, 3]
    assert parse_target(75) == 75.0 and parse_target("12ms") == 12.0
    assert parse_target("0.8x", 20.0) == pytest.approx(16.0)
    assert parse_target("0.8x") is None and parse_target(None) is None


def test_single_runs_write_their_figure() -> None:
    root = real_runs()
    for path in (root / "lottery" / "half" / "lottery.png", root / "rethink" / "tiny" /
                 "rethink.png", root / "build-v3" / "small" / "build_v3.png"):
        assert path.read_bytes()[:8] == PNG, path


def test_lottery_figure_lines_and_bands() -> None:
    metrics = pd.read_csv(real_runs() / "lottery" / "half" / "metrics.csv")
    fig = plots.run_figure("lottery", metrics, "half")
    axes = fig.get_axes()
    assert len(axes) == 3
    for ax in axes:
        assert [line.get_label() for line in ax.get_lines()] == ["ticket", "reinit"]
        assert ax.get_xscale() == "log"
    assert len(axes[0].collections) == 2  # a band per variant (3 seeds)
    ticket = axes[0].get_lines()[0]
    # rounds 0..2: 100%, then 50% of the hidden layers (the output layer prunes at half rate)
    assert list(ticket.get_xdata())[0] == 100 and len(ticket.get_xdata()) == 3
    dense = metrics[metrics["round"] == 0].early_stop_test_accuracy.mean() * 100
    assert ticket.get_ydata()[0] == pytest.approx(dense)


def test_save_is_atomic_and_svg_deterministic(tmp_path: Path) -> None:
    metrics = pd.read_csv(real_runs() / "lottery" / "fifth" / "metrics.csv")
    fig = plots.run_figure("lottery", metrics, "fifth")
    plots.save(fig, [tmp_path / "a.svg", tmp_path / "a.png"])
    first = (tmp_path / "a.svg").read_bytes()
    plots.save(fig, [tmp_path / "a.svg"])
    assert (tmp_path / "a.svg").read_bytes() == first
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG
    assert not list(tmp_path.glob(".*tmp"))


def section(command: str, frame: pd.DataFrame) -> aggregate.Section:
    frame = frame.assign(label="x", run="x", command=command, seed=0)
    (sec,) = aggregate.sections(Comparison([], [command], [], [], frame))
    return sec


def test_bench_figure_validation_panel() -> None:
    rows = pd.DataFrame({"kind": "validation", "network": ["n1", "n2", "n3"], "device": "cpu",
                         "source": "lut", "latency_ms": [1.0, 2.0, 3.1],
                         "expected_error": 0.05, "macs": [1e6, 2e6, 3e6],
                         "measured_ms": [1.1, 1.9, 3.0]})
    fig = plots.figure(section("bench", rows))
    assert len(fig.get_axes()) == 2  # latency vs MACs, predicted vs measured
    one = plots.figure(section("bench", rows.drop(columns="measured_ms")))
    assert len(one.get_axes()) == 1


def test_nothing_to_draw_is_none() -> None:
    no_latency = pd.DataFrame({"sample": [0, 1], "val_accuracy": [0.5, 0.6]})
    assert plots.figure(section("search", no_latency)) is None
    assert plots.run_figure("rethink", pd.DataFrame(), "empty") is None


def test_lottery_ticks_at_the_points_and_title_by_seeds() -> None:
    """Issue 20: a run above 50% of weights had one x tick ("100") and a title "mean over
    seeds, 1 seed"."""
    metrics = pd.read_csv(real_runs() / "lottery" / "fifth" / "metrics.csv")
    fig = plots.run_figure("lottery", metrics, "fifth")
    points = sorted(set(metrics.weights_remaining_pct.round(6)), reverse=True)
    for ax in fig.get_axes():
        assert list(ax.get_xticks()) == pytest.approx(points)
        assert [t.get_text() for t in ax.get_xticklabels()] == [f"{p:.3g}" for p in points]
    title = fig._suptitle.get_text()
    assert "(1 seed)" in title and "mean" not in title
    half = plots.run_figure("lottery", pd.read_csv(real_runs() / "lottery" / "half" /
                                                   "metrics.csv"), "half")
    assert "mean of 3 seeds" in half._suptitle.get_text()


def test_rethink_bars_start_at_zero_coloured_by_mode() -> None:
    metrics = pd.read_csv(real_runs() / "rethink" / "tiny" / "metrics.csv")
    ax = plots.run_figure("rethink", metrics, "tiny").get_axes()[0]
    assert ax.get_ylim()[0] == 0
    colors = {tuple(p.get_facecolor()) for p in ax.patches}
    assert len(colors) == len(ax.patches) == 5  # a colour per mode


def test_build_v3_plots_accuracy_vs_latency_when_trained() -> None:
    metrics = pd.read_csv(real_runs() / "build-v3" / "small" / "metrics.csv")
    plain = plots.run_figure("build-v3", metrics, "small").get_axes()[0]
    assert plain.get_xlabel() == "multiply-adds (M)"
    trained = metrics.assign(test_accuracy=np.linspace(0.6, 0.7, len(metrics)))
    ax = plots.run_figure("build-v3", trained, "small").get_axes()[0]
    assert ax.get_ylabel() == "test accuracy (%)" and ax.get_xlabel().startswith("latency")
    # points named by step number (the change names go under the panel, not on the points)
    assert sorted(t.get_text() for t in ax.texts) == [str(s) for s in sorted(metrics.step)]


def test_bench_validation_axis_says_where_the_truth_comes_from() -> None:
    rows = pd.DataFrame({"kind": "phone_cv", "network": ["n1", "n2", "n3"], "device": "pixel1",
                         "source": "model", "latency_ms": [10.0, 20.0, 31.0],
                         "expected_error": 0.1, "macs": [1e8, 2e8, 3e8],
                         "measured_ms": [11.0, 19.0, 30.0]})
    ax = plots.figure(section("bench", rows)).get_axes()[1]
    assert ax.get_xlabel() == "published latency (ms)"
    assert "measured" not in ax.get_xlabel()
    host = plots.figure(section("bench", rows.assign(kind="validation"))).get_axes()[1]
    assert host.get_xlabel() == "measured end to end here (ms)"


def test_latency_error_bars_never_go_below_zero() -> None:
    """A noisy host timing (IQR/median 122%, issue 16) drew its bar down to -17 ms."""
    from matplotlib.collections import LineCollection

    rows = pd.DataFrame({"step": [0, 1], "change": ["seed", "se"], "madds": [5e7, 6e7],
                         "params": [1e6, 1.1e6],
                         "latency_ms_host": [78.0, 9.3], "host_device": "cpu",
                         "host_source": "measured", "host_error": [1.22, 0.02]})
    fig = plots.build_v3_figure(section("build-v3", rows))
    bars = [c for ax in fig.get_axes() for c in ax.collections if isinstance(c, LineCollection)]
    lows = [float(seg[:, 1].min()) for c in bars for seg in c.get_segments()]
    assert lows and min(lows) >= 0.0
    assert max(float(seg[:, 1].max()) for c in bars for seg in c.get_segments()) > 78 * 2.2
