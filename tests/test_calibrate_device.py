"""`lotto bench --calibrate RUNS --as NAME`: the phone model's features fitted to one device's
measurements (here: `--device xnnpack` on this host), strict cross-validation, and the new
device name accepted by `bench` and `lotto.latency.predict`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from lotto.arch import preset
from lotto.cli import app
from lotto.latency import predict, xnnpack
from lotto.latency.calibrate import fit_user_device
from lotto.latency.devices import add_runs_dir, check_user_name
from lotto.latency.phone import baseline_features, spec_features

runner = CliRunner()
FAST = ["measure.min_run_time=0.05", "measure.warmup=2"]


def bench(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["bench", *args])
    return result.exit_code, result.output


def test_cv_is_strict_a_held_out_label_never_enters_its_fit():
    specs = [preset(n, w, r) for n in ("mobilenet_v2", "mobilenet_v3_small")
             for w, r in ((0.5, 96), (0.75, 128), (1.0, 160), (1.0, 224))]
    X = np.array([spec_features(s) for s in specs])
    B = np.array([baseline_features(s) for s in specs])
    y = np.array([s.macs() / 1e7 + 2.0 for s in specs]) * np.linspace(0.9, 1.1, len(specs))
    fit = fit_user_device(X, y, B)
    assert fit["cv_rule"] == "leave-one-network-out CV"
    assert fit["expected_error"] == fit["cv"]["rmspe"] > 0
    changed = y.copy()
    changed[3] *= 10  # a wild label on the held-out network 3
    refit = fit_user_device(X, changed, B)
    pred, repred = fit["cv_predictions"], refit["cv_predictions"]
    assert repred[3] == pytest.approx(pred[3], rel=1e-9)  # its own label is never used for it
    assert not np.allclose(np.delete(repred, 3), np.delete(pred, 3))  # but it is for the others


def test_bad_calibrate_input(runs_dir: Path):
    code, out = bench("--device", "pixel1", "--model", "mobilenet_v3_small", "--runs-dir",
                      str(runs_dir), "--name", "phone")
    assert code == 0, out
    for args, message in (
        (["--calibrate", str(runs_dir / "bench"), "--as", "cpu"], "built-in device"),
        (["--calibrate", str(runs_dir / "bench")], "needs --as"),
        (["--calibrate", str(runs_dir / "nowhere"), "--as", "mine"], "no such run"),
        (["--calibrate", str(runs_dir / "bench"), "--as", "mine"], "no measured rows"),
    ):
        code, out = bench(*args, "--runs-dir", str(runs_dir))
        assert code == 2 and message in out and len(out.strip().splitlines()) == 1, out
    assert not (runs_dir / "devices").exists()
    with pytest.raises(Exception, match="lower-case"):
        check_user_name("My Pixel")


@pytest.mark.skipif(not xnnpack.available(), reason="ExecuTorch is not installed "
                    "(pip install -e '.[device]')")
def test_calibrate_on_xnnpack_measurements_then_predict(runs_dir: Path, tmp_path: Path):
    base = preset("mobilenet_v3_small", 0.5, 32)
    nets = [base.replace(blocks=base.blocks[:k], resolution=r, name=f"tiny{k}_{r}")
            for k, r in ((1, 16), (1, 32), (2, 24), (1, 48), (2, 40))]
    for i, spec in enumerate(nets):
        f = tmp_path / f"{spec.name}.yaml"
        f.write_text(yaml.safe_dump(spec.validate().to_dict()))
        code, out = bench("--device", "xnnpack", "--arch", str(f), "--name", f"m{i}",
                          "--runs-dir", str(runs_dir), *FAST)
        assert code == 0, out
    code, out = bench("--calibrate", str(runs_dir / "bench"), "--as", "myhost", "--json",
                      "--runs-dir", str(runs_dir), "--name", "cal")
    assert code == 0, out
    s = json.loads(out.strip().splitlines()[-1])
    assert s["device"] == "myhost" and s["calibrated_from"] == "xnnpack"
    assert s["n_networks"] == 5 and np.isfinite(s["expected_error"])
    saved = json.loads((runs_dir / "devices" / "myhost.json").read_text())
    assert saved["expected_error"] == s["expected_error"] and saved["n_rows"] == 5
    rows = pd.read_csv(runs_dir / "bench" / "cal" / "metrics.csv")
    cv = rows[rows.kind == "calibration_cv"]
    assert len(cv) == 5 and (cv.latency_ms > 0).all()  # held-out predictions, one per network
    rmspe = float(np.sqrt(np.mean(((cv.latency_ms - cv.measured_ms) / cv.measured_ms) ** 2)))
    assert rmspe == pytest.approx(s["expected_error"], rel=1e-9)
    # the new device, by name: bench and the latency interface
    held_out = base.replace(blocks=base.blocks[:2], resolution=32, name="held_out").validate()
    f = tmp_path / "held_out.yaml"
    f.write_text(yaml.safe_dump(held_out.to_dict()))
    code, out = bench("--device", "myhost", "--arch", str(f), "--json", "--runs-dir",
                      str(runs_dir))
    assert code == 0, out
    p = json.loads(out.strip().splitlines()[-1])
    assert p["device"] == "myhost" and p["source"] == "model" and p["latency_ms"] > 0
    assert "measured on xnnpack" in p["provenance"]
    assert p["expected_error"] >= s["expected_error"]
    add_runs_dir(runs_dir)
    lat = predict(held_out, "myhost")
    assert lat.source == "model" and lat.ms == pytest.approx(p["latency_ms"])
