"""The trainer: step parsing, schedules, early-stop bookkeeping, masks, hooks, devices."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import lotto.train as train_mod
from lotto.config import load_config
from lotto.data import Data, load_data
from lotto.errors import LottoError
from lotto.models import build_model
from lotto.pruning import layer_rates, magnitude_prune, ones_masks, prunable
from lotto.train import (
    TrainingDiverged,
    evaluate,
    lr_factor,
    parse_step,
    resolve_device,
    train,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> Data:
    return load_data(load_config("lottery", overrides=["data.name=digits"]).data)


def train_cfg(*overrides: str) -> DictConfig:
    base = ["train.iterations=30it", "train.eval_every=10it"]
    return load_config("lottery", overrides=base + [f"train.{o}" for o in overrides]).train


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("lenet_300_100", 1, 10, 8)


def state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize(
    "value,per_epoch,expected",
    [
        ("500it", 7, 500),
        ("2ep", 7, 14),
        (500, 7, 500),
        ("500", 7, 500),
        (" 3 ep ", 10, 30),
        ("0it", 7, 0),
        (0, 3, 0),
    ],
)
def test_parse_step(value: str | int, per_epoch: int, expected: int) -> None:
    assert parse_step(value, per_epoch) == expected


@pytest.mark.parametrize("value", ["abc", "5 it s", "-1it", "1.5ep", "ep", "", "10 epochs", True])
def test_parse_step_rejects(value: str) -> None:
    with pytest.raises(LottoError, match="step count"):
        parse_step(value, 10)


def schedule_cfg(**kw: object) -> DictConfig:
    base = {"schedule": "constant", "milestones": [], "gamma": 0.1}
    return OmegaConf.create({**base, **kw})


def test_step_schedule_drops_at_fractions() -> None:
    f = lr_factor(schedule_cfg(schedule="step", milestones=[0.5, 0.75]), total=100, warmup=0)
    assert [f(i) for i in (0, 49)] == [1.0, 1.0]
    assert f(50) == pytest.approx(0.1) and f(74) == pytest.approx(0.1)
    assert f(75) == pytest.approx(0.01) and f(99) == pytest.approx(0.01)


def test_warmup_is_linear_then_schedule() -> None:
    f = lr_factor(schedule_cfg(), total=100, warmup=10)
    assert [f(i) for i in range(10)] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert f(10) == 1.0 and f(99) == 1.0


def test_cosine_decays_to_near_zero() -> None:
    f = lr_factor(schedule_cfg(schedule="cosine"), total=100, warmup=0)
    values = [f(i) for i in range(100)]
    assert values[0] == 1.0
    assert values[50] == pytest.approx(0.5)
    assert values[-1] < 1e-3
    assert all(a >= b for a, b in zip(values, values[1:]))
    g = lr_factor(schedule_cfg(schedule="cosine"), total=100, warmup=20)
    assert g(19) == 1.0 and g(20) == 1.0 and g(99) < 1e-3


def test_constant_schedule() -> None:
    f = lr_factor(schedule_cfg(), total=10, warmup=0)
    assert {f(i) for i in range(10)} == {1.0}


def test_trainer_applies_schedule(digits: Data) -> None:
    cfg = train_cfg(
        "iterations=20it", "eval_every=5it", "schedule=step", "milestones=[0.5]", "lr=0.01"
    )
    result = train(model(), digits, cfg, seed=0, device=CPU)
    lr = {row["iteration"]: row["lr"] for row in result.history}
    assert lr[5] == pytest.approx(0.01) and lr[10] == pytest.approx(0.001)
    assert lr[20] == pytest.approx(0.001)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_scheduled_training_warns_nothing(digits: Data, optimizer: str) -> None:
    """The scheduler sees every optimizer step (the direct fused-Adam step included): PyTorch
    warns when a scheduler steps before its optimizer ever did."""
    import warnings

    cfg = train_cfg("iterations=6it", "eval_every=3it", "schedule=cosine", f"optimizer={optimizer}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model(), digits, cfg, seed=0, device=CPU)


def test_budget_and_history(digits: Data) -> None:
    result = train(model(), digits, train_cfg("iterations=25it"), seed=0, device=CPU)
    assert result.iterations == 25
    assert [r["iteration"] for r in result.history] == [0, 10, 20, 25]
    assert math.isnan(result.history[0]["train_loss"])  # nothing trained before iteration 0
    assert result.test_accuracy == result.history[-1]["test_accuracy"]
    assert result.val_loss == result.history[-1]["val_loss"]
    assert result.test_accuracy > 0.5  # it learns
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


def test_epoch_budget(digits: Data) -> None:
    per_epoch = len(digits.train_x) // 60
    result = train(
        model(), digits, train_cfg("iterations=2ep", "eval_every=1ep"), seed=0, device=CPU
    )
    assert result.iterations == 2 * per_epoch
    assert result.epochs == 2.0
    assert [r["iteration"] for r in result.history] == [0, per_epoch, 2 * per_epoch]


def test_early_stop_bookkeeping(digits: Data, monkeypatch: pytest.MonkeyPatch) -> None:
    # scripted evaluations: val loss is lowest (first) at iteration 20, not at the end
    val = iter([(3.0, 0.1), (2.0, 0.2), (1.0, 0.3), (1.0, 0.35), (1.5, 0.4)])
    test = iter([(9.0, 0.11), (9.0, 0.22), (9.0, 0.33), (9.0, 0.44), (9.0, 0.55)])
    calls = iter(range(100))

    def fake(m: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000):
        return next(val) if next(calls) % 2 == 0 else next(test)

    monkeypatch.setattr(train_mod, "evaluate", fake)
    result = train(model(), digits, train_cfg("iterations=40it"), seed=0, device=CPU)
    assert result.early_stop_iteration == 20  # the first minimum wins a tie
    assert result.early_stop_val_loss == 1.0
    assert result.early_stop_test_accuracy == 0.33
    assert result.test_accuracy == 0.55 and result.val_loss == 1.5


def test_early_stop_is_argmin_of_history(digits: Data) -> None:
    result = train(model(), digits, train_cfg("iterations=60it", "lr=0.02"), seed=0, device=CPU)
    best = min(result.history, key=lambda r: r["val_loss"])
    assert result.early_stop_iteration == best["iteration"]
    assert result.early_stop_val_loss == best["val_loss"]
    assert result.early_stop_test_accuracy == best["test_accuracy"]


def test_masked_weights_stay_exactly_zero(digits: Data) -> None:
    m = model()
    gen = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(p.shape, generator=gen) for k, p in prunable(m).items()}
    masks = magnitude_prune(weights, ones_masks(m), layer_rates(m, 0.5))
    # weight decay and momentum would move a zero weight back if the mask were not re-applied
    cfg = train_cfg("optimizer=sgd", "momentum=0.9", "weight_decay=0.01", "lr=0.05")
    train(m, digits, cfg, seed=0, device=CPU, masks=masks)
    for k, p in prunable(m).items():
        assert torch.count_nonzero(p[masks[k] == 0]) == 0
        assert torch.count_nonzero(p[masks[k] == 1]) == int(masks[k].sum())


def test_masks_with_adam(digits: Data) -> None:
    m = model()
    masks = {k: (torch.rand(p.shape) > 0.7).float() for k, p in prunable(m).items()}
    train(m, digits, train_cfg(), seed=0, device=CPU, masks=masks)
    assert all(torch.count_nonzero(p[masks[k] == 0]) == 0 for k, p in prunable(m).items())


def test_after_backward_sees_gradients_every_iteration(digits: Data) -> None:
    seen: list[float] = []

    def hook(m: nn.Module) -> None:
        seen.append(sum(p.grad.abs().sum().item() for p in m.parameters()))

    train(model(), digits, train_cfg("iterations=13it"), seed=0, device=CPU, after_backward=hook)
    assert len(seen) == 13 and all(g > 0 for g in seen)


def test_after_backward_can_change_the_update(digits: Data) -> None:
    def freeze(m: nn.Module) -> None:
        for p in m.parameters():
            p.grad.zero_()

    m = model()
    before = state(m)
    train(
        m,
        digits,
        train_cfg("optimizer=sgd", "momentum=0.0"),
        seed=0,
        device=CPU,
        after_backward=freeze,
    )
    assert all(torch.equal(before[k], v) for k, v in state(m).items())


def test_checkpoints_called_at_iteration_k(digits: Data) -> None:
    snaps: dict[int, dict] = {}
    hooks = {k: (lambda m, k=k: snaps.__setitem__(k, state(m))) for k in (0, 7, 30)}
    m = model()
    init = state(m)
    train(m, digits, train_cfg(), seed=3, device=CPU, checkpoints=hooks)
    assert set(snaps) == {0, 7, 30}
    assert all(torch.equal(snaps[0][k], init[k]) for k in init)
    assert all(torch.equal(snaps[30][k], v) for k, v in state(m).items())
    # the iteration-7 snapshot is the state after exactly 7 steps of the same run
    short = model()
    train(short, digits, train_cfg("iterations=7it"), seed=3, device=CPU)
    assert all(torch.equal(snaps[7][k], v) for k, v in state(short).items())
    assert not torch.equal(snaps[7]["1.weight"], init["1.weight"])


def test_deterministic_on_cpu(digits: Data) -> None:
    a, b, c = model(), model(), model()
    ra = train(a, digits, train_cfg("lr=0.01"), seed=1, device=CPU)
    rb = train(b, digits, train_cfg("lr=0.01"), seed=1, device=CPU)
    rc = train(c, digits, train_cfg("lr=0.01"), seed=2, device=CPU)
    assert all(torch.equal(v, state(b)[k]) for k, v in state(a).items())

    def rows(history: list[dict]) -> list[dict]:  # NaN != NaN: compare their text
        return [{k: repr(v) for k, v in r.items() if k != "seconds"} for r in history]

    assert rows(ra.history) == rows(rb.history)
    assert not torch.equal(state(a)["1.weight"], state(c)["1.weight"])  # seed = data order
    assert ra.val_loss != rc.val_loss


def test_dropout_is_seeded(digits: Data) -> None:
    torch.manual_seed(0)
    init = state(build_model("lenet_300_100", 1, 10, 8, dropout=0.5))

    def run(seed: int, earlier_draws: int) -> torch.Tensor:
        m = build_model("lenet_300_100", 1, 10, 8, dropout=0.5)
        m.load_state_dict(init)
        torch.manual_seed(earlier_draws)  # whatever used the global generator before training
        train(m, digits, train_cfg("iterations=10it"), seed=seed, device=CPU)
        return m[1].weight.detach().clone()

    # the dropout masks come from the trainer's seed, not from the global generator's history
    assert torch.equal(run(4, earlier_draws=1), run(4, earlier_draws=2))


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.05), ("rmsprop", 1e-3), ("adam", 1e-3)])
def test_optimizers(digits: Data, optimizer: str, lr: float) -> None:
    result = train(
        model(), digits, train_cfg(f"optimizer={optimizer}", f"lr={lr}"), seed=0, device=CPU
    )
    assert result.val_loss < result.history[0]["val_loss"]


def test_augment_keeps_shapes(digits: Data) -> None:
    import dataclasses

    augmented = dataclasses.replace(digits, augment=True)
    plain, flipped = model(), model()
    result = train(flipped, augmented, train_cfg("iterations=5it"), seed=0, device=CPU)
    assert result.iterations == 5
    train(plain, digits, train_cfg("iterations=5it"), seed=0, device=CPU)
    assert not torch.equal(state(plain)["1.weight"], state(flipped)["1.weight"])  # it is used


def test_augment_flips_and_shifts_deterministically() -> None:
    x = torch.rand(64, 2, 8, 8, generator=torch.Generator().manual_seed(0)) + 1  # no zeros
    a = train_mod._augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape
    assert torch.equal(a, train_mod._augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, train_mod._augment(x, torch.Generator().manual_seed(1)))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    seen = set()
    for i in range(len(x)):
        # each output is its own input, maybe mirrored, padded by 4 and cropped back to 8x8
        views = {False: padded[i], True: padded[i].flip(2)}
        found = [
            (flip, dy, dx)
            for flip, p in views.items()
            for dy in range(9)
            for dx in range(9)
            if torch.equal(a[i], p[:, dy : dy + 8, dx : dx + 8])
        ]
        assert len(found) == 1, (i, found)
        seen.add(found[0])
    assert {f for f, _, _ in seen} == {False, True}  # some flipped, some not
    assert len({(dy, dx) for _, dy, dx in seen}) > 20  # shifts spread over the 9x9 offsets


def test_divergence_raises(digits: Data) -> None:
    with pytest.raises(TrainingDiverged) as err:
        train(model(), digits, train_cfg("lr=1e30"), seed=0, device=CPU)
    assert isinstance(err.value, LottoError)
    assert err.value.iteration == 10
    assert "iteration 10" in str(err.value)


@pytest.mark.parametrize(
    "override,key",
    [
        ("optimizer=lbfgs", "train.optimizer"),
        ("schedule=wavy", "train.schedule"),
        ("lr=0", "train.lr"),
        ("batch_size=0", "train.batch_size"),
        ("milestones=[1.5]", "train.milestones"),
        ("iterations=lots", "train.iterations"),
        ("eval_every=often", "train.eval_every"),
        ("warmup=-3", "train.warmup"),
    ],
)
def test_bad_train_config(digits: Data, override: str, key: str) -> None:
    with pytest.raises(LottoError, match=key):
        train(model(), digits, train_cfg(override), seed=0, device=CPU)


def test_evaluate_restores_training_mode(digits: Data) -> None:
    m = model().train()
    loss, acc = evaluate(m, digits.val_x, digits.val_y, batch_size=50)
    assert m.training and 0.0 <= acc <= 1.0 and loss > 0
    m.eval()
    loss2, acc2 = evaluate(m, digits.val_x, digits.val_y)
    assert not m.training and loss2 == pytest.approx(loss, rel=1e-5) and acc2 == acc


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(LottoError, match="unknown device 'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU")
def test_cuda_without_gpu_is_a_user_error() -> None:
    with pytest.raises(LottoError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(LottoError, match="no CUDA GPU"):
        resolve_device("cuda:1")


def test_start_iteration_continues_the_schedule_and_batch_order(digits: Data) -> None:
    """Late rewinding: from theta_k at step k the trainer runs steps k..T with the lr and the
    batches of the run that reached theta_k (plain SGD has no state: the same end weights)."""
    import dataclasses

    data = dataclasses.replace(digits, augment=True)  # the augmentation draws are replayed too
    cfg = train_cfg(
        "optimizer=sgd", "momentum=0.0", "lr=0.05", "schedule=step", "milestones=[0.25]"
    )
    factor = lr_factor(cfg, 30, 0)
    assert factor(10) != factor(0)  # the milestone (step 8) lies before k = 10

    def batches(m: nn.Module) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []

        def keep(mod: nn.Module, args: tuple) -> None:
            if mod.training:  # evaluation runs in eval mode
                seen.append(args[0].clone())

        m.register_forward_pre_hook(keep)
        return seen

    snap: dict[str, torch.Tensor] = {}
    dense = model()
    dense_batches = batches(dense)
    train(dense, data, cfg, seed=5, device=CPU, checkpoints={10: lambda m: snap.update(state(m))})
    resumed = model()
    resumed.load_state_dict(snap)
    resumed_batches = batches(resumed)
    result = train(resumed, data, cfg, seed=5, device=CPU, start_iteration=10)

    assert len(dense_batches) == 30 and len(resumed_batches) == 20  # T - k steps
    assert all(torch.equal(a, b) for a, b in zip(resumed_batches, dense_batches[10:]))
    assert [row["iteration"] for row in result.history] == [10, 20, 30]
    assert result.history[0]["lr"] == pytest.approx(cfg.lr * factor(10))
    assert result.iterations == 30 and result.start_iteration == 10
    assert result.early_stop_iteration in (10, 20, 30)
    assert all(torch.equal(v, state(dense)[k]) for k, v in state(resumed).items())
    with pytest.raises(LottoError, match="start iteration 30"):
        train(model(), data, cfg, seed=5, device=CPU, start_iteration=30)


# Curves of the trainer at commit afcc1b7 (before the speed work: one-tensor-at-a-time
# optimizers, 2,000-image evaluation passes, the scheduler stepped every iteration), computed
# there with this test's setup: (iteration, val_loss, test_accuracy, train_loss).
BASE_CURVES = {
    "adam": [
        (0, 2.358641084257539, 0.10833333333333334, math.nan),
        (20, 0.5163735876550207, 0.9361111111111111, 1.2698657035827636),
        (40, 0.27527316967090526, 0.9472222222222222, 0.27240819931030275),
        (60, 0.2261019620028409, 0.9555555555555556, 0.15895966291427613),
    ],
    "sgd-step-warmup": [
        (0, 2.358641084257539, 0.10833333333333334, math.nan),
        (20, 0.3288723872258113, 0.9222222222222223, 1.2132145881652832),
        (40, 0.2821862014023574, 0.9416666666666667, 0.1873145341873169),
        (60, 0.2383728560867843, 0.9722222222222222, 0.11601600646972657),
    ],
}
BASE_OVERRIDES = {
    "adam": [],
    "sgd-step-warmup": [
        "optimizer=sgd", "lr=0.05", "schedule=step", "milestones=[0.5]", "warmup=10it"
    ],
}


@pytest.mark.parametrize("name", sorted(BASE_CURVES))
def test_curves_unchanged_from_before_the_speed_work(digits: Data, name: str) -> None:
    cfg = train_cfg("iterations=60it", "eval_every=20it", *BASE_OVERRIDES[name])
    result = train(model(), digits, cfg, seed=3, device=CPU)
    got = [(h["iteration"], h["val_loss"], h["test_accuracy"], h["train_loss"])
           for h in result.history]
    assert [g[0] for g in got] == [b[0] for b in BASE_CURVES[name]]
    for g, b in zip(got, BASE_CURVES[name]):
        # float32 sums: equal here bit for bit; the tolerance leaves room for another CPU's
        # kernels, far below what a change of arithmetic (e.g. the schedule not stepped) moves
        assert g[1:] == pytest.approx(b[1:], abs=1e-7, nan_ok=True)


def test_evaluation_pass_sizes_give_the_block_by_block_numbers(
    digits: Data, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = model()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(3000, 1, 8, 8, generator=gen), torch.randint(0, 10, (3000,), generator=gen)
    big = evaluate(net, x, y, batch_size=7)  # many blocks per forward pass
    assert big[0] > 1.0  # an untrained net's loss: of order 1, so equality means something
    monkeypatch.setattr(train_mod, "EVAL_CHUNK_BYTES", x[0].numel() * 4 * 7)  # one block a pass
    assert evaluate(net, x, y, batch_size=7) == big
    monkeypatch.setattr(train_mod, "EVAL_CHUNK_BYTES", x[0].numel() * 4 * 3)  # a block in pieces
    assert evaluate(net, x, y, batch_size=7) == big


def test_eval_test_reported_tests_only_the_early_stop_and_the_end(
    digits: Data, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = train_cfg("iterations=80it", "eval_every=10it", "lr=0.02")
    full_net, reported_net = model(), model()
    full = train(full_net, digits, cfg, seed=1, device=CPU)
    calls = []
    real = train_mod.evaluate
    monkeypatch.setattr(
        train_mod, "evaluate", lambda m, x, y: calls.append(len(y)) or real(m, x, y)
    )
    reported = train(reported_net, digits, cfg, seed=1, device=CPU, eval_test="reported")
    # the same training, and the same numbers wherever the result reports a test accuracy
    assert [h["val_loss"] for h in reported.history] == [h["val_loss"] for h in full.history]
    assert reported.test_accuracy == full.test_accuracy
    assert reported.early_stop_iteration == full.early_stop_iteration
    assert reported.early_stop_test_accuracy == full.early_stop_test_accuracy
    # the final weights come back, not the early stop's
    for k, v in full_net.state_dict().items():
        assert torch.equal(reported_net.state_dict()[k], v)
    tested = {h["iteration"] for h in reported.history if not math.isnan(h["test_accuracy"])}
    assert tested == {full.early_stop_iteration, full.iterations}
    n_test, n_val = len(digits.test_y), len(digits.val_y)
    assert calls.count(n_test) == len(tested)  # test evaluated once per reported row, no more
    assert reported.evaluated_images == len(full.history) * n_val + len(tested) * n_test
    assert full.evaluated_images == len(full.history) * (n_val + n_test)


def test_eval_test_must_be_known(digits: Data) -> None:
    with pytest.raises(ValueError, match="eval_test"):
        train(model(), digits, train_cfg(), seed=0, device=CPU, eval_test="sometimes")


def test_evaluation_that_dominates_says_so(
    digits: Data, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    real = train_mod.evaluate

    def slow(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        time.sleep(0.05)
        return real(m, x, y)

    monkeypatch.setattr(train_mod, "evaluate", slow)
    monkeypatch.setattr(train_mod, "_EVAL_WARNED", [])
    result = train(model(), digits, train_cfg(), seed=0, device=CPU, desc="tiny")
    assert 0.5 < result.eval_seconds / result.seconds <= 1
    err = capsys.readouterr().err
    assert err.startswith("tiny: evaluation took ") and "train.eval_every" in err
    assert err.count("\n") == 1
    train(model(), digits, train_cfg(), seed=0, device=CPU, desc="again")
    assert capsys.readouterr().err == ""  # said once per process, not once per training

    monkeypatch.setattr(train_mod, "evaluate", real)
    cfg = train_cfg("iterations=200it", "eval_every=200it")
    quiet_result = train(model(), digits, cfg, seed=0, device=CPU, eval_start=False)
    assert quiet_result.eval_warning() is None
    assert capsys.readouterr().err == ""


def test_eval_warning_line() -> None:
    result = train_mod.TrainResult(
        iterations=20, epochs=0.1, train_loss=0.0, val_loss=0.0, val_accuracy=0.0,
        test_accuracy=0.0, early_stop_iteration=0, early_stop_val_loss=0.0,
        early_stop_test_accuracy=0.0, seconds=10.0, history=[{}, {}], eval_seconds=8.5,
        evaluated_images=30000,
    )
    assert result.eval_warning() == (
        "evaluation took 85% of this training's 10.0 s (30,000 images over 2 evaluations for "
        "20 steps): raise train.eval_every, or shrink data.val_size"
    )
    result.eval_seconds = 4.0
    assert result.eval_warning() is None


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_step_function_matches_optimizer_step(weight_decay: float) -> None:
    """The direct fused-Adam step leaves weights and state bit for bit as `optimizer.step`
    does, through a changing learning rate and a step where one parameter has no gradient."""
    from lotto.train import step_function

    torch.manual_seed(0)
    shapes = [(30, 20), (30,), (5, 30)]
    start = [torch.randn(s) for s in shapes]
    runs = []
    for direct in (False, True):
        params = [nn.Parameter(t.clone()) for t in start]
        opt = torch.optim.Adam(params, lr=0.01, weight_decay=weight_decay, fused=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (1 + i))
        step = step_function(opt) if direct else opt.step
        assert (step != opt.step) == direct  # the direct path is the one under test
        gen = torch.Generator().manual_seed(1)
        for i in range(12):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            if i == 5:
                params[1].grad = None
            step()
            sched.step()
        runs.append((params, opt))
    (ref, ref_opt), (got, got_opt) = runs
    for a, b in zip(ref, got):
        assert torch.equal(a, b)
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(ref_opt.state[a][k], got_opt.state[b][k])
    assert ref[0].abs().mean() > 0.5  # weights of order 1, moved by the steps
    assert not torch.equal(ref[0], start[0])
