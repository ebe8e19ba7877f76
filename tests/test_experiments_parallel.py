"""`lottery` and `rethink` on the execution layer: the same numbers on every backend, failed
units that do not stop the run and are retried exactly, and the `parallel:` section's options."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import METRICS_COLUMNS
from omegaconf import DictConfig
from rich.progress import Progress
from safetensors.torch import load_file
from typer.testing import CliRunner

import lotto.experiments.lottery as lottery_mod
import lotto.experiments.rethink as rethink_mod
from lotto.cli import app
from lotto.config import config_hash, load_config
from lotto.experiments.common import FAULT_ENV
from lotto.experiments.lottery import run_lottery
from lotto.experiments.rethink import run_rethink
from lotto.parallel import Runner

MakeCfg = Callable[..., DictConfig]
RESULTS = [c for c in METRICS_COLUMNS if c != "seconds"]
RETHINK = [  # test_rethink's tiny grid: 10 cells, structured and unstructured
    "data.name=digits", "data.val_size=100", "model.width=0.0625", "train.iterations=6it",
    "train.batch_size=32", "finetune.iterations=2it", "grid.seeds=1", "grid.lrs=[0.1]",
    "pruning.unstructured.modes=[finetune,scratch_e,ticket,reinit]", "device=cpu",
]
QUIET = Progress(disable=True)


@pytest.fixture(scope="module")
def pool() -> Iterator[Runner]:
    """Two worker processes of one thread each, shared by the tests (a worker starts in seconds)."""
    with Runner("process", workers=2, threads_per_worker=1) as runner:
        yield runner


def lottery_results(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path / "metrics.csv")
    return frame[RESULTS].sort_values(["seed", "round", "variant"]).reset_index(drop=True)


def rethink_results(frame: pd.DataFrame) -> pd.DataFrame:
    key = ["pruning", "method", "ratio", "mode", "lr", "seed"]
    return frame.drop(columns="seconds").sort_values(key).reset_index(drop=True)


def trainings(monkeypatch: pytest.MonkeyPatch, module: object) -> list[str]:
    """Record the `desc` of every training `module` starts in this process."""
    calls: list[str] = []
    real = module.train

    def spy(*args: object, **kw: object) -> object:
        calls.append(str(kw["desc"]))
        return real(*args, **kw)

    monkeypatch.setattr(module, "train", spy)
    return calls


# --- the same numbers whatever the backend --------------------------------------------------------


def test_lottery_same_metrics_serial_and_process_1_or_2_workers(
    lottery_cfg: MakeCfg, tmp_path: Path, pool: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = ("lottery.rounds=1", "lottery.controls=[reinit,random_mask]", "lottery.seeds=2")
    one = ("parallel.backend=process", "parallel.workers=1", "parallel.threads_per_worker=1")
    paths = {}
    for name, more, runner in (("serial", (), None), ("one", one, None), ("two", (), pool)):
        cfg = lottery_cfg(*extra, *more, f"run.runs_dir={tmp_path / name}")
        calls = trainings(monkeypatch, lottery_mod)
        paths[name] = run_lottery(cfg, progress=QUIET, runner=runner).run.path
        assert len(calls) == (8 if name == "serial" else 0)  # else the workers trained
    serial = lottery_results(paths["serial"])
    assert len(serial) == 2 * 4 and serial.seed.nunique() == 2
    for name in ("one", "two"):
        pd.testing.assert_frame_equal(lottery_results(paths[name]), serial)
        for rnd in (0, 1):
            rel = f"seed1/round{rnd}/trained.safetensors"
            a, b = load_file(str(paths[name] / rel)), load_file(str(paths["serial"] / rel))
            assert all(torch.equal(a[k], b[k]) for k in b)


def test_rethink_same_metrics_serial_and_process_2_workers(tmp_path: Path, pool: Runner) -> None:
    frames = []
    for name, runner in (("serial", None), ("two", pool)):
        cfg = load_config("rethink", overrides=[*RETHINK, f"run.runs_dir={tmp_path / name}"])
        frames.append(run_rethink(cfg, progress=QUIET, runner=runner).metrics)
    assert len(frames[0]) == 10
    pd.testing.assert_frame_equal(rethink_results(frames[1]), rethink_results(frames[0]))


# --- failed units ---------------------------------------------------------------------------------


def test_lottery_unit_that_kills_its_worker_fails_alone_and_is_retried_alone(
    lottery_cfg: MakeCfg, monkeypatch: pytest.MonkeyPatch, pool: Runner
) -> None:
    cfg = lottery_cfg("lottery.controls=[reinit]")  # rounds 0..2: 5 units
    monkeypatch.setenv(FAULT_ENV, "kill:seed=0,round=1,variant=reinit")
    first = run_lottery(cfg, progress=QUIET, runner=pool)
    (failure,) = first.failures
    assert failure["status"] == "failed" and failure["error"].startswith("worker died (signal 9")
    assert sorted(zip(first.metrics["round"], first.metrics.variant)) == [
        (0, "ticket"), (1, "ticket"), (2, "reinit"), (2, "ticket")]
    csv = pd.read_csv(first.run.path / "failures.csv")
    assert csv[["seed", "round", "variant", "status"]].values.tolist() == [
        [0, 1, "reinit", "failed"]]
    assert first.summary["failures"] == first.failures

    monkeypatch.delenv(FAULT_ENV)
    calls = trainings(monkeypatch, lottery_mod)  # the re-run is serial: count its trainings
    again = run_lottery(cfg, progress=QUIET)
    assert calls == ["seed 0 round 1 reinit"] and again.failures == []
    assert len(again.metrics) == 5 and not (again.run.path / "failures.csv").exists()
    kept = first.metrics.set_index(["round", "variant"]).seconds
    assert (again.metrics.set_index(["round", "variant"]).seconds.loc[kept.index] == kept).all()


def test_failed_ticket_skips_the_later_rounds_of_its_seed_and_exits_1(
    tiny_lottery_args: list[str], runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["lottery", *tiny_lottery_args, "lottery.controls=[reinit]", "lottery.seeds=2"]
    monkeypatch.setenv(FAULT_ENV, "raise:seed=0,round=1,variant=ticket")
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 1, out.output
    assert "failed: seed=0,round=1,variant=ticket: RuntimeError: injected fault" in out.output
    assert "1 failed, 2 skipped" in out.output
    (path,) = (runs_dir / "lottery").iterdir()
    failures = pd.read_csv(path / "failures.csv")
    assert failures[["seed", "round", "variant", "status"]].values.tolist() == [
        [0, 1, "ticket", "failed"], [0, 2, "ticket", "skipped"], [0, 2, "reinit", "skipped"]]
    assert "needs the round 1 ticket" in failures.error.iloc[1]
    metrics = pd.read_csv(path / "metrics.csv")
    assert len(metrics[metrics.seed == 1]) == 5 and len(metrics[metrics.seed == 0]) == 2

    monkeypatch.delenv(FAULT_ENV)
    calls = trainings(monkeypatch, lottery_mod)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert sorted(calls) == ["seed 0 round 1 ticket", "seed 0 round 2 reinit",
                             "seed 0 round 2 ticket"]
    assert not (path / "failures.csv").exists() and len(pd.read_csv(path / "metrics.csv")) == 10


def test_rethink_cell_that_kills_its_worker_fails_alone_and_is_retried_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool: Runner
) -> None:
    cfg = load_config("rethink", overrides=[
        *RETHINK, f"run.runs_dir={tmp_path}", "pruning.kinds=[unstructured]",
        "pruning.unstructured.modes=[finetune,ticket]"])
    cell = "pruning=unstructured,method=magnitude,ratio=0.9,mode=ticket,lr=0.1,seed=0"
    monkeypatch.setenv(FAULT_ENV, f"kill:{cell}")
    first = run_rethink(cfg, progress=QUIET, runner=pool)
    assert [f["mode"] for f in first.failures] == ["ticket"]
    assert first.failures[0]["error"].startswith("worker died (signal 9")
    assert list(first.metrics["mode"]) == ["baseline", "finetune"]
    assert pd.read_csv(first.run.path / "failures.csv")["mode"].tolist() == ["ticket"]

    monkeypatch.delenv(FAULT_ENV)
    calls = trainings(monkeypatch, rethink_mod)
    again = run_rethink(cfg, progress=QUIET)
    assert calls == ["seed 0 lr 0.1 magnitude 0.9 ticket"] and again.failures == []
    assert not (again.run.path / "failures.csv").exists()


def test_rethink_failed_baseline_skips_its_pruned_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config("rethink", overrides=[
        *RETHINK, f"run.runs_dir={tmp_path}", "pruning.kinds=[unstructured]",
        "pruning.unstructured.modes=[ticket]", "grid.lrs=[0.1,0.01]"])
    monkeypatch.setenv(FAULT_ENV, "raise:pruning=none,method=none,ratio=0,mode=baseline,"
                                  "lr=0.01,seed=0")
    result = run_rethink(cfg, progress=QUIET)
    assert [(f["lr"], f["mode"], f["status"]) for f in result.failures] == [
        (0.01, "baseline", "failed"), (0.01, "ticket", "skipped")]
    assert sorted(zip(result.metrics.lr, result.metrics["mode"])) == [
        (0.1, "baseline"), (0.1, "ticket")]


# --- options --------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["--workers", "0"], "parallel.workers"),
    (["parallel.backend=gpu"], "parallel.backend"),
    (["parallel.timeout=-1", "parallel.backend=process"], "parallel.timeout"),
    (["parallel.workers=2"], "need parallel.backend=process or ray"),
    (["parallel.threads_per_worker=two"], "parallel.threads_per_worker"),
])
@pytest.mark.parametrize("command", ["lottery", "rethink"])
def test_bad_parallel_options_are_one_line_and_exit_2(
    runs_dir: Path, command: str, args: list[str], message: str
) -> None:
    out = CliRunner().invoke(app, [command, "--runs-dir", str(runs_dir), "data.name=digits",
                                   *args])
    assert out.exit_code == 2, out.output
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr
    assert not runs_dir.exists()


@pytest.mark.parametrize("command", ["bench", "build-v3"])
def test_every_command_validates_its_parallel_section(command: str) -> None:
    out = CliRunner().invoke(app, [command, "parallel.backend=gpu"])
    assert out.exit_code == 2 and "parallel.backend" in out.stderr, out.output


def test_parallel_section_is_not_part_of_the_run_identity(
    tiny_lottery_args: list[str], runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = load_config("lottery", overrides=tiny_lottery_args)
    busy = load_config("lottery", overrides=[*tiny_lottery_args, "parallel.backend=process",
                                             "parallel.workers=2", "parallel.timeout=60"])
    assert config_hash(plain, "lottery") == config_hash(busy, "lottery")
    cli = CliRunner()
    assert cli.invoke(app, ["lottery", *tiny_lottery_args, "--rounds", "1"]).exit_code == 0
    # resuming the serial run with --workers 2: the same run directory, nothing retrained
    seen: list[DictConfig] = []
    real = lottery_mod.run_lottery

    def spy(cfg: DictConfig, **kw: object) -> object:
        seen.append(cfg)
        return real(cfg, **kw)

    monkeypatch.setattr(lottery_mod, "run_lottery", spy)  # the command imports it at call time
    out = cli.invoke(app, ["lottery", *tiny_lottery_args, "--rounds", "1", "--workers", "2"])
    assert out.exit_code == 0, out.output
    assert seen[0].parallel.backend == "process" and seen[0].parallel.workers == 2
    assert len(list((runs_dir / "lottery").iterdir())) == 1


def test_help_lists_workers() -> None:
    for command in ("lottery", "rethink"):
        out = CliRunner().invoke(app, [command, "--help"])
        assert "--workers" in out.output


# --- batched replicas -----------------------------------------------------------------------------


def test_lottery_batch_replicas_matches_serial_and_falls_back(
    lottery_cfg: MakeCfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`parallel.batch_replicas`: a round's units (3 variants x 2 seeds) train as one batched
    task, with late rewinding (theta_k from the batched round 0). Float32, Adam, 30 steps: the
    batched sums round differently; measured: losses differ by <= 1.5e-7, accuracies, masks and
    early-stop iterations not at all. Allowed: 1e-4 in losses, one example in accuracies (a
    near-tied argmax may flip), equal masks (ranks move only on ties to ~1e-7: none here)."""
    extra = ("lottery.controls=[reinit,random_mask]", "lottery.seeds=2", "lottery.rewind=5it")
    paths = {}
    for name in ("serial", "batched"):
        cfg = lottery_cfg(*extra, f"parallel.batch_replicas={name == 'batched'}",
                          f"run.runs_dir={tmp_path / name}")
        calls = trainings(monkeypatch, lottery_mod)
        paths[name] = run_lottery(cfg, progress=QUIET).run.path
        assert len(calls) == (0 if name == "batched" else 2 * 7)  # batched: no one-by-one train
    serial, batched = (lottery_results(paths[n]) for n in ("serial", "batched"))
    assert len(serial) == 2 * 7
    one_example = 1 / 143 + 1e-9  # digits: 143 validation and 360 test examples
    for col in RESULTS:
        a, b = serial[col], batched[col]
        if col.endswith("accuracy"):
            assert (a - b).abs().max() <= one_example, col
        elif col.endswith("loss"):
            assert (a - b).abs().max() <= 1e-4, col
        else:
            assert a.equals(b), col  # keys, densities, iterations, early-stop iterations
    for seed in (0, 1):
        for rnd in (0, 1, 2):
            rel = f"seed{seed}/round{rnd}/mask.safetensors"
            a, b = load_file(str(paths["serial"] / rel)), load_file(str(paths["batched"] / rel))
            assert all(torch.equal(a[k], b[k]) for k in a)
    assert "batch_replicas: off" not in capsys.readouterr().out

    # a model `can_batch` refuses (dropout) trains one by one, and the run says why once
    cfg = lottery_cfg("lottery.rounds=1", "model.dropout=0.5", "parallel.batch_replicas=true",
                      f"run.runs_dir={tmp_path / 'dropout'}")
    calls = trainings(monkeypatch, lottery_mod)
    result = run_lottery(cfg, progress=QUIET)
    assert len(calls) == 2 and len(result.metrics) == 2 and result.failures == []
    out = capsys.readouterr().out
    assert out.count("batch_replicas: off") == 1 and "dropout" in out
