"""`lotto search --fidelity N`: Kendall tau and its interval, the run's files, the reference cache.
Tiny setting: digits, a 2-stage space, a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from scipy.stats import kendalltau
from typer.testing import CliRunner

import lotto.experiments.fidelity as fidelity_mod
from lotto.cli import app
from lotto.config import load_config
from lotto.experiments.fidelity import run_fidelity
from lotto.search.fidelity import bootstrap_tau, seed_tau, tau

FAST = ["data.name=digits", "data.val_size=200", "train.iterations=3it", "train.warmup=1it",
        "train.batch_size=32", "proxy.width_mult=1.0", "proxy.min_output=2", "device=cpu",
        "fidelity.enabled=true", "fidelity.networks=4", "fidelity.reference.iterations=6it",
        "fidelity.reference.warmup=1it", "fidelity.bootstrap=50", "supernet.steps=4",
        "supernet.batch_size=32", "supernet.recal_batches=1", "supernet.recal_batch_size=64"]


def config(space_file: Path, runs_dir: Path, *extra: str):
    return load_config("search", space_file, [*FAST, f"run.runs_dir={runs_dir}", *extra])


def test_tau_interval_and_seed_tau():
    a = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert tau(a, a) == pytest.approx(1.0) and tau(a, a[::-1]) == pytest.approx(-1.0)
    b = [0.1, 0.3, 0.2, 0.4, 0.6, 0.5]
    lo, hi = bootstrap_tau(a, b, draws=300, seed=0)
    assert lo <= tau(a, b) <= hi and -1 <= lo < hi <= 1
    assert bootstrap_tau(a, b, 300, 0) == (lo, hi)  # seeded
    assert seed_tau([a, a, a[::-1]]) == pytest.approx((1 - 1 - 1) / 3)


@pytest.mark.parametrize("proxy", ["train", "supernet"])
def test_fidelity_writes_the_table_and_tau(space_file, runs_dir, proxy):
    result = run_fidelity(config(space_file, runs_dir, f"search.proxy={proxy}"))
    table = pd.read_csv(result.run.file("fidelity.csv"))
    assert list(table.columns[:5]) == ["spec", "proxy", "reference", "proxy_seconds",
                                       "reference_seconds"]
    assert len(table) == 4 and table.spec.nunique() == 4
    assert (table.reference == (table.reference_seed0 + table.reference_seed1) / 2).all()
    summary = json.loads(result.run.file("summary.json").read_text())
    want = kendalltau(table.proxy, table.reference).statistic
    assert summary["kendall_tau"] == pytest.approx(want)
    assert summary["reference_seed_tau"] == pytest.approx(
        kendalltau(table.reference_seed0, table.reference_seed1).statistic)
    assert summary["proxy"] == proxy and len(summary["kendall_tau_ci"]) == 2
    # scored by validation loss instead: lower loss ranks higher
    assert table.proxy_loss.gt(0).all()
    assert summary["kendall_tau_loss"] == pytest.approx(
        kendalltau(-table.proxy_loss, table.reference).statistic)
    assert (summary["supernet_train_seconds"] is None) == (proxy == "train")


def test_reference_trainings_are_cached_across_runs(space_file, runs_dir, monkeypatch):
    first = run_fidelity(config(space_file, runs_dir, "run.name=a"))
    calls = []
    real = fidelity_mod.evaluate

    def counted(job, progress=None):
        calls.append(job.label)
        return real(job, progress)

    monkeypatch.setattr(fidelity_mod, "evaluate", counted)
    second = run_fidelity(config(space_file, runs_dir, "run.name=b", "search.proxy=supernet"))
    assert calls == []  # every reference came from the cache
    assert list(second.table.reference) == list(first.table.reference)
    third = run_fidelity(config(space_file, runs_dir, "run.name=c",
                                "fidelity.reference.seeds=[0,2]"))
    assert len(calls) == 4 and all("seed=2" in c for c in calls)  # only the new seed trains
    assert list(third.table.reference_seed0) == list(first.table.reference_seed0)


def test_fidelity_cli_and_bad_values(space_file, runs_dir):
    cli = CliRunner()
    bad = cli.invoke(app, ["search", "--config", str(space_file), "--fidelity", "2",
                           "--runs-dir", str(runs_dir)])
    assert bad.exit_code == 2 and "--fidelity" in bad.output
    seeds = cli.invoke(app, ["search", "--config", str(space_file), *FAST,
                             "fidelity.reference.seeds=[1,1]", "--runs-dir", str(runs_dir)])
    assert seeds.exit_code == 2 and "fidelity.reference.seeds" in seeds.output
    ok = cli.invoke(app, ["search", "--config", str(space_file), *FAST, "--fidelity", "3",
                          "--runs-dir", str(runs_dir)])
    assert ok.exit_code == 0, ok.output
    assert "Kendall tau" in ok.output and "seed-to-seed" in ok.output


def test_fidelity_log_counts_every_training(space_file, runs_dir, monkeypatch):
    """Output that is not a terminal (a log file, CI) gets plain progress lines counting the
    proxy scores and reference trainings together: 3 + 3 x 2 here. (No ETA is asserted: units
    this quick count as found done, `lotto.progress.INSTANT`.)"""
    monkeypatch.setenv("LOTTO_PROGRESS_SECONDS", "0")
    ok = CliRunner().invoke(app, ["search", "--config", str(space_file), *FAST, "--fidelity",
                                  "3", "--runs-dir", str(runs_dir)])
    assert ok.exit_code == 0, ok.output
    counts = [line.split(" | ")[0] for line in ok.output.splitlines()
              if line.startswith("fidelity ") and " | " in line]
    assert counts[0] == "fidelity 0/9" and counts[-1] == "fidelity 9/9", counts


def test_a_search_reports_the_fidelity_measured_for_its_setup(space_file, runs_dir):
    from lotto.experiments.search import run_search

    search = ["fidelity.enabled=false", "search.samples=2", "search.batch_size=2",
              "search.controller=random", "search.proxy=supernet"]
    before = run_search(config(space_file, runs_dir, *search, "run.name=s1"))
    assert before.summary["fidelity"] is None
    measured = run_fidelity(config(space_file, runs_dir, "search.proxy=supernet"))
    after = run_search(config(space_file, runs_dir, *search, "run.name=s2"))
    assert after.summary["fidelity"]["kendall_tau"] == measured.summary["kendall_tau"]
    other = run_search(config(space_file, runs_dir, *search, "run.name=s3",
                              "supernet.recal_batches=2"))  # another proxy setup: not measured
    assert other.summary["fidelity"] is None


def test_the_default_search_finds_its_shipped_fidelity(tmp_path):
    """The default setup's fidelity ships with lotto (a fresh machine's default search prints
    it); a changed setup finds none; a measurement made here wins over the shipped one. If the
    default config changes, the shipped record no longer matches: measure it again and ship."""
    from lotto.experiments.fidelity import SHIPPED_RECORDS, fidelity_record, fidelity_record_path

    cfg = load_config("search", None, [f"run.runs_dir={tmp_path}"])
    assert (SHIPPED_RECORDS / fidelity_record_path(cfg, None).name).exists()
    shipped = fidelity_record(cfg, None)
    assert shipped["shipped"] and shipped["networks"] == 20 and "measured" in shipped
    assert shipped["kendall_tau_ci"][0] < shipped["kendall_tau"] < shipped["kendall_tau_ci"][1]
    other = load_config("search", None, [f"run.runs_dir={tmp_path}", "train.iterations=41it"])
    assert fidelity_record(other, None) is None
    here = fidelity_record_path(cfg, None)
    here.parent.mkdir(parents=True)
    here.write_text(json.dumps({**shipped, "kendall_tau": 0.1, "shipped": None}))
    local = fidelity_record(cfg, None)
    assert local["shipped"] is False and local["kendall_tau"] == 0.1


def test_the_default_supernet_finds_its_shipped_fidelity(tmp_path):
    """`search.proxy=supernet` with the default settings prints its shipped fidelity too (so a
    user sees that it does not rank before searching with it); a changed supernet finds none."""
    from lotto.experiments.fidelity import fidelity_record
    from lotto.search.evaluate import proxy_seed
    from lotto.search.supernet import supernet_path

    def record(*extra: str):
        cfg = load_config("search", None, [f"run.runs_dir={tmp_path}", "search.proxy=supernet",
                                           *extra])
        return fidelity_record(cfg, supernet_path(cfg, proxy_seed(cfg)))

    shipped = record()
    assert shipped["shipped"] and shipped["networks"] == 20 and "measured" in shipped
    assert shipped["kendall_tau_ci"][0] < shipped["kendall_tau"] < shipped["kendall_tau_ci"][1]
    assert record("supernet.steps=401") is None
