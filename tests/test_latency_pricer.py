"""`lotto.latency.pricer.Pricer`: the one latency rule `search` and `netadapt` price with."""

from __future__ import annotations

import json

import pytest

import lotto.latency as latency
import lotto.latency.lut as lut_mod
import lotto.latency.paired as paired
from lotto.arch import load_spec, scale_width
from lotto.config import load_config
from lotto.errors import LottoError
from lotto.latency import predict
from lotto.latency.lut import Lut, lut_path
from lotto.latency.measure import Timing
from lotto.latency.pricer import Price, Pricer, table_grid
from lotto.netadapt import floor_spec

SPEC = """\
name: tiny
resolution: 64
stem: {channels: 16, kernel: 3, stride: 2, act: hswish}
blocks: [ir_k3_s1_e32_c16_re, ir_k3_s2_e48_c24_se0.25_re, ir_k3_s1_e64_c24_se0.25_hs]
head: {conv: 64, hidden: 0, act: hswish, dropout: 0.0}
"""
OFFSET = 0.3  # ms the fake end-to-end timings add to the units' sum


@pytest.fixture
def seed(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC)
    return load_spec(path)


def search_cfg(runs, device, *extra):
    return load_config("search", None, [f"latency.device={device}", f"run.runs_dir={runs}",
                                        *extra])


def netadapt_cfg(runs, device, *extra):
    return load_config("netadapt", None, [f"latency.device={device}", f"run.runs_dir={runs}",
                                          "latency.lut_multipliers=[0.5]", *extra])


@pytest.fixture
def fake_host(monkeypatch):
    """Host timings fixed in advance (a unit: 1 ms per 10^6 MACs + 0.01 ms; a network end to
    end: its units plus OFFSET), so the rule is tested, not this machine's noise."""
    def units(spec, *a, **k):
        infos = lut_mod.unit_infos(spec)
        return {name: _timing(1e-6 * info.macs + 0.01) for name, info in infos.items()}

    def whole(spec, *a, **k):
        ms = sum(1e-6 * i.macs + 0.01 for i in lut_mod.unit_infos(spec).values()) + OFFSET
        return Timing(ms, ms * 0.99, ms * 1.01, ms, 0.0, 5, 1, 1, "cpu", ())

    measured = []

    def measure(spec, module, dev, *a, **k):
        measured.append(spec.name)
        return latency.Latency(1.0, "measured", 0.01, dev, {})

    monkeypatch.setattr(lut_mod, "time_units_in_situ", units)
    monkeypatch.setattr(lut_mod, "measure_spec", whole)
    monkeypatch.setattr(latency, "_measure", measure)
    monkeypatch.setitem(paired._MS, 1, 7.0)  # the paired clock's scale, not timed here
    return measured


def _timing(ms):
    return {"median": ms, "p25": ms * 0.999, "p75": ms * 1.001, "mean": ms, "std": 0.0, "n": 10,
            "number_per_run": 1}


@pytest.mark.parametrize("make", [search_cfg, netadapt_cfg])
def test_phones_use_the_model_memoised_by_the_network(tmp_path, seed, make, monkeypatch):
    calls = []
    real = latency.predict
    monkeypatch.setattr(latency, "predict", lambda *a, **k: (calls.append(a[0].name),
                                                             real(*a, **k))[1])
    price = Pricer(make(tmp_path, "pixel1"), seed)  # a seed on a phone: no table, the model
    want = predict(seed, "pixel1")
    assert price(seed) == Price(want.ms, "model", want.expected_error)
    assert price.source == "model" and price.lut is None
    assert price.ms(seed.replace(name="renamed")) == want.ms  # the same network: memoised
    half = scale_width(seed, 0.5)
    assert price(half).ms == predict(half, "pixel1").ms
    assert len(calls) == 2  # seed (once for both names) and half
    ms, source, error = price(seed)  # a plain tuple too (search unpacks it)
    assert (ms, source) == (want.ms, "model")


def test_a_phone_refuses_a_host_source(tmp_path):
    with pytest.raises(LottoError, match="latency.source: pixel1 is a phone"):
        Pricer(search_cfg(tmp_path, "pixel1", "latency.source=lut"))


def test_on_a_host_both_commands_price_with_the_same_table(tmp_path, seed, fake_host):
    runs = tmp_path / "runs"
    # no table yet: search measures end to end, or refuses where a table was asked for
    price = Pricer(search_cfg(runs, "cpu"))
    assert price.source == "measure" and price(seed) == Price(1.0, "measured", 0.01)
    assert fake_host == ["tiny"] and price(seed.replace(name="again")).ms == 1.0
    assert fake_host == ["tiny"]  # memoised: one timing per network
    with pytest.raises(LottoError,
                       match="no lookup table for cpu .*--build-lut measure.clock=paired`"):
        Pricer(search_cfg(runs, "cpu", "latency.source=lut"))

    # netadapt builds the table in situ around its seed (and calibrates the offset) ...
    said = []
    built = Pricer(netadapt_cfg(runs, "cpu"), seed, say=said.append)
    path = lut_path(runs, "cpu", 1, clock="paired")  # the default clock of search and netadapt
    assert built.source == "lut" and path.exists() and said == [
        f"lookup table {path}: timing {len(Lut.empty('cpu', 1).missing(table_grid(seed, [0.5])))}"
        " missing units on cpu"]
    assert built.lut.meta["offset_ms"] == pytest.approx(OFFSET)
    # ... and from then on search prices with it too: the same numbers for the same networks
    found = Pricer(search_cfg(runs, "cpu"))
    assert found.source == "lut"
    for net in (seed, scale_width(seed, 0.5), floor_spec(seed, 8)):
        assert found(net) == built(net) and found(net).source == "lut"
    assert built.ms(floor_spec(seed, 8)) < built.ms(seed)
    assert Pricer(search_cfg(runs, "cpu", "latency.source=model")).source == "model"
    assert Pricer(search_cfg(runs, "cpu", "latency.source=measure"))(seed).source == "measured"
    # a table file named in the config is used by both
    other = tmp_path / "mine.json"
    path.rename(other)
    assert Pricer(search_cfg(runs, "cpu")).source == "measure"
    assert Pricer(netadapt_cfg(runs, "cpu", f"latency.lut={other}"), seed).lut.path == other


def test_a_table_of_another_host_is_not_trusted(tmp_path, seed, fake_host):
    runs = tmp_path / "runs"
    Pricer(netadapt_cfg(runs, "cpu"), seed)
    path = lut_path(runs, "cpu", 1, clock="paired")  # the default clock of search and netadapt
    data = json.loads(path.read_text())
    data["meta"]["fingerprint"]["cpu"] = "another machine"
    path.write_text(json.dumps(data))
    said = []
    price = Pricer(search_cfg(runs, "cpu"), say=said.append)
    assert price.source == "measure" and price.lut is None
    assert len(said) == 1 and "built for another setup" in said[0] and "not used" in said[0]
    said.clear()
    again = Pricer(netadapt_cfg(runs, "cpu"), seed, say=said.append)  # rebuilt in situ
    assert again.source == "lut" and "rebuilding it" in said[0]
    assert json.loads(path.read_text())["meta"]["fingerprint"]["cpu"] != "another machine"
