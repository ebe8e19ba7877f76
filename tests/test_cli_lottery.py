"""`lotto lottery` through the CLI: help, an end-to-end run, and one-line errors with status 2."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import METRICS_COLUMNS
from typer.testing import CliRunner

import lotto.experiments.lottery as lottery_mod
from lotto.cli import app
from lotto.train import TrainingDiverged


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def invoke(cli: CliRunner, *args: str):
    return cli.invoke(app, ["lottery", *args])


def assert_user_error(result, *needles: str) -> str:
    """Exit status 2, one line on stderr naming `needles`, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    message = result.stderr.strip()
    assert message.count("\n") == 0, message
    assert message.startswith("error:"), message
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def run_dir(runs_dir: Path) -> Path:
    (path,) = (runs_dir / "lottery").iterdir()
    return path


def test_help(cli: CliRunner) -> None:
    top = cli.invoke(app, ["--help"])
    assert top.exit_code == 0 and "lottery" in top.output
    sub = cli.invoke(app, ["lottery", "--help"])
    assert sub.exit_code == 0
    for option in (
        "--config",
        "--prune-rate",
        "--rounds",
        "--seeds",
        "--name",
        "--runs-dir",
        "--force",
        "--device",
    ):
        assert option in sub.output


def test_end_to_end(cli: CliRunner, tiny_lottery_args: list[str], runs_dir: Path) -> None:
    result = invoke(
        cli,
        *tiny_lottery_args,
        "lottery.controls=[reinit,random_mask]",
        "--rounds",
        "1",
        "--prune-rate",
        "0.5",
        "--name",
        "e2e",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    path = runs_dir / "lottery" / "e2e"
    for name in (
        "metrics.csv",
        "metrics.parquet",
        "curves.csv",
        "summary.json",
        "lottery.png",
        "config.yaml",
        "seed0/init.safetensors",
        "seed0/round1/mask.safetensors",
    ):
        assert (path / name).is_file(), name
    metrics = pd.read_csv(path / "metrics.csv")
    assert set(METRICS_COLUMNS) <= set(metrics.columns)
    assert set(METRICS_COLUMNS) <= set(pd.read_parquet(path / "metrics.parquet").columns)
    assert len(metrics) == 4
    # --prune-rate 0.5: hidden layers keep half, the output layer three quarters
    assert metrics[metrics["round"] == 1].density.iloc[0] == pytest.approx(
        (0.5 * (19200 + 30000) + 0.75 * 1000) / 50200, abs=1e-4
    )
    summary = json.loads((path / "summary.json").read_text())
    assert summary["rounds_finished"] == 1
    assert (path / "lottery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the terminal table and the run directory
    assert "reinit" in result.stdout and "random_mask" in result.stdout
    assert "e2e" in result.stdout.replace("\n", "")

    # the saved config re-runs as is: same run, nothing recomputed, success
    again = cli.invoke(app, ["lottery", "--config", str(path / "config.yaml")])
    assert again.exit_code == 0, (again.output, again.exception)
    assert list((runs_dir / "lottery").iterdir()) == [path]
    pd.testing.assert_frame_equal(pd.read_csv(path / "metrics.csv"), metrics)


def test_saved_config_of_a_hash_named_run_resolves_to_it(
    cli: CliRunner, tiny_lottery_args: list[str], runs_dir: Path
) -> None:
    assert invoke(cli, *tiny_lottery_args, "--rounds", "1").exit_code == 0
    path = run_dir(runs_dir)
    again = invoke(cli, "--config", str(path / "config.yaml"))
    assert again.exit_code == 0, again.output
    assert [p.name for p in (runs_dir / "lottery").iterdir()] == [path.name]


def test_fake_fashion_mnist_end_to_end(
    cli: CliRunner, tiny_lottery_args: list[str], fake_fashion_mnist: Path, runs_dir: Path
) -> None:
    result = invoke(
        cli,
        *tiny_lottery_args,
        "data.name=fashion-mnist",
        f"data.root={fake_fashion_mnist}",
        "data.val_size=20",
        "train.batch_size=20",
        "--rounds",
        "1",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    metrics = pd.read_csv(run_dir(runs_dir) / "metrics.csv")
    assert len(metrics) == 2
    # LeNet-300-100 on 28x28: 266,200 weights, 20% of the hidden and 10% of the output pruned
    assert metrics.density.iloc[1] == pytest.approx(
        (0.8 * (784 * 300 + 300 * 100) + 0.9 * 1000) / 266_200, abs=1e-5
    )


# --- each bad input: status 2 and one line -------------------------------------------------------


@pytest.mark.parametrize("rate", ["0", "1", "1.5", "-0.1"])
def test_prune_rate_outside_0_1(
    cli: CliRunner, tiny_lottery_args: list[str], rate: str, runs_dir: Path
) -> None:
    assert_user_error(
        invoke(cli, *tiny_lottery_args, f"lottery.prune_rate={rate}"), "lottery.prune_rate"
    )
    assert_user_error(invoke(cli, *tiny_lottery_args, "--prune-rate", rate), "lottery.prune_rate")
    assert not runs_dir.exists()


@pytest.mark.parametrize("rounds", ["0", "-1"])
def test_rounds_below_1(cli: CliRunner, tiny_lottery_args: list[str], rounds: str) -> None:
    assert_user_error(invoke(cli, *tiny_lottery_args, "--rounds", rounds), "lottery.rounds")
    assert_user_error(invoke(cli, *tiny_lottery_args, f"lottery.rounds={rounds}"), "lottery.rounds")


@pytest.mark.parametrize(
    "override,key",
    [
        ("lottery.nope=1", "lottery.nope"),
        ("nope=2", "nope"),
        ("train.learning_rate=0.1", "train.learning_rate"),
    ],
)
def test_unknown_config_key(cli: CliRunner, override: str, key: str) -> None:
    assert_user_error(invoke(cli, override), f"unknown config key {key}")


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.lr=abc", "train.lr"),
        ("lottery.rounds=2.5", "lottery.rounds"),
        ("train.batch_size=[1]", "train.batch_size"),
    ],
)
def test_wrong_type(cli: CliRunner, override: str, key: str) -> None:
    assert_user_error(invoke(cli, override), f"config key {key}")


def test_option_of_wrong_type_is_a_usage_error(cli: CliRunner) -> None:
    result = invoke(cli, "--rounds", "two")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_override_without_equals(cli: CliRunner) -> None:
    assert_user_error(invoke(cli, "lottery.rounds"), "key=value")


def test_yaml_that_does_not_parse(cli: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("lottery:\n  rounds: [2\n  seeds: 1\n")
    assert_user_error(invoke(cli, "--config", str(bad)), "bad.yaml", "YAML")


def test_missing_config_file(cli: CliRunner, tmp_path: Path) -> None:
    assert_user_error(invoke(cli, "--config", str(tmp_path / "absent.yaml")), "absent.yaml")


def test_unknown_model(cli: CliRunner, tiny_lottery_args: list[str], runs_dir: Path) -> None:
    assert_user_error(
        invoke(cli, *tiny_lottery_args, "model.name=resnet9000"), "resnet9000", "lenet_300_100"
    )
    assert not runs_dir.exists()


def test_model_that_does_not_fit_the_data(cli: CliRunner, tiny_lottery_args: list[str]) -> None:
    assert_user_error(
        invoke(cli, *tiny_lottery_args, "model.name=conv6", "data.image_size=4"), "conv6"
    )


def test_unknown_dataset(cli: CliRunner, tiny_lottery_args: list[str], runs_dir: Path) -> None:
    assert_user_error(invoke(cli, *tiny_lottery_args, "data.name=imagenet22k"), "imagenet22k")
    assert not runs_dir.exists()


def test_missing_data_says_how_to_get_it(
    cli: CliRunner, tiny_lottery_args: list[str], tmp_path: Path, runs_dir: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    message = assert_user_error(
        invoke(
            cli,
            *tiny_lottery_args,
            "data.name=fashion-mnist",
            f"data.root={empty}",
            "data.download=false",
        ),
        str(empty),
    )
    assert "apt-get install dataset-fashion-mnist" in message and "data.download=true" in message
    assert not runs_dir.exists()


def test_unknown_device(cli: CliRunner, tiny_lottery_args: list[str]) -> None:
    assert_user_error(invoke(cli, *tiny_lottery_args, "--device", "tpu"), "tpu")
    # a number where a string is expected is read as that string, not a crash
    assert_user_error(invoke(cli, *tiny_lottery_args, "device=0"), "unknown device '0'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU")
def test_cuda_without_gpu(cli: CliRunner, tiny_lottery_args: list[str], runs_dir: Path) -> None:
    assert_user_error(invoke(cli, *tiny_lottery_args, "--device", "cuda"), "cuda", "GPU")
    assert not runs_dir.exists()


@pytest.mark.parametrize("name", ["a/b", "..", "../escape", "x/../y", "/abs"])
def test_bad_run_name(
    cli: CliRunner, tiny_lottery_args: list[str], runs_dir: Path, tmp_path: Path, name: str
) -> None:
    assert_user_error(invoke(cli, *tiny_lottery_args, "--name", name), "run name")
    assert not runs_dir.exists() or not any(runs_dir.rglob("config.yaml"))
    assert not (tmp_path / "escape").exists()


def test_run_directory_with_a_different_config(
    cli: CliRunner, tiny_lottery_args: list[str], runs_dir: Path
) -> None:
    args = [*tiny_lottery_args, "--rounds", "1", "--name", "same"]
    assert invoke(cli, *args).exit_code == 0
    assert_user_error(invoke(cli, *args, "train.lr=0.01"), "different config", "--force")
    assert "lr: 0.0012" in (runs_dir / "lottery" / "same" / "config.yaml").read_text()
    forced = invoke(cli, *args, "train.lr=0.01", "--force")
    assert forced.exit_code == 0, forced.output
    assert "lr: 0.01" in (runs_dir / "lottery" / "same" / "config.yaml").read_text()
    # and now the new config resumes there
    assert invoke(cli, *args, "train.lr=0.01").exit_code == 0


def test_corrupt_init_checkpoint(
    cli: CliRunner, tiny_lottery_args: list[str], runs_dir: Path
) -> None:
    assert invoke(cli, *tiny_lottery_args).exit_code == 0
    init = run_dir(runs_dir) / "seed0" / "init.safetensors"
    init.write_bytes(init.read_bytes()[: init.stat().st_size // 3])
    assert_user_error(invoke(cli, *tiny_lottery_args), "seed0/init.safetensors", "--force")
    assert invoke(cli, *tiny_lottery_args, "--force").exit_code == 0


def test_corrupt_trained_checkpoint_after_a_partial_run(
    cli: CliRunner, tiny_lottery_args: list[str], runs_dir: Path
) -> None:
    assert invoke(cli, *tiny_lottery_args).exit_code == 0
    path = run_dir(runs_dir)
    # a partial run: round 2 never finished (no row, no files) and round 1's ticket is damaged
    csv = path / "metrics.csv"
    pd.read_csv(csv).query("round < 2").to_csv(csv, index=False)
    for f in (path / "seed0" / "round2").iterdir():
        f.unlink()
    trained = path / "seed0" / "round1" / "trained.safetensors"
    trained.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    assert_user_error(invoke(cli, *tiny_lottery_args), "round1/trained.safetensors")


def test_nan_loss_stops_and_keeps_finished_rounds(
    cli: CliRunner, tiny_lottery_args: list[str], runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, calls = lottery_mod.train, []

    def diverge_in_round_1(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise TrainingDiverged(10)
        return real(*args, **kw)

    monkeypatch.setattr(lottery_mod, "train", diverge_in_round_1)
    assert_user_error(invoke(cli, *tiny_lottery_args), "round 1", "iteration 10")
    assert pd.read_csv(run_dir(runs_dir) / "metrics.csv")["round"].tolist() == [0]


def test_real_nan_loss(cli: CliRunner, tiny_lottery_args: list[str]) -> None:
    assert_user_error(invoke(cli, *tiny_lottery_args, "train.lr=1e30"), "round 0")


def test_keyboard_interrupt_keeps_finished_rows_and_exits_130(
    cli: CliRunner, tiny_lottery_args: list[str], runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, calls = lottery_mod.train, []

    def interrupt_after_3(*args, **kw):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(lottery_mod, "train", interrupt_after_3)
    args = [*tiny_lottery_args, "lottery.controls=[reinit]"]
    result = invoke(cli, *args)
    assert result.exit_code == 130, (result.output, result.exception)
    assert "interrupted" in result.stderr and "Traceback" not in result.output
    metrics = pd.read_csv(run_dir(runs_dir) / "metrics.csv")
    assert sorted(zip(metrics["round"], metrics.variant)) == [
        (0, "ticket"),
        (1, "reinit"),
        (1, "ticket"),
    ]
    monkeypatch.setattr(lottery_mod, "train", real)
    resumed = invoke(cli, *args)
    assert resumed.exit_code == 0, resumed.output
    assert len(pd.read_csv(run_dir(runs_dir) / "metrics.csv")) == 5


def test_resume_after_a_real_sigkill_mid_round(cli: CliRunner, tmp_path: Path) -> None:
    """A real `lotto lottery` process killed with SIGKILL while training round 1, re-run to the
    end, gives the numbers of a run never interrupted, and leaves no temp file behind."""
    args = [
        "data.name=digits",
        "train.iterations=200it",  # a round lasts long enough to be killed in
        "train.eval_every=50it",
        "lottery.rounds=2",
        "lottery.controls=[]",
        "device=cpu",
        "--name",
        "k",
    ]
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    run = killed_dir / "lottery" / "k"
    lotto = Path(sys.executable).parent / "lotto"
    proc = subprocess.Popen(
        [str(lotto), "--threads", "1", "lottery", *args, "--runs-dir", str(killed_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240  # importing torch is slow on a loaded machine
        # round 1's mask is written just before round 1 trains
        while not (run / "seed0" / "round1" / "mask.safetensors").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "round 1 never started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()  # a no-op when it is already dead
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    # killed mid-round: round 0 recorded, round 1 not
    assert pd.read_csv(run / "metrics.csv")["round"].tolist() == [0]
    assert not (run / "seed0" / "round1" / "trained.safetensors").exists()

    resumed = invoke(cli, *args, "--runs-dir", str(killed_dir))
    assert resumed.exit_code == 0, (resumed.output, resumed.exception)
    clean = invoke(cli, *args, "--runs-dir", str(clean_dir))
    assert clean.exit_code == 0, (clean.output, clean.exception)
    for table in ("metrics", "curves"):
        a, b = (pd.read_csv(d / "lottery" / "k" / f"{table}.csv") for d in (killed_dir, clean_dir))
        a, b = (f.drop(columns=[c for c in f.columns if "seconds" in c]) for f in (a, b))
        assert len(a) == (3 if table == "metrics" else 3 * 5)
        pd.testing.assert_frame_equal(a, b)
    assert list(run.rglob("*.tmp")) == []
