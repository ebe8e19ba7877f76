"""`lotto build-v3`: the construction lands on the published networks; CLI, files, resume."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import lotto.experiments.build_v3 as bv3
from lotto.arch import load_spec, preset
from lotto.arch.build import build_network
from lotto.cli import app
from lotto.config import load_config
from lotto.errors import LottoError

FAST = ["latency.host=none", "latency.phones=[]"]


def cfg(*overrides: str):
    return load_config("build-v3", overrides=list(overrides))


@pytest.mark.parametrize("variant", ["large", "small"])
def test_variants_end_exactly_on_the_published_networks(variant: str) -> None:
    steps = bv3.construct(cfg(f"variant={variant}"))
    target = preset(f"mobilenet_v3_{variant}")
    assert steps[-1].spec == target
    assert steps[-1].spec.params() == target.params()
    expected = ["seed", "hswish", "se", "stem16", "efficient_last_stage"]
    if variant == "large":
        expected.insert(1, "blocks")
        assert steps[0].spec.name == "mnasnet_a1"  # the paper's seed
    assert [s.change for s in steps] == expected


def test_each_change_does_what_the_paper_says() -> None:
    steps = {s.change: s.spec for s in bv3.construct(cfg("variant=large"))}
    before, after = steps["blocks"], steps["hswish"]
    assert before.macs() == after.macs() and before.params() == after.params()
    assert after.stem.act == "hswish" and after.blocks[6].act == "hswish"
    assert after.blocks[5].act == "relu"  # h-swish starts at the first 80-channel block
    se = steps["se"]
    mids = {x.mid for x in se.layers() if x.op == "se"}
    assert mids == {24, 32, 120, 168, 240} and se.se_gate == "hsigmoid"
    # halving the stem saves about 10M MAdds (paper: "10M fewer MAdds")
    assert 9e6 < se.macs() - steps["stem16"].macs() < 11.5e6
    # the efficient last stage saves about 30M MAdds and drops one block
    last = steps["efficient_last_stage"]
    assert 25e6 < steps["stem16"].macs() - last.macs() < 40e6
    assert len(last.blocks) == len(steps["stem16"].blocks) - 1
    assert (last.head.conv, last.head.hidden) == (960, 1280)


def test_switches_and_custom_seed(tmp_path: Path) -> None:
    path = tmp_path / "seed.yaml"
    preset("mnasnet_b1").save(path)
    steps = bv3.construct(cfg("variant=large", f"from={path}", "changes.stem16=false",
                              "changes.se_blocks=[0,2]", "changes.hswish_from=96"))
    # a custom seed keeps its own blocks (no "blocks" step) and its own stem width
    assert [s.change for s in steps] == ["seed", "hswish", "se", "efficient_last_stage"]
    final = steps[-1].spec
    assert final.stem.channels == 32
    assert [i for i, b in enumerate(final.blocks) if b.se] == [0, 2]
    first_hs = min(i for i, b in enumerate(final.blocks) if b.act == "hswish")
    assert final.blocks[first_hs].out == 96
    assert all(b.act == "relu" for b in final.blocks[:first_hs])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["variant=medium"], "variant"),
        (["from=no_such_net"], "neither a preset"),
        (["changes.se_blocks=[0,99]"], "blocks 0..15"),
        (["changes.hswish_from=4096"], "no layer"),
        (["latency.phones=[iphone]"], "latency.phones"),
        (["export=tflite"], "export"),
    ],
)
def test_impossible_builds_are_lotto_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(LottoError, match=message):
        bv3.construct(cfg(*overrides))


def test_a_from_network_skips_the_changes_it_cannot_take() -> None:
    """Issue 19's hand-off: efficient last stage twice is skipped with one line, not an error."""
    skipped: list[str] = []
    steps = bv3.construct(cfg("from=mobilenet_v3_small"), skipped)
    assert "efficient_last_stage" not in [s.change for s in steps]
    assert len(skipped) == 1 and "already pools" in skipped[0]


def test_cli_run_writes_files_and_resumes(tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    real = bv3.latency_ms

    def counting(spec, device, c):
        calls.append(device)
        return real(spec, device, c)

    monkeypatch.setattr(bv3, "latency_ms", counting)
    runs = tmp_path / "runs"
    args = ["build-v3", "--variant", "small", "--runs-dir", str(runs), "--resolution", "64",
            "latency.min_run_time=0.01", "--export", "onnx"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "exactly mobilenet_v3_small" in result.output
    (run,) = (runs / "build-v3").iterdir()
    frame = pd.read_csv(run / "metrics.csv")
    assert list(frame.change) == ["seed", "hswish", "se", "stem16", "efficient_last_stage"]
    for col in ("step", "change", "description", "network", "params", "madds", "d_params",
                "d_madds", "latency_ms_host", "host_device", "host_source", "host_error",
                "latency_ms_pixel1", "pixel1_source", "pixel1_error"):
        assert col in frame.columns, col
    assert frame.params.iloc[-1] == preset("mobilenet_v3_small").params()
    assert (frame.latency_ms_host > 0).all() and (frame.latency_ms_pixel1 > 0).all()
    pd.testing.assert_frame_equal(pd.read_parquet(run / "metrics.parquet"), frame,
                                  check_exact=False, check_dtype=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["equals_published"] and summary["final"]["params"] == 2_542_856
    assert (run / "specs" / "00_seed.yaml").exists() and (run / "final.yaml").exists()
    onnx.checker.check_model(onnx.load(str(run / "final.onnx")))
    assert len(calls) == 10  # 5 steps x (host + pixel1)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert len(calls) == 10  # finished steps are not re-measured


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["build-v3", "--variant", "huge", "--runs-dir",
                                      str(tmp_path), *FAST])
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message and "variant" in message
    assert not (tmp_path / "build-v3").exists()  # no run directory for a bad config
    result = CliRunner().invoke(app, ["build-v3", "--pretrained", str(tmp_path / "x.pth"),
                                      "--runs-dir", str(tmp_path), *FAST])
    assert result.exit_code == 2 and "not found" in result.stderr
    wrong = tmp_path / "large.pth"
    torch.save(build_network(preset("mobilenet_v3_large")).state_dict(), wrong)
    result = CliRunner().invoke(app, ["build-v3", "--variant", "small", "--pretrained", str(wrong),
                                      "--runs-dir", str(tmp_path), *FAST])
    assert result.exit_code == 2 and "not the same architecture" in result.stderr
    assert not (tmp_path / "build-v3").exists()


def test_train_reports_accuracy(tmp_path: Path) -> None:
    c = cfg("variant=small", "train_steps=final", f"run.runs_dir={tmp_path}", *FAST,
            "data.name=digits", "data.val_size=100", "train.iterations=2it",
            "train.batch_size=16", "device=cpu")
    result = bv3.run_build_v3(c)
    final = result.metrics.iloc[-1]
    assert 0 <= final.test_accuracy <= 1 and final.trained_params > 0
    assert pd.isna(result.metrics.iloc[0].test_accuracy)  # only the final network trains
    assert (result.run.path / "trained_04_efficient_last_stage.safetensors").exists()
    trained = load_spec(result.run.path / "trained_04_efficient_last_stage.yaml")
    assert trained.bn_momentum == 0.1 and trained.in_channels == 1 and trained.num_classes == 10
    assert trained.resolution == 8 and trained.output_size() >= 4  # strides cut for 8x8 digits


def test_pixel_alias_is_a_phone(tmp_path: Path) -> None:
    c = cfg("variant=small", "latency.host=none", "latency.phones=[pixel, pixel1, pixel3]",
            f"run.runs_dir={tmp_path}")
    bv3.validate(c)  # the project's one device list: `pixel` = pixel1
    frame = bv3.run_build_v3(c).metrics
    assert "latency_ms_pixel1" in frame.columns and "latency_ms_pixel" not in frame.columns
    assert "latency_ms_pixel3" in frame.columns and (frame.latency_ms_pixel1 > 0).all()
    assert (frame.pixel1_source == "model").all()

