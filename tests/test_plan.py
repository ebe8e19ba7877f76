"""`--dry-run` (lotto.experiments.plan): the trainings a command would run, what a past run
would reuse, a time estimate; no run directory is created."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import lotto.experiments.plan as plan_module
from lotto.cli import app
from lotto.config import load_config
from lotto.experiments.plan import plan_lottery, plan_netadapt, plan_rethink

LOTTERY = ["data.name=digits", "train.iterations=20it", "train.eval_every=10it",
           "lottery.rounds=1", "lottery.controls=[reinit]", "device=cpu"]
RETHINK = ["data.name=digits", "data.val_size=100", "model.width=0.0625",
           "train.iterations=6it", "train.batch_size=32", "finetune.iterations=2it",
           "grid.seeds=1", "grid.lrs=[0.1]", "pruning.unstructured.modes=[finetune,ticket]",
           "pruning.structured.modes=[finetune,scratch_b]", "device=cpu"]


def dry(command: str, *args: str) -> str:
    out = CliRunner().invoke(app, [command, *args, "--dry-run"])
    assert out.exit_code == 0, (out.output, out.exception)
    return out.output


def test_lottery_dry_run_creates_nothing_then_counts_what_a_run_left(tmp_path: Path) -> None:
    tmp_path = tmp_path / "runs"
    args = [*LOTTERY, f"run.runs_dir={tmp_path}"]
    text = dry("lottery", *args)
    assert not tmp_path.exists()  # no run directory, not even the root
    assert "prune_rate: 0.2" in text  # the resolved config
    # seed 0: round 0 ticket; round 1 ticket + reinit
    assert "trainings: 3 planned, 0 reused, 3 to train (60 steps, 9 evaluations" in text
    assert "(new)" in text
    assert re.search(r"time: about \d+ s", text), text
    run = CliRunner().invoke(app, ["lottery", *args])
    assert run.exit_code == 0, run.output
    again = dry("lottery", *args)
    assert "trainings: 3 planned, 3 reused, 0 to train" in again
    assert "(exists: 3 of 3 trainings finished there are reused)" in again
    name = next((tmp_path / "lottery").iterdir()).name
    changed = dry("lottery", *args, "train.lr=0.1", f"--name={name}")
    assert "cannot be resumed" in changed and "train.lr: 0.0012 -> 0.1" in changed


def test_rethink_plan_counts_the_grid(tmp_path: Path) -> None:
    tmp_path = tmp_path / "runs"
    cfg = load_config("rethink", overrides=[*RETHINK, f"run.runs_dir={tmp_path}"])
    plan = plan_rethink(cfg)
    modes = [t.key["mode"] for t in plan.trainings]
    # one baseline; structured l1-filter 0.5: finetune, scratch_b; unstructured 0.9: 2 modes
    assert modes == ["baseline", "finetune", "scratch_b", "finetune", "ticket"]
    steps = {(t.key["pruning"], t.key["mode"]): t.steps for t in plan.trainings}
    assert steps[("none", "baseline")] == 6 and steps[("structured", "finetune")] == 2
    assert steps[("structured", "scratch_b")] == 24  # 6 x 1 / (1 - 0.5)^2
    assert plan.step_seconds > 0 and plan.eval_seconds > 0 and plan.seconds() > 0
    assert not tmp_path.exists()


def test_estimate_scales_with_the_work(tmp_path: Path) -> None:
    small = plan_lottery(load_config("lottery", overrides=[*LOTTERY, f"run.runs_dir={tmp_path}"]))
    big = plan_lottery(load_config("lottery", overrides=[*LOTTERY, "lottery.rounds=3",
                                                         f"run.runs_dir={tmp_path}"]))
    # the same machine speed: compare the work only
    big.step_seconds, big.eval_seconds = small.step_seconds, small.eval_seconds
    big.fixed_seconds = small.fixed_seconds
    assert len(big.trainings) == 7 and len(small.trainings) == 3
    assert abs(big.seconds() / small.seconds() - 7 / 3) < 1e-9


# ---- search, netadapt, build-v3, bench ----------------------------------------------------------

SEARCH = ["data.name=digits", "data.val_size=200", "train.iterations=2it", "train.warmup=1it",
          "train.batch_size=32", "proxy.width_mult=1.0", "proxy.min_output=2", "device=cpu",
          "search.batch_size=2", "search.controller=random"]
NETADAPT_SPEC = """\
name: tiny
resolution: 64
stem: {channels: 16, kernel: 3, stride: 2, act: hswish}
blocks: [ir_k3_s1_e32_c16_re, ir_k3_s2_e48_c24_se0.25_re, ir_k3_s1_e64_c24_se0.25_hs]
head: {conv: 64, hidden: 0, act: hswish, dropout: 0.0}
"""
NETADAPT = ["data.name=digits", "data.val_size=200", "seed_train=20it", "netadapt.short_ft=3it",
            "netadapt.long_ft=4it", "train.batch_size=32", "netadapt.delta=0.15x",
            "latency.target=0.8x", "device=cpu"]
BENCH = ["--model", "mobilenet_v3_small", "--resolution", "32", "measure.min_run_time=0.02",
         "measure.warmup=1"]


@pytest.fixture
def fast_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short timed trainings, no figures: the counts are what these tests check (the timing's
    own test is test_lottery_dry_run_...)."""
    import lotto.experiments.search as search
    import lotto.report.plots as plots

    monkeypatch.setattr(plan_module, "TIMED_STEPS", (1, 3))
    monkeypatch.setattr(plan_module, "TIMING_BUDGET", 0.01)
    monkeypatch.setattr(search, "plot", lambda *a: a[-1].write_bytes(b""))
    monkeypatch.setattr(plots, "save_run_figure", lambda *a, **k: None)


def test_search_dry_run_counts_the_samples_left_and_the_cache(space_file: Path, tmp_path: Path,
                                                             fast_timing: None) -> None:
    from lotto.experiments.search import run_search

    runs = tmp_path / "runs"
    args = ["-c", str(space_file), *SEARCH, f"run.runs_dir={runs}"]
    text = dry("search", *args, "--samples", "4")
    assert not runs.exists()
    assert "controller: random" in text and "(new)" in text
    assert "samples: 4 planned, 0 reused, 4 to train (8 steps, 4 evaluations of 200 examples)" \
        in text
    assert "latency on pixel1: model (instant)" in text
    assert re.search(r"time: about \d+ s \(rough, without data loading: one training step of "
                     r"the proxy of the space's middle network", text), text
    run_search(load_config("search", space_file, [*SEARCH, f"run.runs_dir={runs}",
                                                  "search.samples=2"]))
    more = dry("search", *args, "--samples", "4")  # an extension of the finished run
    assert "(exists: 2 of 4 samples finished there are reused)" in more
    assert "samples: 4 planned, 2 reused, 2 to train (4 steps, 2 evaluations" in more
    cached = re.search(r"proxy results cached for this proxy setup: (\d+) networks", more)
    assert cached and 1 <= int(cached.group(1)) <= 2, more


def test_netadapt_dry_run_estimates_steps_and_reuses_a_past_run(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 fast_timing: None) -> None:
    import lotto.experiments.netadapt as na
    from lotto.experiments.common import FAULT_ENV

    spec = tmp_path / "tiny.yaml"
    spec.write_text(NETADAPT_SPEC)
    runs = tmp_path / "runs"
    overrides = [f"from={spec}", f"run.runs_dir={runs}", *NETADAPT]
    cfg = load_config("netadapt", None, overrides)
    before = plan_netadapt(cfg)
    assert not runs.exists()
    kinds = [t.key["kind"] for t in before.trainings]
    # 0.8x target, 0.15x steps: about 2 steps; then long_ft and the multiplier baseline
    step1 = [t.key["proposal"] for t in before.trainings if t.key.get("step") == 1
             and t.key["kind"] == "proposal"]
    assert kinds == ["seed"] + ["proposal"] * 2 * len(step1) + ["long_ft", "baseline"]
    assert not any(t.done for t in before.trainings)
    assert before.trainings[0].steps == 20 and before.trainings[-1].steps == 20 + 2 * 3 + 4
    # a real run whose long fine-tune crashes: seed, steps and baseline done, long_ft left
    monkeypatch.setenv(FAULT_ENV, "raise:step=0,proposal=long_ft")
    result = na.run_netadapt(cfg)
    monkeypatch.delenv(FAULT_ENV)
    frame = result.metrics
    assert sorted(frame[frame.step == 1].proposal) == sorted(step1)  # found as the run finds them
    after = plan_netadapt(cfg)
    todo = [t.key["kind"] for t in after.todo]
    assert todo == ["long_ft"], todo
    assert after.trainings[0].done  # the seed's training
    text = dry("netadapt", *overrides)
    chosen = int((frame.chosen.astype(str) == "True").sum()) - 1  # the seed row is chosen too
    assert f"steps: {chosen} done in the past run (reused), about 0 to go" in text
    assert "seed training: reused" in text
    assert f"trainings: {len(frame) + 1} planned, {len(frame)} reused, 1 to train" in text


def test_build_v3_dry_run_counts_the_steps_a_killed_run_left(tmp_path: Path,
                                                             fast_timing: None) -> None:
    runs = tmp_path / "runs"
    # host timing: its estimate is test_bench_dry_run_...'s (5 real ones would take seconds)
    args = ["--variant", "small", "--resolution", "64", "--runs-dir", str(runs),
            "latency.host=none", "latency.phones=[pixel1]"]
    text = dry("build-v3", *args)
    assert not runs.exists()
    assert "steps: seed, hswish, se, stem16, efficient_last_stage; latency: pixel1 phone model" \
        in text
    assert "measurements: 5 planned, 0 reused, 5 to measure (instant)" in text
    out = CliRunner().invoke(app, ["build-v3", *args])
    assert out.exit_code == 0, out.output
    run = next((runs / "build-v3").iterdir())
    assert "(exists: 5 of 5 steps finished there are reused)" in dry("build-v3", *args)
    rows = pd.read_csv(run / "metrics.csv")
    rows.head(3).to_csv(run / "metrics.csv", index=False)  # as a run killed after step 2 left it
    again = dry("build-v3", *args)
    assert "(exists: 3 of 5 steps finished there are reused)" in again
    assert "measurements: 5 planned, 3 reused, 2 to measure" in again


def test_bench_dry_run_times_a_measurement_then_reuses_it(tmp_path: Path,
                                                         fast_timing: None) -> None:
    runs = tmp_path / "runs"
    args = [*BENCH, "--device", "cpu", "--runs-dir", str(runs)]
    text = dry("bench", *args)
    assert not runs.exists()
    assert "mobilenet_v3_small on cpu: measured here" in text
    assert re.search(r"measurements: 1 planned, 0 reused, 1 to measure \(about [\d.]+ s each",
                     text), text
    phone = dry("bench", *BENCH, "--device", "pixel1", "--runs-dir", str(runs))
    assert "measurements: 1 planned, 0 reused, 1 to measure (instant)" in phone
    out = CliRunner().invoke(app, ["bench", *args])
    assert out.exit_code == 0, out.output
    again = dry("bench", *args)
    assert "(exists: 1 of 1 networks finished there are reused)" in again
    assert "measurements: 1 planned, 1 reused, 0 to measure" in again
    assert "time: about 0 s (rough: nothing left to measure)" in again


@pytest.mark.parametrize("args, message", [
    (["search", "search.controller=bogus"], "unknown controller"),
    (["netadapt", "--target", "2x", "data.name=digits"], "not below the seed's latency"),
    (["build-v3", "--variant", "huge"], "choose large or small"),
    (["bench", "--device", "pixel9"], "pixel9"),
])
def test_dry_run_of_a_bad_config_is_one_line_exit_2(tmp_path: Path, args: list[str],
                                                    message: str) -> None:
    runs = tmp_path / "runs"
    out = CliRunner().invoke(app, [*args, "--runs-dir", str(runs), "--dry-run"])
    assert out.exit_code == 2, out.output
    assert message in out.output and len(out.output.strip().splitlines()) == 1, out.output
    assert not runs.exists()


def test_netadapt_dry_run_on_cpu_leaves_the_exact_target_check_to_the_table(
        tmp_path: Path, fast_timing: None) -> None:
    # end to end, the tiny network is mostly per-call overhead: its narrowest version measures
    # about as slow as the seed, so an exact check on measurements refuses 0.8x, where the run
    # checks against its lookup table's sums (tests/test_netadapt.py's cpu test: a target
    # between the table's floor and seed runs)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(NETADAPT_SPEC)
    cfg = load_config("netadapt", None, [f"from={spec}", f"run.runs_dir={tmp_path / 'runs'}",
                                         *NETADAPT, "latency.device=cpu",
                                         "latency.min_run_time=0.02"])
    plan = plan_netadapt(cfg)
    assert any("left to the run" in c for c in plan.caveats)
    assert plan.trainings[0].key["kind"] == "seed" and not (tmp_path / "runs").exists()


def test_fidelity_dry_run_counts_what_the_shared_caches_hold(space_file: Path, tmp_path: Path,
                                                             fast_timing: None) -> None:
    from lotto.experiments.fidelity import run_fidelity
    from lotto.experiments.plan import plan_fidelity

    runs = tmp_path / "runs"

    def cfg(networks: int):
        return load_config("search", space_file, [
            *SEARCH, f"run.runs_dir={runs}", "fidelity.enabled=true",
            f"fidelity.networks={networks}", "fidelity.reference.iterations=3it",
            "fidelity.reference.warmup=1it", "fidelity.bootstrap=10"])

    before = plan_fidelity(cfg(3))
    assert not runs.exists()
    # 3 proxy scores and 3 x 2 reference trainings (seeds 0 and 1), none cached yet
    assert [t.key["what"] for t in before.trainings].count("proxy") == 3
    assert len(before.trainings) == 9 and not any(t.done for t in before.trainings)
    assert {t.steps for t in before.trainings} == {2, 3}
    run_fidelity(cfg(3))
    more = plan_fidelity(cfg(4))  # another run: the draw of 4 starts with the same 3 networks
    assert len(more.trainings) == 12 and sum(t.done for t in more.trainings) == 9
    assert [t.key for t in more.todo] == [{"network": 3, "what": "proxy"},
                                          {"network": 3, "what": "reference seed 0"},
                                          {"network": 3, "what": "reference seed 1"}]
    text = dry("search", "-c", str(space_file), *SEARCH, f"run.runs_dir={runs}",
               "fidelity.reference.iterations=3it", "fidelity.reference.warmup=1it",
               "--fidelity", "4")
    assert "trainings: 12 planned, 9 reused, 3 to train" in text
