"""Lookup tables and spaces: keys, coverage, hits and misses, caching, foreign tables, validation.

A tiny space at 32 px keeps every measurement in the milliseconds; no timing value is asserted.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

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
from lotto.latency.space import load_space

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
    n = build_entries(lut, space.carriers(), min_run_time=0.005)
    return space, lut, n


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


def test_offset_and_validation_record_their_basis(built):
    space, lut, _ = built
    refs = space.sample(2, seed=1000)
    offset = calibrate_offset(lut, refs, min_run_time=0.01)
    assert offset >= 0 and lut.meta["offset_basis"]["networks"] == [s.name for s in refs]
    result = validate(lut, space.sample(3, seed=0), min_run_time=0.01)
    s = result["summary"]
    assert s["n_networks"] == 3 and s["rmspe"] >= 0 and s["max_abs_error"] >= 0
    assert 0 <= s["iqr_rel_median"] <= s["iqr_rel_max"]
    assert lut.meta["validation"] == s and lut.expected_error == s["rmspe"]
    row = result["rows"][0]
    assert row.hits > 0 and row.misses == 0 and row.lut_ms >= row.units_ms


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
