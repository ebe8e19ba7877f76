"""`lotto search`: reward, controllers, the run loop (cache, resume, a crashed sample) and the CLI.

Tiny setting: digits (8 px), a 2-stage space at 32 px, 3 proxy steps, a handful of samples.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from lotto.arch import load_spec
from lotto.cli import app
from lotto.config import load_config
from lotto.errors import LottoError
from lotto.experiments.search import pareto_front, run_search
from lotto.search.controllers import Evolution, Outcome, make_controller
from lotto.search.reward import objective, reward

TINY_SPACE = """
space:
  base: mobilenet_v3_small
  resolution: 32
  kernels: [3, 5]
  expansions: [3, 6]
  se: [false, true]
  ops: [conv, ds, ir]
  skips: [true, false]
  stages:
    - {width: 16, repeat: 1, stride: 2}
    - {width: 24, repeat: 2, stride: 2}
"""
FAST = ["data.name=digits", "data.val_size=200", "train.iterations=2it", "train.warmup=1it",
        "train.batch_size=32", "proxy.width_mult=1.0", "proxy.min_output=2", "device=cpu",
        "search.batch_size=2", "search.samples=4", "search.evolution.population=2",
        "search.evolution.tournament=2"]
COLUMNS = ["step", "sample", "controller", "spec", "params", "macs", "latency_ms",
           "latency_source", "expected_error", "val_accuracy", "reward", "cached", "seconds"]
cli = CliRunner()


@pytest.fixture(autouse=True)
def quick_plots(request, monkeypatch):
    """search.png is drawn for real in one test only (matplotlib takes seconds per figure)."""
    if not request.node.name.startswith("test_search_writes_rows"):
        import lotto.experiments.search as search

        monkeypatch.setattr(search, "plot", lambda *a: a[-1].write_bytes(b""))


@pytest.fixture
def space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(TINY_SPACE)
    return path


def config(space_file: Path, runs_dir: Path, *extra: str):
    return load_config("search", space_file, [*FAST, f"run.runs_dir={runs_dir}", *extra])


# ---- reward -------------------------------------------------------------------------------------


def test_reward_matches_hand_computed_values():
    # soft, w = -0.07: 0.8 * (100/75)^-0.07 = 0.8 * exp(-0.07 * ln(4/3)) = 0.8 * 0.980064
    assert reward(0.8, 100, 75, -0.07, -0.07) == pytest.approx(0.784051, abs=1e-6)
    # faster than the target is rewarded too: 0.8 * 0.5^-0.07 = 0.8 * 1.049717
    assert reward(0.8, 37.5, 75, -0.07, -0.07) == pytest.approx(0.839774, abs=1e-6)
    # hard: accuracy alone at or under the target, accuracy / 2 at twice the target
    assert reward(0.8, 50, 75, 0.0, -1.0) == pytest.approx(0.8)
    assert reward(0.8, 150, 75, 0.0, -1.0) == pytest.approx(0.4)
    # the edge LAT == TAR takes alpha (and any exponent of 1 is 1): the accuracy itself
    assert reward(0.8, 75, 75, 0.0, -1.0) == 0.8
    assert reward(0.8, 75, 75, -0.07, -0.5) == 0.8
    # just over the target, beta applies: 0.8 * (75.75/75)^-1 = 0.8 / 1.01
    assert reward(0.8, 75.75, 75, 0.0, -1.0) == pytest.approx(0.8 / 1.01)


def test_objective_presets_and_bad_values():
    assert (objective(75).alpha, objective(75).beta) == (-0.07, -0.07)
    assert objective(15, preset="small").alpha == -0.15
    assert (objective(75, "hard").alpha, objective(75, "hard").beta) == (0.0, -1.0)
    assert (objective(75, "hard", w=-0.2).alpha, objective(75, "hard", w=-0.2).beta) == (-0.2,
                                                                                         -0.2)
    for bad in ({"target_ms": 0}, {"target_ms": 75, "w": 0.1},
                {"target_ms": 75, "constraint": "loose"}, {"target_ms": 75, "preset": "tiny"}):
        with pytest.raises(LottoError):
            objective(**bad)


# ---- controllers --------------------------------------------------------------------------------

OPTIONS = [3, 2, 4, 2, 3, 3]


def toy(sample: list[int]) -> float:
    return sum(v == 0 for v in sample) / len(sample)  # best: all zeros


@pytest.mark.parametrize("kind", ["ppo", "reinforce", "evolution", "random"])
def test_controllers_ask_valid_samples_and_resume_exactly(kind):
    a = make_controller(kind, OPTIONS, 3, {"ppo": {"hidden": 16}})
    for step in range(3):
        batch = a.ask(4, step)
        assert len(batch) == 4
        assert all(0 <= v < n for s in batch for v, n in zip(s, OPTIONS))
        a.tell(batch, [Outcome(toy(s), toy(s), 10.0) for s in batch])
    meta, tensors = a.state()
    b = make_controller(kind, OPTIONS, 3, {"ppo": {"hidden": 16}})
    b.load(meta, {k: v.clone() for k, v in tensors.items()})
    assert b.ask(4, 3) == a.ask(4, 3)  # the resumed controller asks what the first one would


def test_ppo_learns_a_toy_reward():
    ctrl = make_controller("ppo", OPTIONS, 0, {"ppo": {"lr": 0.05, "hidden": 16}})
    first = [toy(s) for s in ctrl.ask(64, 0)]
    for step in range(15):
        batch = ctrl.ask(8, step)
        ctrl.tell(batch, [Outcome(toy(s), 0, 0) for s in batch])
    last = [toy(s) for s in ctrl.ask(64, 99)]
    assert sum(last) / 64 > sum(first) / 64 + 0.2


def test_regularised_evolution_mutates_one_decision_and_ages():
    evo = Evolution(OPTIONS, 0, {"population": 3, "tournament": 3})
    members = [[0] * 6, [1] * 6, [2, 1, 2, 1, 2, 2]]
    evo.tell(members, [Outcome(r, 0, 0) for r in (0.9, 0.1, 0.5)])
    for child in evo.ask(10, 1):  # tournament of the whole population: the 0.9 member's child
        assert sum(a != b for a, b in zip(child, [0] * 6)) == 1
    evo.tell([[1, 0, 0, 0, 0, 0]], [Outcome(0.2, 0, 0)])
    assert [m for m, _ in evo.population] == members[1:] + [[1, 0, 0, 0, 0, 0]]  # oldest died


def test_optuna_controllers_ask_and_tell():
    pytest.importorskip("optuna")
    for kind in ("tpe", "nsga2"):
        ctrl = make_controller(kind, OPTIONS, 0, {"tpe": {"startup": 2},
                                                  "nsga2": {"population": 4}})
        for step in range(3):
            batch = ctrl.ask(3, step)
            assert all(0 <= v < n for s in batch for v, n in zip(s, OPTIONS))
            ctrl.tell(batch, [Outcome(toy(s), toy(s), 10 + step, ok=step != 1) for s in batch])
        meta, _ = ctrl.state()
        again = make_controller(kind, OPTIONS, 0, {"tpe": {"startup": 2},
                                                   "nsga2": {"population": 4}})
        again.load(meta, {})
        assert again.ask(3, 3) == ctrl.ask(3, 3)


def test_optuna_controllers_without_optuna_are_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(LottoError, match="lotto\\[search\\]"):
        make_controller("tpe", OPTIONS, 0, {})
    with pytest.raises(LottoError, match="unknown controller"):
        make_controller("bayes", OPTIONS, 0, {})


# ---- the run ------------------------------------------------------------------------------------


def test_search_writes_rows_front_best_and_resumes_without_training(space_file, runs_dir):
    cfg = config(space_file, runs_dir, "search.controller=evolution")
    result = run_search(cfg)
    frame = result.metrics
    assert list(frame.columns[:len(COLUMNS)]) == COLUMNS
    assert len(frame) == 4 and list(frame["sample"]) == list(range(4))
    assert (frame.latency_source == "model").all() and (frame.status == "ok").all()
    for r in frame.itertuples():
        w = -0.07
        assert r.reward == pytest.approx(r.val_accuracy * (r.latency_ms / 75.0) ** w)
    files = {p.name for p in result.run.path.iterdir()}
    assert result.run.file("search.png").read_bytes()[:4] == b"\x89PNG"
    assert {"pareto.csv", "best.yaml", "search.png", "summary.json", "metrics.parquet"} <= files
    best = load_spec(str(result.run.path))  # `--from runs/search/<run>` takes best.yaml
    assert " ".join(best.block_strings()) == frame.loc[frame.reward.idxmax(), "spec"]
    front = pd.read_csv(result.run.file("pareto.csv"))
    ok = frame.drop_duplicates("spec")
    for r in front.itertuples():  # nothing is both faster and more accurate than a front member
        assert not ((ok.latency_ms < r.latency_ms) & (ok.val_accuracy > r.val_accuracy)).any()
    # a repeated spec in the run is not retrained
    assert (frame.duplicated("spec") <= frame.cached.astype(bool)).all()
    # the same command again: nothing recomputed; another run name, same proxy: all cached
    again = run_search(cfg)
    pd.testing.assert_frame_equal(again.metrics, frame)
    other = run_search(config(space_file, runs_dir, "search.controller=evolution", "run.name=x"))
    assert other.metrics.cached.astype(bool).all() and (other.metrics.seconds == 0).all()
    assert list(other.metrics.reward) == pytest.approx(list(frame.reward))


def test_killed_search_resumes_where_it_stopped(space_file, runs_dir):
    whole = run_search(config(space_file, runs_dir, "proxy.cache=false", "run.name=whole"))
    cfg = config(space_file, runs_dir, "proxy.cache=false", "run.name=cut")
    part = run_search(cfg, stop_after=1)
    assert len(part.metrics) == 2
    state = part.run.file("controller/state.json").read_text()
    assert '"step": 1' in state and part.run.has("controller/state.safetensors")
    resumed = run_search(cfg)
    assert len(resumed.metrics) == 4
    pd.testing.assert_frame_equal(resumed.metrics.iloc[:2], part.metrics)  # kept, not redone
    assert list(resumed.metrics.spec) == list(whole.metrics.spec)  # the policy was restored
    assert list(resumed.metrics.reward) == pytest.approx(list(whole.metrics.reward))


def test_crashed_sample_gets_reward_zero_and_is_reported(space_file, runs_dir, monkeypatch):
    monkeypatch.setenv("LOTTO_TEST_FAULT", "raise:step=0,sample=1")
    result = run_search(config(space_file, runs_dir, "search.controller=random",
                               "proxy.cache=false"))
    frame = result.metrics
    assert len(frame) == 4
    bad = frame[frame["sample"] == 1].iloc[0]
    assert bad.status == "failed" and bad.reward == 0 and math.isnan(bad.val_accuracy)
    assert (frame[frame["sample"] != 1].status == "ok").all()
    assert [f["sample"] for f in result.failures] == [1]
    assert "injected fault" in pd.read_csv(result.run.file("failures.csv")).error[0]


def test_pareto_front_keeps_only_undominated():
    frame = pd.DataFrame({
        "step": 0, "sample": range(4), "status": "ok", "params": 1, "macs": 1, "reward": 0.0,
        "spec": list("abcd"), "latency_ms": [10, 20, 15, 30], "val_accuracy": [0.5, 0.7, 0.4, 0.8],
    })
    assert list(pareto_front(frame).spec) == ["a", "b", "d"]


# ---- the command --------------------------------------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (["--controller", "bayes"], "unknown controller"),
    (["--device", "iphone"], "unknown device"),
    (["--target-latency", "0"], "target-latency"),
    (["--w", "0.1"], "w"),
    (["--samples", "0"], "samples"),
    (["--constraint", "loose"], "soft or hard"),
])
def test_bad_input_is_one_line_exit_2(args, needle, runs_dir):
    result = cli.invoke(app, ["search", *args, "--runs-dir", str(runs_dir)])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert not (runs_dir / "search").exists()


def test_illegal_stage_in_the_config_is_one_line(tmp_path, runs_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_SPACE.replace("{width: 24, repeat: 2, stride: 2}",
                                      "{width: 24, repeat: 2, stride: 2, kernels: [4]}"))
    result = cli.invoke(app, ["search", "-c", str(bad), "--runs-dir", str(runs_dir)])
    assert result.exit_code == 2
    assert "stages[1] field kernels" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_runs_a_tiny_search(space_file, runs_dir):
    result = cli.invoke(app, ["search", "-c", str(space_file), *FAST, "--samples", "2",
                              "--controller", "random", "--device", "pixel2", "--preset",
                              "small", "--runs-dir", str(runs_dir)])
    assert result.exit_code == 0, result.output
    assert "proxy task" in result.output and "pixel2" in result.output
    assert "alpha -0.15" in result.output


def test_random_module_state_is_untouched():
    state = random.getstate(), torch.random.get_rng_state()
    make_controller("ppo", OPTIONS, 5, {}).ask(2, 0)
    make_controller("evolution", OPTIONS, 5, {}).ask(2, 0)
    assert random.getstate() == state[0] and torch.equal(torch.random.get_rng_state(), state[1])
