"""`lotto lottery` as a function: the paper's invariants, controls, rewinding, resume, determinism.

All runs use scikit-learn's digits (8x8), LeNet-300-100 and a few dozen iterations a round.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import METRICS_COLUMNS
from omegaconf import DictConfig
from rich.progress import Progress
from safetensors.torch import load_file
from torch import nn

import lotto.experiments.lottery as lottery_mod
from lotto.data import load_data
from lotto.errors import LottoError
from lotto.experiments.lottery import LotteryResult, run_lottery, validate
from lotto.models import build_model
from lotto.pruning import layer_kinds, layer_rates, magnitude_prune
from lotto.train import TrainingDiverged
from lotto.train import train as real_train  # the spy replaces lottery's name for it

MakeCfg = Callable[..., DictConfig]
RESULTS = [c for c in METRICS_COLUMNS if c != "seconds"]  # everything but the wall clock
HIDDEN, OUTPUT = ["1.weight", "3.weight"], "5.weight"  # LeNet-300-100's Linear layers
SIZES = {"1.weight": 64 * 300, "3.weight": 300 * 100, "5.weight": 100 * 10}  # on 8x8 digits


def run(cfg: DictConfig, force: bool = False) -> LotteryResult:
    return run_lottery(cfg, force=force, progress=Progress(disable=True))


def tensors(result: LotteryResult, name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    return load_file(str(result.run.path / f"seed{seed}" / name))


def results(path: Path) -> pd.DataFrame:
    """metrics.csv without the wall-clock column, in a stable order."""
    frame = pd.read_csv(path)
    return frame[RESULTS].sort_values(["seed", "round", "variant"]).reset_index(drop=True)


def alive(mask: torch.Tensor) -> int:
    return int(mask.sum())


class Spy:
    """Wraps `lotto.experiments.lottery.train`: records each call's start weights, masks and seed;
    raises `fail` instead of training once `fail_after` calls have been made."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        fail_after: int | None = None,
        fail: BaseException | None = None,
    ):
        self.calls: list[dict] = []
        real = lottery_mod.train

        def spy(model: nn.Module, data: object, cfg: DictConfig, **kw: object) -> object:
            if fail_after is not None and len(self.calls) >= fail_after:
                raise fail or KeyboardInterrupt()
            self.calls.append(
                {
                    "start": {k: v.detach().clone() for k, v in model.state_dict().items()},
                    "masks": {k: v.clone().float() for k, v in (kw.get("masks") or {}).items()},
                    "seed": kw.get("seed"),
                    "desc": kw.get("desc"),  # "seed S round R variant"
                }
            )
            return real(model, data, cfg, **kw)

        monkeypatch.setattr(lottery_mod, "train", spy)


# --- outputs -------------------------------------------------------------------------------------


def test_outputs_and_metrics(lottery_cfg: MakeCfg) -> None:
    result = run(lottery_cfg("lottery.controls=[reinit,random_mask]"))
    path = result.run.path
    for name in (
        "config.yaml",
        "metrics.csv",
        "metrics.parquet",
        "curves.csv",
        "curves.parquet",
        "summary.json",
        "lottery.png",
        "seed0/init.safetensors",
        "seed0/round0/mask.safetensors",
        "seed0/round0/trained.safetensors",
        "seed0/round1/mask.safetensors",
        "seed0/round2/trained.safetensors",
    ):
        assert (path / name).is_file(), name
    assert not list(path.rglob("*.tmp"))

    csv, parquet = pd.read_csv(path / "metrics.csv"), pd.read_parquet(path / "metrics.parquet")
    for frame in (csv, parquet, result.metrics):
        assert set(METRICS_COLUMNS) <= set(frame.columns)
    assert len(csv) == len(parquet) == 1 + 2 * 3
    assert sorted(zip(csv["round"], csv.variant)) == sorted(
        [(0, "ticket")] + [(r, v) for r in (1, 2) for v in ("ticket", "reinit", "random_mask")]
    )
    assert (csv.seed == 0).all() and (csv.iteration == 30).all()
    assert csv.weights_remaining_pct.tolist() == pytest.approx((100 * csv.density).tolist())
    assert csv[csv["round"] == 0].density.iloc[0] == 1.0
    for rnd in (1, 2):  # controls have the ticket's density
        assert csv[csv["round"] == rnd].density.nunique() == 1
    assert (csv.sort_values("round").density.diff().dropna() <= 0).all()  # rows: as finished
    assert csv.test_accuracy.between(0, 1).all() and (csv.test_accuracy > 0.3).all()
    assert csv.early_stop_iteration.isin([0, 10, 20, 30]).all()

    curves = pd.read_csv(path / "curves.csv")
    assert len(curves) == 7 * 4  # evaluations at 0, 10, 20, 30 for each (round, variant)
    for row in csv.itertuples():
        c = curves[(curves["round"] == row.round) & (curves.variant == row.variant)]
        best = c.loc[c.val_loss.idxmin()]
        assert best.iteration == row.early_stop_iteration
        assert best.test_accuracy == pytest.approx(row.early_stop_test_accuracy)
        assert c.iloc[-1].test_accuracy == pytest.approx(row.test_accuracy)

    s = result.summary
    assert s["rounds_finished"] == 2 and s["run_dir"] == str(path)
    assert s["dense_early_stop_test_accuracy"] == pytest.approx(
        csv[csv["round"] == 0].early_stop_test_accuracy.iloc[0]
    )
    assert set(s["smallest_within_1pt"]) == {"ticket", "reinit", "random_mask"}
    assert s["near_10pct"]["round"] == 2  # the smallest density reached
    assert set(result.table.variant) == {"ticket", "reinit", "random_mask"}


# --- the paper's invariants ----------------------------------------------------------------------


def test_density_compounds_per_layer_with_output_at_half_rate(lottery_cfg: MakeCfg) -> None:
    rounds, p = 3, 0.2
    result = run(lottery_cfg(f"lottery.rounds={rounds}", f"lottery.prune_rate={p}"))
    rate = {"1.weight": p, "3.weight": p, "5.weight": p / 2}
    previous = {k: torch.ones(n) for k, n in SIZES.items()}
    for r in range(1, rounds + 1):
        masks = tensors(result, f"round{r}/mask.safetensors")
        assert set(masks) == set(SIZES)
        for k, m in masks.items():
            assert abs(alive(m) - SIZES[k] * (1 - rate[k]) ** r) <= r  # one weight a round
            assert torch.all(m.flatten().float() <= previous[k])  # pruned stays pruned
            previous[k] = m.flatten().float()
        density = sum(alive(m) for m in masks.values()) / sum(SIZES.values())
        row = result.metrics[result.metrics["round"] == r].iloc[0]
        assert row.density == pytest.approx(density)
        assert row.weights_remaining == sum(alive(m) for m in masks.values())


def test_conv_layers_prune_at_the_conv_rate(lottery_cfg: MakeCfg) -> None:
    result = run(lottery_cfg("model.name=conv2", "train.iterations=20it", "lottery.prune_rate=0.2"))
    model = build_model("conv2", 1, 10, 8)
    kinds = layer_kinds(model)
    sizes = {k: p.numel() for k, p in model.state_dict().items() if k in kinds}
    rate = {"conv": 0.1, "fc": 0.2, "output": 0.1}
    masks = tensors(result, "round2/mask.safetensors")
    assert set(masks) == set(kinds)
    for k, m in masks.items():
        assert abs(alive(m) - sizes[k] * (1 - rate[kinds[k]]) ** 2) <= 2


def test_pruned_weights_stay_exactly_zero_through_training(lottery_cfg: MakeCfg) -> None:
    result = run(lottery_cfg("lottery.controls=[reinit,random_mask]"))
    for r in (1, 2):
        masks = tensors(result, f"round{r}/mask.safetensors")
        trained = tensors(result, f"round{r}/trained.safetensors")
        for k, m in masks.items():
            assert torch.count_nonzero(trained[k][~m.bool()]) == 0
            assert torch.count_nonzero(trained[k][m.bool()]) == alive(m)


def test_each_round_prunes_the_previous_trained_ticket(lottery_cfg: MakeCfg) -> None:
    cfg = lottery_cfg()
    result = run(cfg)
    model = build_model("lenet_300_100", 1, 10, 8)
    rates = layer_rates(model, 0.2, 0.5, 0.5)
    previous = {k: torch.ones(n).view_as(model.state_dict()[k]) for k, n in SIZES.items()}
    for r in (1, 2):
        trained = tensors(result, f"round{r - 1}/trained.safetensors")
        expected = magnitude_prune(trained, previous, rates, "layerwise")
        masks = tensors(result, f"round{r}/mask.safetensors")
        assert all(torch.equal(masks[k].float(), expected[k]) for k in SIZES)
        previous = expected


def test_round_starts_from_mask_times_theta_0(
    lottery_cfg: MakeCfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    result = run(lottery_cfg())
    theta_0 = tensors(result, "init.safetensors")
    assert len(spy.calls) == 3
    assert all(torch.equal(spy.calls[0]["start"][k], v) for k, v in theta_0.items())
    for r in (1, 2):
        call, masks = spy.calls[r], tensors(result, f"round{r}/mask.safetensors")
        for k, v in theta_0.items():
            expected = v * masks[k] if k in masks else v  # biases are not pruned or rewound
            assert torch.equal(call["start"][k], expected), (r, k)
        assert all(torch.equal(call["masks"][k], masks[k].float()) for k in masks)
    # the trained ticket of round 1 is not where round 2 starts
    trained = tensors(result, "round1/trained.safetensors")
    assert not torch.equal(spy.calls[2]["start"]["1.weight"], trained["1.weight"])


@pytest.mark.parametrize("extra,early", [([], True), (["lottery.ranking=global"], False),
                                         (["lottery.rewind=10it"], False)])
def test_random_masks_train_before_the_tickets_when_they_need_none(
    lottery_cfg: MakeCfg, monkeypatch: pytest.MonkeyPatch, extra: list[str], early: bool
) -> None:
    # layer-wise ranking without late rewinding: a round's random mask (the ticket's survivors
    # per layer, at random) and start (theta_0) need no trained weights, so one worker trains
    # every random_mask right after round 0; global ranking or theta_k must wait for the tickets
    spy = Spy(monkeypatch)
    run(lottery_cfg("lottery.rounds=2", "lottery.controls=[random_mask]", *extra))
    order = [c["desc"].removeprefix("seed 0 ") for c in spy.calls]
    if early:
        assert order == ["round 0 ticket", "round 1 random_mask", "round 2 random_mask",
                         "round 1 ticket", "round 2 ticket"]
    else:
        assert order == ["round 0 ticket", "round 1 ticket", "round 1 random_mask",
                         "round 2 ticket", "round 2 random_mask"]


def test_controls(lottery_cfg: MakeCfg, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    result = run(lottery_cfg("lottery.rounds=1", "lottery.controls=[reinit,random_mask]"))
    theta_0 = tensors(result, "init.safetensors")
    masks = {k: m.float() for k, m in tensors(result, "round1/mask.safetensors").items()}
    assert len(spy.calls) == 4  # round 0; round 1 ticket, reinit, random_mask
    # (random_mask units need no ticket here, layer-wise ranking: they train first, with round 0)
    ticket, reinit, random_mask = (next(c for c in spy.calls if c["desc"].endswith(f"round 1 {v}"))
                                   for v in ("ticket", "reinit", "random_mask"))
    # the controls train on the round's schedule and data order
    assert ticket["seed"] == reinit["seed"] == random_mask["seed"]

    # reinit: the same mask, other values from the same distribution
    assert all(torch.equal(reinit["masks"][k], masks[k]) for k in masks)
    for k, m in masks.items():
        w, w0 = reinit["start"][k], theta_0[k]
        assert torch.count_nonzero(w[m == 0]) == 0
        assert (w[m == 1] != w0[m == 1]).float().mean() > 0.99
        assert w[m == 1].std().item() == pytest.approx(w0[m == 1].std().item(), rel=0.2)

    # random_mask: the same number of weights per layer, elsewhere; the ticket's init values
    for k, m in masks.items():
        rm = random_mask["masks"][k]
        assert alive(rm) == alive(m)
        assert not torch.equal(rm, m)
        assert torch.equal(random_mask["start"][k], theta_0[k] * rm)

    rows = result.metrics[result.metrics["round"] == 1].set_index("variant")
    assert rows.density.nunique() == 1
    assert (
        rows.loc["reinit", "test_accuracy"] != rows.loc["ticket", "test_accuracy"]
        or rows.loc["reinit", "val_loss"] != rows.loc["ticket", "val_loss"]
    )


def test_late_rewinding_to_theta_k(lottery_cfg: MakeCfg, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    cfg = lottery_cfg("lottery.rewind=10it")
    result = run(cfg)
    theta_0 = tensors(result, "init.safetensors")
    theta_k = tensors(result, "rewind.safetensors")
    assert set(theta_k) == set(theta_0)
    assert not torch.equal(theta_k["1.weight"], theta_0["1.weight"])
    assert all(torch.equal(spy.calls[0]["start"][k], v) for k, v in theta_0.items())
    for r in (1, 2):
        masks = tensors(result, f"round{r}/mask.safetensors")
        for k, v in theta_k.items():
            expected = v * masks[k] if k in masks else v
            assert torch.equal(spy.calls[r]["start"][k], expected), (r, k)

    # theta_k is round 0 after exactly k iterations: retrain 10 iterations and compare
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_model("lenet_300_100", 1, 10, 8)
    model.load_state_dict(theta_0)
    short = cfg.train.copy()
    short.iterations = "10it"
    real_train(model, data, short, seed=spy.calls[0]["seed"], device=torch.device("cpu"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in theta_k.items())


def test_late_rewinding_trains_the_remaining_iterations_on_the_schedule(
    lottery_cfg: MakeCfg,
) -> None:
    cfg = lottery_cfg(
        "lottery.rewind=10it",
        "lottery.rounds=1",
        "lottery.controls=[reinit,random_mask]",
        "train.schedule=step",
        "train.milestones=[0.25]",  # lr x 0.1 from step 8 of 30
    )
    result = run(cfg)
    curves = pd.read_csv(result.run.path / "curves.csv")
    dense = curves[curves["round"] == 0]
    assert dense.iteration.tolist() == [0, 10, 20, 30]
    assert dense.lr.iloc[0] == pytest.approx(cfg.train.lr)
    for variant in ("ticket", "reinit", "random_mask"):  # the controls train the same k..T
        c = curves[(curves["round"] == 1) & (curves.variant == variant)]
        assert c.iteration.tolist() == [10, 20, 30], variant
        assert c.lr.iloc[0] == pytest.approx(cfg.train.lr * 0.1), variant  # the lr at step 10
    m = result.metrics.set_index(["round", "variant"])
    assert m.start_iteration.to_dict() == {
        (0, "ticket"): 0, (1, "ticket"): 10, (1, "reinit"): 10, (1, "random_mask"): 10
    }
    assert (m.iteration == 30).all()
    assert m.loc[1].early_stop_iteration.isin([10, 20, 30]).all()


def test_rewind_in_epochs(lottery_cfg: MakeCfg) -> None:
    cfg = lottery_cfg("lottery.rounds=1", "lottery.rewind=1ep")
    per_epoch = len(load_data(cfg.data).train_x) // cfg.train.batch_size
    by_epoch = tensors(run(cfg), "rewind.safetensors")
    by_iteration = tensors(
        run(lottery_cfg("lottery.rounds=1", f"lottery.rewind={per_epoch}it")), "rewind.safetensors"
    )
    assert all(torch.equal(by_epoch[k], v) for k, v in by_iteration.items())


def test_rewind_beyond_the_budget_is_an_error(lottery_cfg: MakeCfg) -> None:
    with pytest.raises(LottoError, match="rewind"):
        run(lottery_cfg("lottery.rounds=1", "lottery.rewind=100it"))


def test_global_vs_layerwise_ranking(lottery_cfg: MakeCfg) -> None:
    rounds, p = 2, 0.2
    per_layer = {}
    for ranking in ("layerwise", "global"):
        result = run(lottery_cfg(f"lottery.ranking={ranking}"))
        masks = tensors(result, f"round{rounds}/mask.safetensors")
        per_layer[ranking] = {k: alive(m) / SIZES[k] for k, m in masks.items()}
        pooled = sum(alive(masks[k]) for k in HIDDEN) / sum(SIZES[k] for k in HIDDEN)
        assert pooled == pytest.approx((1 - p) ** rounds, abs=1e-3)
        assert per_layer[ranking][OUTPUT] == pytest.approx((1 - p / 2) ** rounds, abs=1e-3)
    # layer-wise: every hidden layer at the rate; global: the hidden layers differ
    assert all(per_layer["layerwise"][k] == pytest.approx(0.64, abs=1e-3) for k in HIDDEN)
    a, b = (per_layer["global"][k] for k in HIDDEN)
    assert abs(a - b) > 0.01


def test_global_ranking_pools_conv_and_fc_and_keeps_the_output_apart(
    lottery_cfg: MakeCfg,
) -> None:
    # output at the hidden rate: a ranking that pooled equal rates would rank it with them
    result = run(lottery_cfg("model.name=conv2", "train.iterations=20it", "lottery.rounds=1",
                             "lottery.ranking=global", "lottery.output_rate_factor=1.0"))
    kinds = layer_kinds(build_model("conv2", 1, 10, 8))
    trained = tensors(result, "round0/trained.safetensors")
    masks = tensors(result, "round1/mask.safetensors")
    hidden = [k for k, kind in kinds.items() if kind != "output"]
    output = [k for k, kind in kinds.items() if kind == "output"]
    for names in (hidden, output):
        w = torch.cat([trained[k].flatten() for k in names]).abs()
        m = torch.cat([masks[k].flatten() for k in names]).bool()
        assert int((~m).sum()) == round(0.2 * w.numel())  # prune_rate, conv_rate_factor unused
        assert w[~m].max() <= w[m].min()  # the smallest of the pool
    # one ranking across kinds: the conv layers do not all lose the same 20%
    assert any(abs(alive(masks[k]) / masks[k].numel() - 0.8) > 0.02 for k in hidden)


def test_min_weights_per_layer_reaches_the_pruning(
    lottery_cfg: MakeCfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    real = lottery_mod.magnitude_prune

    def spy(*args: object, **kw: object) -> object:
        seen.append(kw.get("min_weights"))
        return real(*args, **kw)

    monkeypatch.setattr(lottery_mod, "magnitude_prune", spy)
    run(lottery_cfg("lottery.rounds=1", "lottery.min_weights_per_layer=7"))
    assert seen == [7]


# --- resume and determinism ----------------------------------------------------------------------


@pytest.mark.parametrize("rewind", ["0it", "10it"])
def test_resume_after_interruption_gives_identical_metrics(
    lottery_cfg: MakeCfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rewind: str
) -> None:
    extra = ("lottery.controls=[reinit]", f"lottery.rewind={rewind}")
    reference = run(lottery_cfg(*extra, f"run.runs_dir={tmp_path / 'a'}"))
    cfg = lottery_cfg(*extra, f"run.runs_dir={tmp_path / 'b'}")

    with monkeypatch.context() as m:
        Spy(m, fail_after=3)  # round 0, round 1 ticket and reinit; then round 2 is interrupted
        with pytest.raises(KeyboardInterrupt):
            run(cfg)
    path = tmp_path / "b" / "lottery" / reference.run.path.name
    partial = pd.read_csv(path / "metrics.csv")
    assert len(partial) == 3 and partial["round"].max() == 1
    assert not list(path.rglob("*.tmp"))

    spy = Spy(monkeypatch)
    resumed = run(cfg)
    assert resumed.run.path == path
    assert len(spy.calls) == 2  # only round 2's ticket and reinit
    pd.testing.assert_frame_equal(
        results(path / "metrics.csv"), results(reference.run.path / "metrics.csv")
    )
    curves = [
        pd.read_csv(p / "curves.csv")
        .drop(columns="seconds")
        .sort_values(["round", "variant", "iteration"])
        .reset_index(drop=True)
        for p in (path, reference.run.path)
    ]
    pd.testing.assert_frame_equal(*curves)
    for name in ("round2/mask.safetensors", "round2/trained.safetensors"):
        a, b = tensors(resumed, name), tensors(reference, name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_recomputes_rows_missing_from_metrics(
    lottery_cfg: MakeCfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = lottery_cfg()
    first = run(cfg)
    csv = first.run.path / "metrics.csv"
    before = results(csv)
    pd.read_csv(csv).iloc[:-1].to_csv(csv, index=False)  # as if killed before the last row
    spy = Spy(monkeypatch)
    run(cfg)
    assert len(spy.calls) == 1
    pd.testing.assert_frame_equal(results(csv), before)


def test_finished_run_is_not_recomputed(
    lottery_cfg: MakeCfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = lottery_cfg("lottery.controls=[random_mask]")
    first = run(cfg)
    Spy(monkeypatch, fail_after=0, fail=AssertionError("trained again"))
    again = run(cfg)
    pd.testing.assert_frame_equal(
        again.metrics[RESULTS].reset_index(drop=True),
        first.metrics[RESULTS].reset_index(drop=True),
        check_dtype=False,
    )


def test_force_starts_afresh(lottery_cfg: MakeCfg, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = lottery_cfg("lottery.rounds=1")
    run(cfg)
    spy = Spy(monkeypatch)
    result = run(cfg, force=True)
    assert len(spy.calls) == 2 and len(result.metrics) == 2


def test_deterministic_on_cpu(lottery_cfg: MakeCfg, tmp_path: Path) -> None:
    extra = ("lottery.controls=[reinit,random_mask]", "lottery.rounds=1")
    a = run(lottery_cfg(*extra, f"run.runs_dir={tmp_path / 'a'}"))
    b = run(lottery_cfg(*extra, f"run.runs_dir={tmp_path / 'b'}"))
    assert a.run.path != b.run.path and a.run.path.name == b.run.path.name
    pd.testing.assert_frame_equal(
        results(a.run.path / "metrics.csv"), results(b.run.path / "metrics.csv")
    )
    for name in ("init.safetensors", "round1/mask.safetensors", "round1/trained.safetensors"):
        x, y = tensors(a, name), tensors(b, name)
        assert all(torch.equal(x[k], y[k]) for k in x)
    c = run(lottery_cfg(*extra, "seed=1"))
    assert not torch.equal(
        tensors(c, "init.safetensors", seed=1)["1.weight"],
        tensors(a, "init.safetensors")["1.weight"],
    )


def test_seeds_are_replicates(lottery_cfg: MakeCfg) -> None:
    result = run(lottery_cfg("lottery.rounds=1", "lottery.seeds=2", "seed=5"))
    assert sorted(result.metrics.seed.unique()) == [5, 6]
    assert len(result.metrics) == 4
    assert (result.table.seeds == 2).all() and "test_accuracy_std" in result.table
    a, b = tensors(result, "init.safetensors", 5), tensors(result, "init.safetensors", 6)
    assert not torch.equal(a["1.weight"], b["1.weight"])


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,key",
    [
        ("lottery.prune_rate=0", "lottery.prune_rate"),
        ("lottery.prune_rate=1", "lottery.prune_rate"),
        ("lottery.prune_rate=1.5", "lottery.prune_rate"),
        ("lottery.prune_rate=-0.1", "lottery.prune_rate"),
        ("lottery.rounds=0", "lottery.rounds"),
        ("lottery.rounds=-2", "lottery.rounds"),
        ("lottery.seeds=0", "lottery.seeds"),
        ("lottery.ranking=random", "lottery.ranking"),
        ("lottery.controls=[ticket]", "lottery.controls"),
        ("lottery.controls=[shuffle]", "lottery.controls"),
        ("lottery.rewind=soon", "lottery.rewind"),
        ("lottery.output_rate_factor=5", "lottery.output_rate_factor"),
        ("lottery.conv_rate_factor=-1", "lottery.conv_rate_factor"),
        ("lottery.min_weights_per_layer=-1", "lottery.min_weights_per_layer"),
    ],
)
def test_validate(lottery_cfg: MakeCfg, override: str, key: str) -> None:
    with pytest.raises(LottoError, match=f"config key {key}"):
        validate(lottery_cfg(override))


@pytest.mark.parametrize(
    "override",
    ["model.name=nope", "data.name=nope", "lottery.rounds=0", "data.val_size=0", "device=tpu"],
)
def test_mistakes_create_no_run_directory(
    lottery_cfg: MakeCfg, runs_dir: Path, override: str
) -> None:
    with pytest.raises(LottoError):
        run(lottery_cfg(override))
    assert not (runs_dir / "lottery").exists() or not list((runs_dir / "lottery").iterdir())


def test_bad_train_config_is_a_user_error(lottery_cfg: MakeCfg) -> None:
    with pytest.raises(LottoError, match="train.optimizer"):
        run(lottery_cfg("train.optimizer=lbfgs"))


def test_divergence_keeps_finished_rounds(
    lottery_cfg: MakeCfg, runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Spy(monkeypatch, fail_after=2, fail=TrainingDiverged(20))
    with pytest.raises(LottoError, match="round 2") as err:
        run(lottery_cfg())
    assert "iteration 20" in str(err.value)
    tables = list(runs_dir.rglob("metrics.csv"))
    assert len(tables) == 1 and pd.read_csv(tables[0])["round"].tolist() == [0, 1]


def test_real_divergence_names_round_0(lottery_cfg: MakeCfg) -> None:
    with pytest.raises(LottoError, match="round 0"):
        run(lottery_cfg("train.lr=1e30"))
