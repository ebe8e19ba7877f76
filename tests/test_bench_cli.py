"""`lotto bench` end to end through the CLI: JSON fields, run files, modes, bad input -> exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
import yaml
from typer.testing import CliRunner

from lotto.arch import preset
from lotto.cli import app
from lotto.experiments.bench import LAYER_COLUMNS, METRIC_COLUMNS
from lotto.flops import count_macs
from lotto.latency.phone import load_phone_model

runner = CliRunner()
JSON_FIELDS = {"device", "latency_ms", "source", "expected_error", "params", "macs",
               "resolution", "width_mult"}
FAST = ["measure.min_run_time=0.02", "measure.warmup=1", "measure.per_layer_runs=2"]
TINY_SPACE = """
space:
  base: mobilenet_v3_small
  resolution: 32
  kernels: [3]
  expansions: [3]
  se: [false, true]
  stages:
    - {widths: [16], repeats: [1], stride: 2, kernels: [3], expansions: [1], se: [false]}
    - {widths: [24], repeats: [1, 2], stride: 2}
    - {widths: [32], repeats: [1], stride: 2}
"""


def bench(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["bench", *args])
    return result.exit_code, result.output


def as_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_phone_prediction_json_and_run_files(runs_dir: Path):
    code, out = bench("--device", "pixel", "--model", "mobilenet_v3_small", "--json",
                      "--runs-dir", str(runs_dir))
    assert code == 0, out
    s = as_json(out)
    assert JSON_FIELDS <= set(s)
    assert s["device"] == "pixel1" and s["source"] == "model" and 0 < s["expected_error"] < 0.5
    assert s["resolution"] == 224 and s["width_mult"] == 1.0
    # convs + FCs of MobileNetV3-Small at 224, the same as torchvision's model counts
    assert s["macs"] == 56_510_400 == count_macs(torchvision.models.mobilenet_v3_small(), 3, 224)
    run = next((runs_dir / "bench").iterdir())
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns) == list(METRIC_COLUMNS)
    assert (run / "metrics.parquet").exists() and (run / "config.yaml").exists()
    assert json.loads((run / "summary.json").read_text())["latency_ms"] == s["latency_ms"]


def test_spec_file_resolution_and_width(runs_dir: Path, tmp_path: Path):
    spec_file = tmp_path / "my_spec.yaml"
    spec_file.write_text(yaml.safe_dump(preset("mobilenet_v3_large").to_dict()))
    code, out = bench("--device", "pixel2", "--arch", str(spec_file), "--resolution", "160",
                      "--width-mult", "0.75", "--json", "--runs-dir", str(runs_dir))
    assert code == 0, out
    s = as_json(out)
    assert s["device"] == "pixel2" and s["resolution"] == 160 and s["width_mult"] == 0.75
    full = as_json(bench("--device", "pixel2", "--arch", str(spec_file), "--json",
                         "--runs-dir", str(runs_dir))[1])
    assert s["latency_ms"] < full["latency_ms"] and s["macs"] < full["macs"]


def test_cpu_measurement_with_per_layer_table(runs_dir: Path):
    code, out = bench("--device", "cpu", "--model", "mobilenet_v3_small", "--resolution", "64",
                      "--per-layer", "--runs-dir", str(runs_dir), *FAST)
    assert code == 0, out
    assert "Latency (ms): median=" in out and "source=measured" in out
    assert "Summary by op type" in out
    run = next((runs_dir / "bench").iterdir())
    layers = pd.read_csv(run / "layers.csv")
    assert list(layers.columns) == list(LAYER_COLUMNS)
    assert layers.cdf_pct.iloc[-1] == pytest.approx(100)
    assert layers.macs.sum() == preset("mobilenet_v3_small", resolution=64).macs()
    # same command again: resumed from the run directory, not re-measured
    code, again = bench("--device", "cpu", "--model", "mobilenet_v3_small", "--resolution",
                        "64", "--per-layer", "--runs-dir", str(runs_dir), *FAST)
    assert code == 0 and "resumed" in again


def test_build_lut_then_price_and_validate(runs_dir: Path, tmp_path: Path, monkeypatch):
    # 5 ms timings on shared cores: the IQR refusal is tested in tests/test_latency_lut.py
    monkeypatch.setattr("lotto.latency.lut.UNIT_MAX_IQR", float("inf"))
    space = tmp_path / "space.yaml"
    space.write_text(TINY_SPACE)
    fast = ["lut.min_run_time=0.005", "lut.reference_networks=2", "validation.networks=3",
            "validation.min_run_time=0.01"]
    code, out = bench("--device", "cpu", "--build-lut", "--space", str(space), "--json",
                      "--runs-dir", str(runs_dir), *fast)
    assert code == 0, out
    built = as_json(out)
    assert built["mode"] == "build_lut" and built["entries"] == built["measured_now"] > 5
    assert Path(built["lut"]).exists() and built["complete"]
    code, out = bench("--device", "cpu", "--validate", "--space", str(space), "--json",
                      "--runs-dir", str(runs_dir), *fast)
    assert code == 0, out
    v = as_json(out)["validation"]
    assert v["n_networks"] == 3 and "iqr_rel_median" in v
    assert v["max_abs_error"] / 3**0.5 <= v["rmspe"] <= v["max_abs_error"]
    code, out = bench("--device", "cpu", "--model", "mobilenet_v3_small", "--resolution", "32",
                      "--source", "lut", "--json", "--runs-dir", str(runs_dir), *fast)
    assert code == 0, out
    s = as_json(out)
    assert s["source"] == "lut" and JSON_FIELDS <= set(s)
    assert s["detail"]["hits"] + s["detail"]["interpolated"] + s["detail"]["modelled"] > 0


def test_phone_validation_prints_cross_validation(runs_dir: Path):
    code, out = bench("--device", "pixel", "--validate", "--json", "--runs-dir", str(runs_dir))
    assert code == 0, out
    s = as_json(out)
    cv = s["cv_lofo_v2_v3"]
    assert set(cv["families"]) == {"mobilenet_v2", "mobilenet_v3"}
    assert {"rmspe", "spearman", "within10"} <= set(cv["families"]["mobilenet_v3"])
    assert "baseline_lofo_v2_v3" in s and "cv_lofo_v2_v3_shared_factors" in s
    # the quoted figures are the strict ones
    assert s["cv_lofo_v2_v3"]["seen_sources"]["rmspe"] == pytest.approx(
        load_phone_model("pixel1").info["rel_error"])
    assert s["errors"]["expected_error"] == pytest.approx(load_phone_model("pixel1").expected_error)
    # the host units are a source of the fit too (held out, scored on host time; no phone's)
    assert set(s["leave_one_source_out"]) == {"v3_paper", "v2_readme", "v3_readme", "hwnas",
                                              "xnnpack_host"}
    assert s["fbnet_leave_one_shape_out"]["networks"]["rmspe_after_scale"] <= 0.05


def test_phone_validation_prints_strict_coverage_and_too_few_rows(runs_dir: Path):
    """pixel2 has too few rows for its own relative error: --validate says so, and prints the
    strict (nested leave-one-source-out) coverage of the quoted error; pixel1 quotes its own."""
    code, out = bench("--device", "pixel2", "--validate", "--runs-dir", str(runs_dir))
    assert code == 0, out
    text = " ".join(out.split())  # rich wraps lines
    assert "too few for its own relative error" in text
    assert "Strict coverage for pixel2" in text and "v2_readme" in text
    assert "scale part %" in text and "covers 67% of the held-out raw errors of the 4" in text
    code, out = bench("--device", "pixel1", "--validate", "--json", "--runs-dir", str(runs_dir))
    err = as_json(out)["errors"]
    assert err["basis"] == "own" and "note" not in err
    assert set(err["folds"]) == {"v3_paper", "v2_readme", "v3_readme", "hwnas"}
    assert 0 <= err["coverage"] <= 1 and 0 <= err["coverage_pooled"] <= 1
    # each fold's bars come from the other three sources
    for g, fold in err["folds"].items():
        assert g not in fold["calibrated_on"] and len(fold["calibrated_on"]) == 3
        assert fold["level"] == pytest.approx(2 / 3)
    assert err["level"] == pytest.approx(2 / 3) and len(err["calibrated_on"]) == 4


def test_far_extrapolation_warns_on_stderr(runs_dir: Path):
    result = runner.invoke(app, ["bench", "--device", "pixel", "--model", "mobilenet_v3_small",
                                 "--resolution", "33", "--json", "--runs-dir", str(runs_dir)])
    assert result.exit_code == 0, result.output
    assert "resolution 33 is outside" in result.stderr
    s = as_json(result.stdout)
    assert s["detail"]["warnings"] and s["expected_error"] > 0.5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "tpu"], "unknown device"),
        (["--device", "pixel", "--model", "resnet_9000"], "unknown architecture"),
        (["--device", "pixel", "--arch", "nowhere.yaml"], "neither a preset"),
        (["--device", "pixel", "--resolution", "8"], "too small"),
        (["--device", "pixel", "--source", "measure"], "phone"),
        (["--device", "cpu", "--source", "guess"], "source"),
        (["--device", "pixel", "--build-lut"], "host"),
        (["--device", "cpu", "--threads", "0"], "threads"),
        (["--device", "cpu", "--validate", "--space", "nowhere.yaml"], "not found"),
        (["--device", "cpu", "--source", "lut", "--model", "bogus"], "unknown architecture"),
        (["--device", "pixel", "nonsense.key=1"], "unknown config key"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runs_dir: Path, args: list[str], message: str):
    code, out = bench(*args, "--runs-dir", str(runs_dir))
    assert code == 2, out
    assert message in out and "Traceback" not in out


def test_cuda_without_a_gpu(runs_dir: Path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, out = bench("--device", "cuda", "--runs-dir", str(runs_dir))
    assert code == 2 and "no CUDA GPU" in out
    assert not (runs_dir / "bench").exists()  # no half-made run directory
