"""The paired clock: timings relative to a reference network cancel the machine's drift."""

from __future__ import annotations

import time

import pytest
import torch

import lotto.latency.lut as lut_mod
import lotto.latency.paired as paired
from lotto.arch import preset
from lotto.errors import LottoError
from lotto.latency.lut import Lut, time_units_in_situ
from lotto.latency.measure import clock_fn, time_callable


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.fixture
def drifting(monkeypatch: pytest.MonkeyPatch):
    """A virtual clock; a reference of 1 ms and a call of 2 ms at the machine's speed, where the
    machine runs 3x slower every other sample (a busy neighbour, a frequency change)."""
    now = [0.0]
    speed = {"slow": False, "last": ""}

    def ref() -> None:  # a new sample: the speed changes
        speed["slow"], speed["last"] = not speed["slow"], "ref"
        now[0] += 1e-3 * (3 if speed["slow"] else 1)

    def call() -> None:  # a call with no reference before it is a new sample too
        if speed["last"] == "call":
            speed["slow"] = not speed["slow"]
        speed["last"] = "call"
        now[0] += 2e-3 * (3 if speed["slow"] else 1)

    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    monkeypatch.setitem(paired._CALLS, 1, ref)
    monkeypatch.setitem(paired._MS, 1, 1.5)  # the scale: the reference took 1.5 ms back then
    return call


def test_paired_clock_cancels_the_drift_that_the_wall_clock_keeps(drifting):
    wall = time_callable(drifting, "cpu", min_run_time=0.2, warmup=2, clock="wall")
    both = time_callable(drifting, "cpu", min_run_time=0.2, warmup=2, clock="paired")
    assert sorted({round(t, 6) for t in wall.times_ms}) == [2.0, 6.0]  # the drift, as it came
    # paired: every call is 2x the reference, in the scale's units: 3.0 ms
    assert both.median_ms == pytest.approx(3.0) and both.iqr_rel == pytest.approx(0.0)
    assert both.n >= 10


def test_units_in_situ_are_in_the_reference_scale(monkeypatch: pytest.MonkeyPatch):
    spec = preset("mobilenet_v2", 0.35, 64, 10)
    wall = sum(u["median"] for u in time_units_in_situ(spec, "cpu", 1, 0.1).values())
    # each pass read against a reference of 1 us taken as 1 ms: 1,000x the wall clock
    monkeypatch.setitem(paired._CALLS, 1, lambda: None)
    monkeypatch.setattr(paired, "reference_seconds", lambda ref: 1e-6)
    monkeypatch.setitem(paired._MS, 1, 1.0)
    both = sum(u["median"] for u in time_units_in_situ(spec, "cpu", 1, 0.1,
                                                       clock="paired").values())
    assert 300 < both / wall < 3000  # machine noise moves the two by far less than 1,000x


def test_a_table_keeps_its_reference_time(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setattr(paired, "_MS", {})
    monkeypatch.setattr(paired, "_CALLS", {1: lambda: _spin(2e-3)})
    first = Lut.empty("cpu", 1, clock="paired", path=tmp_path / "a.json")
    lut_mod._setup(first)  # first use: the reference is measured and stored with the table
    assert first.meta["reference_ms"] == pytest.approx(2.0, rel=0.5)
    other = Lut.empty("cpu", 1, clock="paired")
    other.meta["reference_ms"] = 7.0  # a table built earlier: its scale, not this process's
    lut_mod._setup(other)
    assert paired.reference_ms(1) == 7.0
    wall = Lut.empty("cpu", 1)
    lut_mod._setup(wall)
    assert "reference_ms" not in wall.meta


def test_paired_clock_is_for_the_cpu_device():
    assert clock_fn("paired", torch.device("cpu"), 2) is time.perf_counter
    with pytest.raises(LottoError, match="cpu only"):
        clock_fn("paired", torch.device("cuda"), 1)
    from lotto.latency.xnnpack import measure

    with pytest.raises(LottoError, match="paired.*cpu device only"):
        measure(torch.nn.Identity(), (1, 3, 8, 8), clock="paired")
