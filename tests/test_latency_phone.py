"""Phone models: shipped parameters reproduced, provenance, monotonicity, calibration specs."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from lotto.arch import preset
from lotto.arch.build import build_network
from lotto.errors import LottoError
from lotto.latency import Latency, canonical_device, predict
from lotto.latency.calibrate import (
    cross_validate,
    fit_all,
    harmonisation_factors,
    load_calibration,
)
from lotto.latency.phone import FEATURES, PHONES, load_phone_model, model_path
from lotto.latency.variants import calibration_spec


@pytest.fixture(scope="module")
def cal():
    return load_calibration()


def _close(a, b, rtol=1e-6):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rtol) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y, rtol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-15)
    return a == b


def test_shipped_file_is_current(cal):
    shipped = json.loads(open(model_path()).read())
    refit = json.loads(json.dumps(fit_all(cal)))
    assert _close(refit, shipped)
    assert shipped["data"]["sha256"] == cal.sha256
    assert shipped["features"] == list(FEATURES)


def test_calibration_data_is_the_shared_csv_with_sources(cal):
    rows = cal.rows
    assert cal.excluded == {"int8": 12}  # int8 rows are not in the float model
    assert set(rows.precision) == {"float32"}
    assert rows.source.notna().all() and (rows.source.str.len() > 10).all()
    assert {"pixel1", "pixel2", "pixel3"} == set(rows.device)


def test_counted_macs_match_published(cal):
    # the TF multiplier rule reproduces the published MAdds (V3-Large 0.75: 155M, not 140M)
    pub = cal.rows.dropna(subset=["published_mmacs"])
    rel = (pub.counted_mmacs - pub.published_mmacs).abs() / pub.published_mmacs
    assert (rel < 0.09).all()
    assert np.median(rel) < 0.01
    assert calibration_spec("mobilenet_v3_large", 0.75).macs() / 1e6 == pytest.approx(155, rel=0.01)


def test_variants_change_only_what_they_say():
    base = calibration_spec("mobilenet_v3_large")
    relu = calibration_spec("mobilenet_v3_large [relu everywhere]")
    hs16 = calibration_spec("mobilenet_v3_large [h-swish from the 16-channel stem]")
    hs112 = calibration_spec("mobilenet_v3_large [h-swish from the 112-channel stage]")
    mini = calibration_spec("mobilenet_v3_large_minimalistic")
    assert base.macs() == relu.macs() == hs16.macs() == hs112.macs()
    assert {b.act for b in relu.blocks} == {"relu"} and relu.stem.act == "relu"
    assert {b.act for b in hs16.blocks} == {"hswish"} and hs16.stem.act == "hswish"
    assert [b.act for b in hs112.blocks][:10] == ["relu"] * 10
    assert {b.act for b in hs112.blocks[10:]} == {"hswish"}
    assert all(b.kernel == 3 and not b.se for b in mini.blocks)
    assert mini.macs() / 1e6 == pytest.approx(209, rel=0.01)  # README: 209M
    p = [predict(s, "pixel1").ms for s in (relu, base, hs16)]
    assert p[0] < p[1] < p[2]  # Table 5's ordering: ReLU < published < h-swish everywhere
    with pytest.raises(LottoError):
        calibration_spec("mobilenet_v3_large [mystery]")


def test_harmonisation_uses_networks_both_sources_report(cal):
    f = harmonisation_factors(cal.rows)
    # MobileNetV2 1.0 / 0.35 @ 224 on Pixel 1: README 73.8 / 19.7 ms vs the V3 paper 64 / 16.6
    assert f["v3_paper"] == 1.0
    assert f["v2_readme"] == pytest.approx(math.sqrt(73.8 / 64 * 19.7 / 16.6))


def test_cross_validation_holds_the_family_out(cal):
    cv = cross_validate(cal, "family2")
    p1 = cv["devices"]["pixel1"]
    assert set(p1["families"]) == {"mobilenet_v2", "mobilenet_v3"}
    assert p1["pooled"]["n"] == int((cal.rows.device == "pixel1").sum())
    assert np.isfinite(cv["predictions"]).all()
    # the shipped expected errors are these cross-validated RMSPEs
    for phone in PHONES:
        assert load_phone_model(phone).expected_error == pytest.approx(
            cv["devices"][phone]["pooled"]["rmspe"])


@pytest.mark.parametrize("device", ["pixel", "pixel1", "pixel2", "pixel3"])
def test_predictions_carry_provenance(device):
    lat = predict(preset("mobilenet_v3_large"), device)
    assert isinstance(lat, Latency)
    assert lat.source == "model" and lat.device == canonical_device(device)
    assert 0 < lat.expected_error < 0.5 and lat.ms > 0
    assert "model(" in lat.provenance() and "expected RMSPE" in lat.provenance()
    assert lat.to_dict()["ms"] == lat.ms


@pytest.mark.parametrize("device", PHONES)
def test_wider_and_larger_networks_are_slower(device):
    for name in ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"):
        widths = [predict(preset(name, m), device).ms for m in (0.35, 0.5, 0.75, 1.0, 1.4)]
        sizes = [predict(preset(name, 1.0, r), device).ms for r in (96, 128, 160, 224, 256)]
        assert widths == sorted(widths) and sizes == sorted(sizes)


def test_device_scales_order_the_phones():
    spec = preset("mobilenet_v2")
    p1, p2, p3 = (predict(spec, d).ms for d in PHONES)
    assert p3 < p1 < p2  # Pixel 3 fastest, Pixel 2 slowest in every published row


def test_module_without_spec_is_priced_from_its_leaves():
    spec = preset("mobilenet_v3_small", resolution=128)
    module = build_network(spec)
    del module.spec  # force the traced path
    traced = predict(module, "pixel1", input_shape=(1, 3, 128, 128)).ms
    assert traced == pytest.approx(predict(spec, "pixel1").ms, rel=0.05)  # residual adds unseen


def test_unit_cache_gives_the_same_number_as_the_layers():
    model = load_phone_model("pixel2")
    spec = preset("mnasnet_a1")
    by_layers = sum(ms for _, ms in model.predict_layers(spec)) + model.fixed_ms
    assert model.predict_spec(spec) == pytest.approx(by_layers)
    assert model.predict_spec(spec) == pytest.approx(by_layers)  # cached path


def test_bad_devices_and_sources():
    spec = preset("mobilenet_v3_small")
    with pytest.raises(LottoError, match="unknown device"):
        predict(spec, "pixel9")
    with pytest.raises(LottoError, match="phone"):
        predict(spec, "pixel1", source="measure")
    with pytest.raises(LottoError, match="unknown source"):
        predict(spec, "cpu", source="guess")
    with pytest.raises(LottoError):
        load_phone_model("iphone")



@pytest.mark.parametrize("held_out", ["mobilenet_v2", "mobilenet_v3"])
def test_held_out_labels_do_not_move_their_predictions(cal, held_out):
    """Strict CV: nothing estimated from the held-out family (harmonisation factors included)
    enters the fit that predicts it, so scrambling its labels leaves its predictions alone."""
    base = cross_validate(cal, "family2")
    test = (cal.rows.family2 == held_out).to_numpy()
    rows = cal.rows.copy()
    rows.loc[test, "latency_ms"] *= np.random.default_rng(0).uniform(0.5, 2.0, test.sum())
    moved = cross_validate(dataclasses.replace(cal, rows=rows), "family2")
    np.testing.assert_allclose(moved["predictions"][test], base["predictions"][test], rtol=1e-12)
    # the scrambled rows do train the other fold: the check above is not vacuous
    assert not np.allclose(moved["predictions"][~test], base["predictions"][~test])


def test_expected_error_is_the_strict_figure(cal):
    strict = cross_validate(cal, "family2")["devices"]["pixel1"]["pooled"]["rmspe"]
    leaky = cross_validate(cal, "family2", strict=False)["devices"]["pixel1"]["pooled"]["rmspe"]
    assert load_phone_model("pixel").expected_error == pytest.approx(strict)
    assert strict > leaky + 0.02  # the shared factors flattered the figure


def test_far_extrapolation_warns_and_widens():
    inside = predict(preset("mobilenet_v3_small", 1.0, 160), "pixel")
    assert "warnings" not in inside.detail
    assert inside.expected_error == load_phone_model("pixel1").expected_error
    far = predict(preset("mobilenet_v3_small", 1.0, 33), "pixel")
    assert any("resolution 33" in w for w in far.detail["warnings"])
    # widened by the log-distance outside the range (96 px is the smallest calibration row)
    assert far.expected_error >= inside.expected_error + math.log(96 / 33) - 1e-9
    wide = predict(preset("mobilenet_v2", 3.0), "pixel1")
    assert any("width_mult 3" in w for w in wide.detail["warnings"])

