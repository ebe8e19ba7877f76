"""`--from` (lotto/cli/network.py): one option, one meaning, in every command that takes a
network (a preset, a spec file, a run directory with best.yaml / final.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lotto.arch import preset
from lotto.cli import app
from lotto.config import load_config
from lotto.errors import LottoError
from lotto.experiments.build_v3 import construct

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def assert_user_error(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    message = result.stderr.strip()
    assert message.count("\n") == 0 and message.startswith("error:"), message
    for needle in needles:
        assert needle in message, (needle, message)


@pytest.fixture
def searched(tmp_path: Path) -> Path:
    """A search run directory: its best network is MobileNetV3-Small x0.5 (head pools first)."""
    run = tmp_path / "runs" / "search" / "found"
    run.mkdir(parents=True)
    preset("mobilenet_v3_small", 0.5).save(run / "best.yaml")
    return run


def bench_json(runs_dir: Path, *args: str) -> dict:
    result = invoke("bench", "--device", "pixel1", "--json", "--runs-dir", str(runs_dir), *args)
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_bench_from_preset_file_and_run_mean_the_same_network(
    searched: Path, runs_dir: Path
) -> None:
    spec = searched / "best.yaml"
    by_from = {str(v): bench_json(runs_dir, "--from", str(v)) for v in (searched, spec)}
    assert by_from[str(searched)]["latency_ms"] == by_from[str(spec)]["latency_ms"]
    assert by_from[str(spec)]["latency_ms"] == bench_json(runs_dir, "--arch", str(spec))[
        "latency_ms"]
    preset_from = bench_json(runs_dir, "--from", "mobilenet_v3_small")
    preset_model = bench_json(runs_dir, "--model", "mobilenet_v3_small")
    assert preset_from["latency_ms"] == preset_model["latency_ms"]
    assert preset_from["macs"] > by_from[str(spec)]["macs"]  # x1 vs x0.5: not the same net


def test_bench_from_and_model_together_is_a_user_error(runs_dir: Path) -> None:
    result = invoke("bench", "--device", "pixel1", "--from", "mobilenet_v3_small",
                    "--model", "mobilenet_v3_large", "--runs-dir", str(runs_dir))
    assert_user_error(result, "--from", "--model")


def test_build_v3_from_a_searched_network_skips_what_it_cannot_take(
    searched: Path, runs_dir: Path
) -> None:
    result = invoke("build-v3", "--variant", "small", "--from", str(searched),
                    "--runs-dir", str(runs_dir), "latency.host=none")
    assert result.exit_code == 0, (result.output, result.exception)
    skipped = [line for line in result.output.splitlines() if "skipped" in line]
    assert skipped == [
        "change efficient_last_stage skipped: 'mobilenet_v3_small+stem16' already pools before "
        "its last 1x1 (head.hidden set)"
    ]
    (run,) = (runs_dir / "build-v3").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["changes"] == ["hswish", "se", "stem16"]
    assert len(summary["skipped"]) == 1


def test_build_v3_own_seed_still_stops_on_a_change_that_does_not_apply() -> None:
    cfg = load_config("build-v3", overrides=["changes.hswish_from=5000"])
    with pytest.raises(LottoError, match="change hswish: h-swish from 5000"):
        construct(cfg)
    skipped: list[str] = []
    cfg = load_config("build-v3", overrides=["changes.hswish_from=5000", "from=mnasnet_a1"])
    steps = construct(cfg, skipped)
    assert "hswish" not in [s.change for s in steps]
    assert skipped == [
        "change hswish skipped: h-swish from 5000 channels: no layer of 'mnasnet_a1' is that "
        "wide (widest 320)"
    ]


def saved_config(runs_dir: Path, command: str) -> dict:
    (run,) = (runs_dir / command).iterdir()
    return yaml.safe_load((run / "config.yaml").read_text())


def test_lottery_from_a_run_trains_its_network(searched: Path, runs_dir: Path) -> None:
    result = invoke("lottery", "--from", str(searched), "--runs-dir", str(runs_dir),
                    "data.name=digits", "train.iterations=2it", "train.eval_every=2it",
                    "lottery.rounds=1", "lottery.controls=[]", "train.batch_size=16")
    assert result.exit_code == 0, (result.output, result.exception)
    assert saved_config(runs_dir, "lottery")["model"]["name"] == str(searched)


def test_rethink_from_a_network_or_a_lottery_run() -> None:
    from lotto.cli.rethink import _from

    assert _from(None) == {}
    assert _from("mobilenet_v3_small") == {"model.name": "mobilenet_v3_small"}


def test_rethink_from_routes_runs(searched: Path, tmp_path: Path) -> None:
    from lotto.cli.rethink import _from

    assert _from(str(searched)) == {"model.name": str(searched)}
    assert _from(str(searched / "best.yaml")) == {"model.name": str(searched / "best.yaml")}
    lottery_run = tmp_path / "runs" / "lottery" / "x"
    lottery_run.mkdir(parents=True)
    (lottery_run / "config.yaml").write_text(yaml.safe_dump({"lottery": {"rounds": 1}}))
    assert _from(str(lottery_run)) == {"from": str(lottery_run)}
    assert _from(str(tmp_path / "runs" / "lottery" / "missing")) == {
        "from": str(tmp_path / "runs" / "lottery" / "missing")
    }
