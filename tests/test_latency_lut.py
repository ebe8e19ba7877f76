"""Lookup tables and spaces: keys, coverage, hits and misses, caching, foreign tables, validation.

A tiny space at 32 px keeps every measurement in the milliseconds; no timing value is asserted.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import lotto.latency.lut as lut_mod
from lotto.arch import preset
from lotto.errors import LottoError
from lotto.latency import predict
from lotto.latency.lut import (
    Lut,
    build_entries,
    calibrate_offset,
    lut_key,
    lut_path,
    open_lut,
    validate,
)
from lotto.latency.phone import LAYER_FEATURES
from lotto.search.space import load_space

TINY_SPACE = """
space:
  base: mobilenet_v3_small
  resolution: 32
  kernels: [3, 5]
  expansions: [3]
  se: [false, true]
  stages:
    - {widths: [16], repeats: [1], stride: 2, kernels: [3], expansions: [1], se: [false]}
    - {widths: [16, 24], repeats: [1, 2], stride: 2}
    - {widths: [32], repeats: [1, 2], stride: 2}
"""


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(TINY_SPACE)
    return path


@pytest.fixture(scope="module")
def built(space_file, tmp_path_factory):
    space = load_space(space_file)
    path = lut_path(tmp_path_factory.mktemp("runs"), "cpu", 1)
    lut = open_lut(path, "cpu", 1)
    lut.meta["max_iqr"] = float("inf")  # these tests are about the table, not this machine's
    with pytest.MonkeyPatch.context() as mp:  # noise (5 ms per unit on shared cores)
        mp.setattr(lut_mod, "REMEASURES", 0)
        n = build_entries(lut, space.carriers(), min_run_time=0.005)
    return space, lut, n


def _noisy(median: float = 2.0, iqr: float = 1.0) -> dict:
    return {"median": median, "p25": median - iqr / 2, "p75": median + iqr / 2,
            "mean": median, "std": iqr, "n": 10, "number_per_run": 1}


@pytest.mark.parametrize("method", ["isolated", "insitu"])
def test_noisy_units_are_remeasured_then_refused(space_file, tmp_path, method,
                                                  monkeypatch: pytest.MonkeyPatch):
    """A unit timed with IQR/median over 10% is measured again (the least noisy kept); one
    still over the table's limit after that is not stored, and the build says so."""
    space = load_space(space_file)
    spec = next(iter(space.carriers()))
    calls: list[int] = []
    quiet_after = {"n": 2}  # noisy twice, then clean

    def fake_unit(*a, **k):
        calls.append(1)
        return _noisy(iqr=1.5) if len(calls) <= quiet_after["n"] else _noisy(iqr=0.02)

    def fake_insitu(s, *a, **k):
        calls.append(1)
        iqr = 1.5 if len(calls) <= quiet_after["n"] else 0.02
        return {ctx.name: _noisy(iqr=iqr) for ctx in s.block_contexts()}

    monkeypatch.setattr(lut_mod, "time_unit", fake_unit)
    monkeypatch.setattr(lut_mod, "time_units_in_situ", fake_insitu)
    lut = Lut.empty("cpu", 1, "float32", tmp_path / "a.json", method=method)
    build_entries(lut, [spec])  # noisy, noisy, clean: the third measurement is stored
    assert lut.entries and all(abs(e["p75"] - e["p25"] - 0.02) < 1e-9
                               for e in lut.entries.values())
    assert len(calls) == 3 if method == "insitu" else len(calls) >= 3
    calls.clear()
    quiet_after["n"] = 10**6  # never clean: refused, one line, nothing noisy stored
    lut = Lut.empty("cpu", 1, "float32", tmp_path / "b.json", method=method)
    with pytest.raises(LottoError, match=r"stayed noisy after 3 measurements .* not stored"):
        build_entries(lut, [spec])
    assert lut.entries == {}
    assert len(calls) == 3 if method == "insitu" else len(calls) == 3 * len(lut.missing([spec]))


def test_keys_name_every_field():
    ctx = preset("mobilenet_v3_large").block_contexts()
    key = lut_key(ctx[-3])  # last block: ir k5, SE, h-swish, residual
    assert key.startswith("ir_k5_s1_e960_c160_se0.25_hs|in=7x7x160|out=7x7x160|skip=1")
    assert key.endswith("|se_exp_hsigmoid")
    assert lut_key(ctx[0]).startswith("stem_k3_s2_c16_hs|in=224x224x3|out=112x112x16")
    assert {c.part for c in ctx} == {"stem", "block", "head", "classifier"}


def test_space_carriers_cover_every_sampled_network(built):
    space, lut, n = built
    assert n == len(lut.entries) > 10
    samples = space.sample(20, seed=3)
    assert not lut.missing(samples)  # every unit of every network is a hit
    ms, detail = lut.predict_spec(samples[0])
    assert detail["hits"] == len(samples[0].block_contexts()) and detail["interpolated"] == 0
    assert ms > 0
    assert space.size() == 1 * (2 * 2 * 2 * 2) * (2 * 2 * 2)


def test_table_file_carries_its_protocol(built):
    _, lut, _ = built
    data = json.loads(Path(lut.path).read_text())
    meta = data["meta"]
    assert meta["device"] == "cpu" and meta["threads"] == 1 and meta["dtype"] == "float32"
    assert meta["bn_folded"] and meta["channels_last"] and meta["batch"] == 1
    assert meta["fingerprint"]["torch"] and meta["created"]
    entry = next(iter(data["entries"].values()))
    assert {"median", "p25", "p75", "mean", "std", "n", "macs", "sig", "features"} <= set(entry)


def test_channel_changes_are_interpolated(built):
    space, lut, _ = built
    spec = space.sample(1, seed=0)[0]
    blocks = list(spec.blocks)
    i = next(j for j, b in enumerate(blocks) if b.exp and b.exp > 24)
    blocks[i] = dataclasses.replace(blocks[i], exp=blocks[i].exp - 8)  # a NetAdapt-style shrink
    shrunk = spec.replace(blocks=tuple(blocks)).validate()
    _, detail = lut.predict_spec(shrunk)
    assert detail["interpolated"] + detail["modelled"] == 1
    assert detail["hits"] == len(shrunk.block_contexts()) - 1
    lat = predict(shrunk, "cpu", source="lut", lut=lut)
    assert lat.source == "lut" and lat.detail["interpolated"] + lat.detail["modelled"] == 1
    assert lat.expected_error > lut.expected_error  # a miss widens the error bar


def test_unseen_units_fall_back_to_the_host_model(built):
    _, lut, _ = built
    other = preset("mobilenet_v2", resolution=32)
    _, detail = lut.predict_spec(other)
    assert detail["hits"] == 0 and detail["modelled"] + detail["interpolated"] > 0
    host = predict(other, "cpu", source="model", lut=lut)
    assert host.source == "model" and host.ms > 0


def test_foreign_table_warns_and_rebuilds(built, tmp_path):
    _, lut, _ = built
    path = tmp_path / "foreign.json"
    lut.save(path)
    data = json.loads(path.read_text())
    data["meta"]["fingerprint"]["torch"] = "0.0.1"
    path.write_text(json.dumps(data))
    warnings: list[str] = []
    fresh = open_lut(path, "cpu", 1, warn=warnings.append)
    assert len(fresh.entries) == 0 and warnings and "torch" in warnings[0]
    same = open_lut(Path(lut.path), "cpu", 1, warn=warnings.append)
    assert len(same.entries) == len(lut.entries) and len(warnings) == 1
    assert open_lut(Path(lut.path), "cpu", 2, warn=warnings.append).entries == {}  # threads


def test_table_timed_before_the_steady_allocator_is_rebuilt(built, tmp_path):
    """Timings taken with glibc's default allocator swing with the allocation history (see
    `steady_allocator`): a table from then is dropped with a warning naming it."""
    _, lut, _ = built
    path = tmp_path / "old-allocator.json"
    lut.save(path)
    data = json.loads(path.read_text())
    assert data["meta"]["fingerprint"]["allocator"] == "steady"
    del data["meta"]["fingerprint"]["allocator"]
    path.write_text(json.dumps(data))
    warnings: list[str] = []
    assert open_lut(path, "cpu", 1, warn=warnings.append).entries == {}
    assert "allocator" in warnings[0]


def test_table_of_other_unit_features_is_rebuilt_not_misread(built, tmp_path):
    """A table saved by a lotto whose units had other features (8 before the operator-level
    model) would break the host model's fit: it is dropped with a warning, like a foreign one."""
    _, lut, _ = built
    path = tmp_path / "old.json"
    lut.save(path)
    data = json.loads(path.read_text())
    data["meta"]["features"] = list(LAYER_FEATURES[:8])
    for entry in data["entries"].values():
        entry["features"] = entry["features"][:8]
    path.write_text(json.dumps(data))
    warnings: list[str] = []
    fresh = open_lut(path, "cpu", 1, warn=warnings.append)
    assert fresh.entries == {} and warnings and "features" in warnings[0]


def _fake_timings(monkeypatch, by_name: dict[str, float]) -> None:
    """End-to-end 'measurements' fixed in advance, so the arithmetic can be checked by hand."""
    import lotto.latency.lut as lut_module
    from lotto.latency.measure import Timing

    def fake(spec, *args, **kwargs):
        ms = by_name[spec.name]
        return Timing(ms, ms * 0.99, ms * 1.01, ms, 0.0, 5, 1, 1, "cpu", ())

    monkeypatch.setattr(lut_module, "measure_spec", fake)


def test_offset_and_validation_record_their_basis(built, monkeypatch):
    space, lut, _ = built
    lut = Lut(json.loads(json.dumps(lut.meta)), dict(lut.entries))  # a copy, no file
    refs = space.sample(3, seed=1000)
    sums = [lut.predict_spec(s)[1]["units_ms"] for s in refs]
    gaps = [0.5, 0.2, 0.9]
    _fake_timings(monkeypatch, {s.name: u + g for s, u, g in zip(refs, sums, gaps)})
    assert calibrate_offset(lut, refs) == pytest.approx(0.5)  # median gap
    assert lut.meta["offset_basis"]["networks"] == [s.name for s in refs]
    assert calibrate_offset(lut, refs[:1]) == pytest.approx(0.5)
    _fake_timings(monkeypatch, {s.name: u - 0.1 for s, u in zip(refs, sums)})
    assert calibrate_offset(lut, refs) == 0.0  # a table sum above end to end: no negative offset

    measured = [u + g for u, g in zip(sums, gaps)]
    _fake_timings(monkeypatch, {s.name: m for s, m in zip(refs, measured)})
    result = validate(lut, refs)
    s = result["summary"]
    # each network is priced with the median gap of the *other* two (leave one out)
    loo = [np.median([g for j, g in enumerate(gaps) if j != i]) for i in range(3)]
    errors = [(u + o - m) / m for u, o, m in zip(sums, loo, measured)]
    assert [r.error for r in result["rows"]] == pytest.approx(errors)
    assert s["rmspe"] == pytest.approx(np.sqrt(np.mean(np.square(errors))))
    assert s["max_abs_error"] == pytest.approx(max(abs(e) for e in errors))
    assert s["offset_ms"] == pytest.approx(0.5) and lut.meta["offset_ms"] == s["offset_ms"]
    assert lut.meta["validation"] == s and lut.expected_error == s["rmspe"]
    assert lut.expected_error_basis == "validation"


def _synthetic(medians: list[float], macs: list[int]) -> Lut:
    entries = {f"u{i}": {"median": y, "macs": x, "sig": "same",
                         "features": [float(x)] * len(LAYER_FEATURES)}
               for i, (x, y) in enumerate(zip(macs, medians))}
    return Lut({}, entries)


def test_unit_errors_are_measured_by_leave_one_out():
    lut = _synthetic([2.0, 3.0, 5.0], [1, 2, 3])
    # leave 1 out: extrapolate (2,3),(3,5) -> 1; leave 2: between -> 3.5; leave 3: -> 4
    errs = [(1 - 2) / 2, (3.5 - 3) / 3, (4 - 5) / 5]
    interp = lut.unit_errors()["interp"]
    assert interp["n"] == 3 and interp["basis"] != "guess"
    assert interp["rmspe"] == pytest.approx(np.sqrt(np.mean(np.square(errs))))
    # too few entries to leave one out of the host model (one coefficient per feature + 1)
    assert lut.unit_errors()["model"] == {"rmspe": 0.25, "n": 0, "basis": "guess"}


def test_unvalidated_tables_say_their_error_is_a_guess(built):
    space, lut, _ = built
    fresh = Lut({k: v for k, v in lut.meta.items() if k != "validation"}, dict(lut.entries))
    lat = predict(space.sample(1, seed=0)[0], "cpu", source="lut", lut=fresh)
    assert lat.detail["expected_error_basis"] == "guess"
    assert "guess" in lat.provenance() and any("guess" in w for w in lat.detail["warnings"])
    # the built table measured its own unit errors (interpolation, host model) and its range
    assert lut.meta["unit_errors"]["model"]["basis"] == "leave-one-out over table entries"
    assert lut.meta["range"]["resolution"] == [32, 32]


def test_far_from_the_table_warns_and_widens(built):
    _, lut, _ = built
    spec = preset("mobilenet_v3_small", resolution=64)
    lat = predict(spec, "cpu", source="lut", lut=lut)
    assert any("resolution 64 is outside" in w for w in lat.detail["warnings"])
    unwidened = np.hypot(lut.expected_error, lut.predict_spec(spec)[1]["miss_error"])
    high = lut.meta["range"]
    farthest = max(np.log(64 / high["resolution"][1]), np.log(spec.macs() / high["macs"][1]))
    assert lat.expected_error == pytest.approx(unwidened + farthest)  # the documented rule


def test_space_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: {stages: [{widths: [16], kernel: [3]}]}")
    with pytest.raises(LottoError, match="unknown key"):
        load_space(bad)
    with pytest.raises(LottoError, match="not found"):
        load_space(tmp_path / "missing.yaml")
    with pytest.raises(LottoError):
        load_space("no_such_preset")
    listed = load_space("mobilenet_v3_small,mobilenet_v2", resolution=64)
    assert [s.name for s in listed.specs] == ["mobilenet_v3_small", "mobilenet_v2"]
    assert listed.specs[0].resolution == 64


def test_lut_needs_a_table_and_a_spec():
    spec = preset("mobilenet_v3_small", resolution=32)
    with pytest.raises(LottoError, match="build-lut"):
        predict(spec, "cpu", source="lut")
    lut = Lut.empty("cpu", 1)
    with pytest.raises(LottoError, match="too small"):
        lut.predict_spec(spec)
