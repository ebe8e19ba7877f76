"""`lotto pipeline` end to end on digits with a tiny search space: the rows, the summary's
intervals against a hand computation, resume, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from search_space import TINY_SPACE
from typer.testing import CliRunner

import lotto.experiments.pipeline as pl
from lotto.cli import app
from lotto.config import load_config
from lotto.experiments.common import FAULT_ENV

cli = CliRunner()
COLUMNS = ["method", "target_ms", "seed", "network", "spec_file", "latency_ms", "latency_source",
           "macs", "params", "val_accuracy", "test_accuracy", "train_seconds"]
# The tiny space at 224 px prices 5.1-28 ms on Pixel 1 (its fastest 5.1 ms); 7 ms is reachable by
# every method (V3-Large x0.01: 2.8 ms; V3-Small's narrowest widths: 2.8 ms).
TINY = """\
targets: [7.0]
seeds: [0, 1]
device: cpu
final: {iterations: 3it, batch_size: 32, warmup: 0it}
data: {name: digits, val_size: 200, subset: null}
search:
  config: SEARCH
  search: {controller: random, samples: 2, batch_size: 2}
  train: {iterations: 2it}
netadapt:
  seed_train: 3it
  netadapt: {short_ft: 2it, delta: 0.05x}
netadapt_seed_ratio: 1.1
"""


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.delenv(FAULT_ENV, raising=False)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    search = tmp_path / "search.yaml"
    search.write_text(TINY_SPACE.replace("resolution: 32", "resolution: 224")
                      + "train: {warmup: 1it, batch_size: 32}\nproxy: {cache: false}\n")
    path = tmp_path / "pipeline.yaml"
    path.write_text(TINY.replace("SEARCH", str(search)))
    return path


def config(tiny: Path, tmp_path: Path, *extra: str):
    return load_config("pipeline", tiny, [f"run.runs_dir={tmp_path}/runs", *extra])


def counting(monkeypatch) -> list[tuple]:
    """Count the final trainings (the task function the runner calls)."""
    calls: list[tuple] = []
    real = pl.train_final

    def spy(job, progress=None):
        calls.append((job.method, job.target_ms, job.seed))
        return real(job, progress)

    monkeypatch.setattr(pl, "train_final", spy)
    return calls


def test_end_to_end_rows_files_and_resume(tiny, tmp_path, monkeypatch):
    from lotto.experiments.plan import plan_pipeline

    calls = counting(monkeypatch)
    # --dry-run first: every stage and final training to do, nothing created
    plan = plan_pipeline(config(tiny, tmp_path, "run.name=t"))
    assert len(plan.trainings) == len(plan.todo) == 12 and not plan.exists
    assert plan.stage_seconds > 0 and any("stage search-7ms: 2 of 2" in n for n in plan.notes)
    assert not (tmp_path / "runs").exists()
    # one unit fails (as a crashed training would): the others finish, it goes to failures.csv
    monkeypatch.setenv(FAULT_ENV, "raise:method=mult-v2,target_ms=7,seed=1")
    first = pl.run_pipeline(config(tiny, tmp_path, "run.name=t"))
    run = first.run.path
    assert len(calls) == 12 and len(first.results) == 11
    assert [f["method"] for f in first.failures] == ["mult-v2"]
    assert pd.read_csv(run / "failures.csv").method.tolist() == ["mult-v2"]

    monkeypatch.delenv(FAULT_ENV)
    calls.clear()
    searched = (run / "stages/search/search-7ms/metrics.csv").read_text()
    again = pl.run_pipeline(config(tiny, tmp_path, "run.name=t"))
    assert calls == [("mult-v2", 7.0, 1)]  # only the failed unit is trained again
    assert again.failures == []
    assert not (run / "failures.csv").exists()
    assert (run / "stages/search/search-7ms/metrics.csv").read_text() == searched
    frame = pd.read_csv(run / "results.csv")
    assert list(frame.columns) == COLUMNS
    assert pd.read_parquet(run / "results.parquet").shape == frame.shape
    methods = list(load_config("pipeline").methods)
    assert sorted(frame.method.unique()) == sorted(methods)
    assert frame.groupby(["method", "target_ms", "seed"]).size().eq(1).all() and len(frame) == 12
    kept = first.results.set_index(["method", "seed"]).train_seconds
    now = frame.set_index(["method", "seed"]).train_seconds
    assert (now.loc[kept.index] == kept).all()  # finished rows were not retrained
    # the recipe ran: NetAdapt cut the searched network to the target, baselines are under it
    by = frame.drop_duplicates("method").set_index("method")
    assert (run / "stages/netadapt/netadapt-search-7ms/final.yaml").exists()
    assert by.loc["search+netadapt"].latency_ms <= 7.0 < by.loc["search"].latency_ms
    for m in ("mult-v3-small", "mult-v3-large", "mult-v2", "netadapt-v3-small"):
        assert by.loc[m].latency_ms <= 7.0
    for rel in by.spec_file:
        assert (run / rel).exists()
    assert frame.test_accuracy.between(0, 1).all() and (frame.train_seconds > 0).all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["targets"]["7"]["methods"]["search"]["n"] == 2
    assert (run / "pipeline.png").stat().st_size > 0
    # lotto runs and lotto compare read the pipeline run
    listed = cli.invoke(app, ["runs", "--runs-dir", str(tmp_path / "runs")])
    assert listed.exit_code == 0, listed.output
    assert "pipeline" in listed.output and "t" in listed.output and "complete" in listed.output
    compared = cli.invoke(app, ["compare", str(run)])
    assert compared.exit_code == 0, compared.output
    # --dry-run of the finished run: every stage and training reused, nothing to time
    plan = plan_pipeline(config(tiny, tmp_path, "run.name=t"))
    assert plan.exists and plan.conflict is None and plan.todo == []
    assert plan.stage_seconds == 0 and all(" 0 of " in n for n in plan.notes if "stage" in n)


def test_summary_intervals_and_paired_difference():
    rows = []
    acc = {"mult-v2": [0.80, 0.82, 0.84], "mult-v3-small": [0.70, 0.71, 0.72],
           "search+netadapt": [0.83, 0.86, 0.86]}
    for method, values in acc.items():
        for seed, a in enumerate(values):
            rows.append({"method": method, "target_ms": 10.0, "seed": seed, "network": method,
                         "latency_ms": 9.5, "latency_source": "model", "macs": 1, "params": 2,
                         "test_accuracy": a})
    for method, values in (("mult-v2", [0.5, 0.7]), ("search", [0.6, 0.6])):
        for seed, a in enumerate(values):
            rows.append({**rows[0], "method": method, "target_ms": 20.0, "seed": seed,
                         "test_accuracy": a})
    s = pl.summarize(pd.DataFrame(rows))
    t975 = 4.302652729911275  # Student t, 2 degrees of freedom, 0.975 quantile
    at = s["10"]
    assert at["best_multiplier"] == "mult-v2"
    v2 = at["methods"]["mult-v2"]
    assert v2["mean"] == pytest.approx(0.82)
    assert v2["half_width"] == pytest.approx(t975 * 0.02 / 3 ** 0.5)
    assert v2["lo"] == pytest.approx(0.82 - t975 * 0.02 / 3 ** 0.5)
    assert "diff_to_best_multiplier" not in v2
    diff = at["methods"]["search+netadapt"]["diff_to_best_multiplier"]  # 0.03, 0.04, 0.02
    assert diff["baseline"] == "mult-v2" and diff["n"] == 3
    assert diff["mean"] == pytest.approx(0.03)
    assert diff["half_width"] == pytest.approx(t975 * 0.01 / 3 ** 0.5)  # paired sd 0.01
    small = at["methods"]["mult-v3-small"]["diff_to_best_multiplier"]  # -0.10, -0.11, -0.12
    assert small["mean"] == pytest.approx(-0.11)
    assert small["hi"] == pytest.approx(-0.11 + t975 * 0.01 / 3 ** 0.5)
    two = s["20"]["methods"]["search"]  # 2 seeds: a mean, no interval
    assert two["mean"] == pytest.approx(0.6) and two["half_width"] is None
    assert two["diff_to_best_multiplier"]["mean"] == pytest.approx(0.0)


@pytest.mark.parametrize("args, message", [
    (["--targets", ""], "targets: give at least one"),
    (["--targets", "20,abc"], "expected comma-separated numbers"),
    (["--methods", "mult-v2,mult-v9"], "unknown method 'mult-v9'"),
    (["--targets", "2", "--methods", "mult-v3-large"], "unreachable by mobilenet_v3_large"),
    (["--targets", "5", "--methods", "search"], "unreachable by search"),
    (["--targets", "2", "--methods", "netadapt-v3-small"], "unreachable by netadapt-v3-small"),
    (["--device", "cpu"], "prices on a phone model"),
    (["--seeds", "0,0"], "a seed is repeated"),
    (["netadapt_seed_ratio=1.0"], "must be > 1"),
])
def test_bad_inputs_exit_2(args, message, tmp_path):
    result = cli.invoke(app, ["pipeline", "--runs-dir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "pipeline").exists()  # refused before a run directory


def test_gpu_config_loads_and_every_target_is_reachable():
    cfg = load_config("pipeline", Path("configs/pipeline-gpu.yaml"))
    targets, methods, device = pl.validate(cfg)
    pl.check_reachable(cfg, targets, methods, pl.phone_pricer(device))
    assert cfg.device == "cuda" and len(cfg.seeds) >= 3 and len(targets) >= 2
    search = pl.stage_config(cfg, "search", pl.RunAt(), "x", {"target_latency": 15.0})
    assert search.search.samples == 500 and search.data.name == "cifar100"


def test_stage_bars_are_removed_after_the_stage():
    import io

    from rich.console import Console

    from lotto.progress import PlainProgress

    progress = PlainProgress(Console(file=io.StringIO()), interval=0)
    top = progress.add_task("final trainings", total=3)
    with pl.own_bars(progress):
        progress.add_task("seed trainings", total=1)  # the runner's bars of a sub-run
        progress.add_task("proposal trainings", total=12)
    assert progress.task_ids == [top]
    assert "proposal trainings 0/12" not in progress.line()
