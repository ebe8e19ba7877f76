"""`lotto search`: reward, controllers, the run loop (cache, resume, a crashed sample) and the CLI.

Tiny setting: digits (8 px), a 2-stage space at 32 px, 3 proxy steps, a handful of samples.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from search_space import TINY_SPACE
from typer.testing import CliRunner

from lotto.arch import load_spec
from lotto.cli import app
from lotto.config import load_config
from lotto.errors import LottoError
from lotto.experiments.common import FAULT_ENV
from lotto.experiments.search import load_search_space, pareto_front, run_search
from lotto.latency import predict
from lotto.runs import RunDir
from lotto.search.controllers import Evolution, Outcome, make_controller
from lotto.search.reward import objective, reward

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


def config(space_file: Path, runs_dir: Path, *extra: str):
    return load_config("search", space_file, [*FAST, f"run.runs_dir={runs_dir}", *extra])


def priced(cfg, frame: pd.DataFrame, device: str) -> list[float]:
    """Each row's network (from its choices) priced on `device` independently of the run."""
    space = load_search_space(cfg)
    return [predict(space.network([int(v) for v in str(c).split("-")]), device).ms
            for c in frame.choices]


# ---- reward -------------------------------------------------------------------------------------


def test_reward_matches_hand_computed_values():
    # soft, w = -0.07: 0.8 * (100/75)^-0.07 = 0.8 * exp(-0.07 * ln(4/3)) = 0.8 * 0.980064
    assert reward(0.8, 100, 75, -0.07, -0.07) == pytest.approx(0.784051, abs=1e-6)
    # faster than the target is rewarded too: 0.8 * 0.5^-0.07 = 0.8 * 1.049717
    assert reward(0.8, 37.5, 75, -0.07, -0.07) == pytest.approx(0.839774, abs=1e-6)
    # hard: accuracy alone at or under the target, accuracy / 2 at twice the target
    assert reward(0.8, 50, 75, 0.0, -1.0) == pytest.approx(0.8)
    assert reward(0.8, 150, 75, 0.0, -1.0) == pytest.approx(0.4)
    # alpha under the target, beta over it (distinct exponents, so a swap shows):
    # 0.8 * 0.99^-0.5 = 0.804030 and 0.8 * 1.01^-1 = 0.792079
    assert reward(0.8, 74.25, 75, -0.5, -1.0) == pytest.approx(0.804030, abs=1e-6)
    assert reward(0.8, 75.75, 75, -0.5, -1.0) == pytest.approx(0.792079, abs=1e-6)
    # (at LAT == TAR every exponent gives 1: which side owns the edge cannot show in a reward)


def test_objective_presets_and_bad_values():
    assert (objective(75).alpha, objective(75).beta) == (-0.07, -0.07)
    assert objective(15, preset="small").alpha == -0.15
    assert (objective(75, "hard").alpha, objective(75, "hard").beta) == (0.0, -1.0)
    assert (objective(75, w=-0.2).alpha, objective(75, w=-0.2).beta) == (-0.2, -0.2)
    with pytest.raises(LottoError, match="hard constraint"):  # w would silently make it soft
        objective(75, "hard", w=-0.3)
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
    settings = {"ppo": {"hidden": 16, "lr": 0.1}}  # a large step: the policy visibly moves
    a = make_controller(kind, OPTIONS, 3, settings)
    for step in range(3):
        batch = a.ask(4, step)
        assert len(batch) == 4
        assert all(0 <= v < n for s in batch for v, n in zip(s, OPTIONS))
        a.tell(batch, [Outcome(toy(s), toy(s), 10.0) for s in batch])
    meta, tensors = a.state()
    b = make_controller(kind, OPTIONS, 3, settings)
    b.load(meta, {k: v.clone() for k, v in tensors.items()})
    assert b.ask(32, 3) == a.ask(32, 3)  # the resumed controller asks what the first one would
    if kind != "random":  # ... and a controller that loaded nothing would not
        assert make_controller(kind, OPTIONS, 3, settings).ask(32, 3) != a.ask(32, 3)
    if tensors:  # policy and Adam state round-trip exactly
        again = b.state()[1]
        assert again.keys() == tensors.keys()
        assert all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_ppo_learns_a_toy_reward():
    ctrl = make_controller("ppo", OPTIONS, 0, {"ppo": {"lr": 0.05, "hidden": 16}})
    first = [toy(s) for s in ctrl.ask(64, 0)]
    for step in range(15):
        batch = ctrl.ask(8, step)
        ctrl.tell(batch, [Outcome(toy(s), 0, 0) for s in batch])
    last = [toy(s) for s in ctrl.ask(64, 99)]
    assert sum(last) / 64 > sum(first) / 64 + 0.2


def ratios_after_one_tell(settings: dict) -> tuple[list[float], object]:
    """PPO on a batch of two: reward 1 for all-zeros, 0 for all-ones (advantages +-0.5)."""
    ctrl = make_controller("ppo", OPTIONS, 0, {"ppo": settings})
    batch = [[0] * 6, [1] * 6]
    actions = torch.tensor(batch)
    with torch.no_grad():
        old = ctrl.policy(actions)[1]
    ctrl.tell(batch, [Outcome(1.0, 0, 0), Outcome(0.0, 0, 0)])
    with torch.no_grad():
        new = ctrl.policy(actions)[1]
    return torch.exp(new - old).tolist(), ctrl


def test_ppo_runs_its_epochs_and_clips_the_ratio():
    settings = {"lr": 0.003, "clip": 0.1, "epochs": 30, "hidden": 16, "entropy": 0.0}
    (up, down), ctrl = ratios_after_one_tell(settings)
    steps = {int(s["step"]) for s in ctrl.optimizer.state.values()}
    assert steps == {30}  # one Adam step per epoch
    # clipped: the surrogate stops pulling once the ratio leaves [0.9, 1.1], so 30 epochs end
    # near the clip (Adam's momentum carries it a little past: measured 1.76 and 0.53); without
    # the clip they go on (measured 35 and 0.07), with one epoch they stop short (1.10, 0.89)
    assert 1.3 < up < 3.0 and 0.3 < down < 0.8
    # the clip is the setting's: a wide one lets the same epochs go much further
    (far_up, _), _ = ratios_after_one_tell({**settings, "clip": 0.9})
    assert far_up > 2 * up


def test_policy_feeds_back_its_previous_choice():
    """Decision 1's distribution depends on decision 0 (the LSTM's input is the embedding of
    the previous choice): p(d1 | d0) from whole-sequence log-probabilities."""
    policy = make_controller("ppo", [2, 3], 0, {"ppo": {"hidden": 16}}).policy
    with torch.no_grad():
        logp = policy(torch.tensor([[a, b] for a in range(2) for b in range(3)]))[1].view(2, 3)
    conditional = torch.softmax(logp, dim=1)  # p(d1 | d0 = row)
    assert (conditional[0] - conditional[1]).abs().max() > 1e-3


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
    assert list(frame.latency_ms) == pytest.approx(priced(cfg, frame, "pixel1"), rel=1e-9)
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
    assert json.loads(state)["step"] == 1 and part.run.has("controller/state.1.safetensors")
    resumed = run_search(cfg)
    assert len(resumed.metrics) == 4
    pd.testing.assert_frame_equal(resumed.metrics.iloc[:2], part.metrics)  # kept, not redone
    assert list(resumed.metrics.spec) == list(whole.metrics.spec)  # the policy was restored
    assert list(resumed.metrics.reward) == pytest.approx(list(whole.metrics.reward))


def test_crashed_sample_gets_reward_zero_and_a_rerun_retries_it(space_file, runs_dir,
                                                                  monkeypatch):
    cfg = config(space_file, runs_dir, "search.controller=random", "proxy.cache=false")
    monkeypatch.setenv(FAULT_ENV, "raise:step=0,sample=1")
    result = run_search(cfg)
    frame = result.metrics
    assert len(frame) == 4
    bad = frame[frame["sample"] == 1].iloc[0]
    assert bad.status == "failed" and bad.reward == 0 and math.isnan(bad.val_accuracy)
    assert (frame[frame["sample"] != 1].status == "ok").all()
    assert [f["sample"] for f in result.failures] == [1]
    assert "injected fault" in pd.read_csv(result.run.file("failures.csv")).error[0]
    state = result.run.file("controller/state.json").read_text()

    # the same command again, the fault gone: the failed sample is trained, its row replaced
    monkeypatch.delenv(FAULT_ENV)
    again = run_search(cfg)
    fixed = again.metrics
    assert list(fixed["sample"]) == [0, 1, 2, 3] and (fixed.status == "ok").all()
    row = fixed[fixed["sample"] == 1].iloc[0]
    assert 0 < row.val_accuracy <= 1 and not row.cached and row.seconds > 0
    assert row.reward == pytest.approx(row.val_accuracy * (row.latency_ms / 75.0) ** -0.07)
    others = fixed["sample"] != 1
    pd.testing.assert_frame_equal(fixed[others], frame[others])  # the rest kept as it was
    assert again.failures == [] and not again.run.has("failures.csv")
    assert not again.run.has("failures.parquet")
    assert pd.read_csv(again.run.file("metrics.csv")).status.eq("ok").all()  # on disk too
    assert again.summary["failed"] == 0
    # the controller learnt from reward 0 once; it is not told again (nothing else to ask)
    assert again.run.file("controller/state.json").read_text() == state
    # a third run has nothing to retry
    assert run_search(cfg).metrics.equals(fixed)


def test_a_retry_that_fails_again_stays_listed(space_file, runs_dir, monkeypatch):
    cfg = config(space_file, runs_dir, "search.controller=random", "proxy.cache=false",
                 "search.samples=2")
    monkeypatch.setenv(FAULT_ENV, "raise:step=0,sample=0")
    run_search(cfg)
    again = run_search(cfg)  # the fault is still there: failed again, listed again
    assert [f["sample"] for f in again.failures] == [0]
    assert list(pd.read_csv(again.run.file("failures.csv"))["sample"]) == [0]
    assert list(again.metrics.status) == ["failed", "ok"]


def test_cli_rerun_retries_the_failed_sample_exit_0(space_file, runs_dir, monkeypatch):
    args = ["search", "-c", str(space_file), *FAST, "--samples", "2", "--controller", "random",
            "proxy.cache=false", "--runs-dir", str(runs_dir)]
    monkeypatch.setenv(FAULT_ENV, "raise:step=0,sample=1")
    first = cli.invoke(app, args)
    assert first.exit_code == 1 and "re-run the same command" in first.output, first.output
    monkeypatch.delenv(FAULT_ENV)
    second = cli.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "failed" not in second.output
    run = next((runs_dir / "search").glob("*/metrics.csv")).parent
    assert not (run / "failures.csv").exists()
    assert pd.read_csv(run / "metrics.csv").status.eq("ok").all()


def final_tensors(run: Path) -> dict[str, torch.Tensor]:
    meta = json.loads((run / "controller" / "state.json").read_text())
    return RunDir(run, "search").load_tensors(f"controller/{meta['tensors']}")


def test_a_kill_between_the_state_writes_applies_the_update_once(space_file, runs_dir):
    """A real SIGKILL after the new policy tensors are written and before state.json names
    them: the resumed run ends with exactly the controller of an uninterrupted run."""
    opts = [*FAST, "search.controller=ppo", "search.ppo.hidden=8", "search.ppo.lr=0.1",
            "proxy.cache=false", f"run.runs_dir={runs_dir}"]
    whole = run_search(load_config("search", space_file, [*opts, "run.name=whole"]))
    env = {**os.environ, FAULT_ENV: "kill:save=controller,step=2",  # after the second batch
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "lotto", "search", "-c",
                           str(space_file), *opts, "run.name=cut"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    cut = runs_dir / "search" / "cut"
    assert json.loads((cut / "controller" / "state.json").read_text())["step"] == 1
    written = sorted(p.name for p in (cut / "controller").glob("*.safetensors"))
    resumed = run_search(load_config("search", space_file, [*opts, "run.name=cut"]))
    pd.testing.assert_frame_equal(resumed.metrics.drop(columns="seconds"),
                                  whole.metrics.drop(columns="seconds"))
    a, b = final_tensors(whole.run.path), final_tensors(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = [json.loads((r / "controller" / "state.json").read_text())["controller"]
            for r in (whole.run.path, cut)]
    assert meta[0] == meta[1]  # baseline and update count: two updates, each once
    assert written == ["state.1.safetensors", "state.2.safetensors"]  # 2: not committed
    assert sorted(p.name for p in (cut / "controller").glob("*.safetensors")) == [
        "state.2.safetensors"]  # older tensors are removed once a newer one is committed


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
    (["--w", "0.1"], "would reward slower networks"),
    (["--constraint", "hard", "--w", "-0.3"], "takes no w"),
    (["search.ppo.clip=-1"], "search.ppo.clip"),
    (["search.ppo.epochs=0"], "search.ppo.epochs"),
    (["search.ppo.lr=0"], "search.ppo.lr"),
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
    # priced on the device asked for (the phones differ: a pixel1 price would show)
    frame = pd.read_csv(next((runs_dir / "search").glob("*/metrics.csv")))
    cfg = config(space_file, runs_dir)
    on2, on1 = priced(cfg, frame, "pixel2"), priced(cfg, frame, "pixel1")
    assert list(frame.latency_ms) == pytest.approx(on2, rel=1e-9)
    assert all(abs(a - b) > 0.01 * b for a, b in zip(on2, on1))
    for r in frame.itertuples():
        assert r.reward == pytest.approx(r.val_accuracy * (r.latency_ms / 75.0) ** -0.15)


def test_default_proxy_trains_on_small_images(runs_dir):
    """The default proxy (min_output 1, the default 224 px space) on 8 px digits: every sample
    trains (strides are cut until no strided layer sees a map narrower than its stride)."""
    cfg = load_config("search", None, [
        "data.name=digits", "data.val_size=200", "train.iterations=2it", "train.warmup=1it",
        "train.batch_size=32", "device=cpu", "search.samples=2", "search.batch_size=2",
        "search.controller=random", "proxy.cache=false", f"run.runs_dir={runs_dir}"])
    assert cfg.proxy.min_output == 1
    result = run_search(cfg)
    assert list(result.metrics.status) == ["ok", "ok"] and result.failures == []


def test_a_proxy_that_cannot_be_built_fails_before_any_training(runs_dir, monkeypatch):
    import lotto.experiments.search as search
    import lotto.proxy as proxy

    # strides never cut (as the default proxy was on 8 px before adapt_to_resolution agreed
    # with validate): the default space's total stride 32 cannot run on 8 px
    monkeypatch.setattr(proxy, "adapt_to_resolution",
                        lambda spec, size, min_output=4: spec.replace(resolution=size).validate())
    monkeypatch.setattr(search, "evaluate", lambda *a, **k: pytest.fail("trained"))
    cfg = load_config("search", None, ["data.name=digits", "device=cpu",
                                       f"run.runs_dir={runs_dir}"])
    with pytest.raises(LottoError, match="proxy cannot be built on data digits .8 px.*stride 2"):
        run_search(cfg)
    assert not (runs_dir / "search").exists()  # no run directory, no budget spent


def test_fastest_network_is_the_floor_of_the_space(space_file, runs_dir):
    from lotto.experiments.search import Pricer, fastest_ms

    # one stage, slow options first: the descent must walk away from the first network
    space_file.write_text(TINY_SPACE.replace("kernels: [3, 5]", "kernels: [5, 3]").replace(
        "expansions: [3, 6]", "expansions: [6, 3]").replace("se: [false, true]", "se: [true, false]"
    ).replace("ops: [conv, ds, ir]", "ops: [ir, conv, ds]").replace(
        "    - {width: 24, repeat: 2, stride: 2}\n", ""))
    cfg = config(space_file, runs_dir)
    space = load_search_space(cfg)
    price = Pricer(cfg, "pixel1")
    low = fastest_ms(space, price)
    every = [price(space.network(list(ix)))[0]
             for ix in itertools.product(*[range(n) for _, _, n in space.axes()])]
    assert len(every) == 192 and low == min(every) < 0.85 * every[0]


def test_unreachable_target_hard_is_refused_soft_is_said(space_file, runs_dir):
    result = cli.invoke(app, ["search", "-c", str(space_file), *FAST, "--target-latency",
                              "0.001", "--constraint", "hard", "--runs-dir", str(runs_dir)])
    assert result.exit_code == 2, result.output
    from lotto.experiments.search import Pricer, fastest_ms

    fastest = fastest_ms(load_search_space(config(space_file, runs_dir)),
                         Pricer(config(space_file, runs_dir), "pixel1"))
    assert "target 0.001 ms is unreachable on pixel1: the fastest network of the space takes " \
        f"{fastest:.3f} ms" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (runs_dir / "search").exists()
    soft = cli.invoke(app, ["search", "-c", str(space_file), *FAST, "--samples", "2",
                            "--controller", "random", "--target-latency", "0.001",
                            "--runs-dir", str(runs_dir)])
    assert soft.exit_code == 0, soft.output
    assert "warning: target 0.001 ms is unreachable" in soft.output
    summary = json.loads(next((runs_dir / "search").glob("*/summary.json")).read_text())
    assert summary["fastest_ms"] == pytest.approx(fastest)


def test_random_module_state_is_untouched():
    state = random.getstate(), torch.random.get_rng_state()
    make_controller("ppo", OPTIONS, 5, {}).ask(2, 0)
    make_controller("evolution", OPTIONS, 5, {}).ask(2, 0)
    assert random.getstate() == state[0] and torch.equal(torch.random.get_rng_state(), state[1])


def test_more_samples_extend_a_finished_search(space_file, runs_dir):
    """search.samples only extends (lotto.config.EXTENSION_KEYS): the same default run goes on
    from its last step, with the numbers of a search run in one go."""
    whole = run_search(config(space_file, runs_dir / "one", "proxy.cache=false"))
    short = run_search(config(space_file, runs_dir, "proxy.cache=false", "search.samples=2"))
    longer = run_search(config(space_file, runs_dir, "proxy.cache=false"))
    assert longer.run.path == short.run.path and len(longer.metrics) == 4
    pd.testing.assert_frame_equal(longer.metrics.iloc[:2], short.metrics)  # reused
    assert list(longer.metrics.spec) == list(whole.metrics.spec)
    assert list(longer.metrics.reward) == pytest.approx(list(whole.metrics.reward))
