"""Batched replicas train exactly as one-by-one `train` would, to floating-point rounding.

Tolerance: the batched forward sums matmuls and convolutions in another order than one model
alone, so the two runs differ by rounding only. The equivalence tests run in float64, where after
60 steps (Adam or SGD, momentum, weight decay, masks) the largest weight difference measured is
~5e-16: they allow 1e-10, and any real mistake (another replica's batch, a missed mask, a wrong lr
or a lost momentum) moves weights by 1e-3 or more. In float32 the measured gap is ~1e-8 for SGD
but up to ~7e-4 for Adam on conv2: Adam divides by sqrt(v), so a gradient that is rounding noise
(a dead unit) becomes a step of size lr either way; float32 cases use LeNet/SGD at 1e-4.
Accuracies are counts of argmax hits, which rounding does not flip here: they agree to 1e-6, and
early-stop iterations exactly.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

import lotto.replicas as replicas_mod
from lotto.config import load_config
from lotto.data import Data, load_data
from lotto.errors import LottoError
from lotto.models import build_model
from lotto.pruning import prunable
from lotto.replicas import ReplicaDiverged, can_batch, train_replicas
from lotto.train import TrainingDiverged, train

CPU = torch.device("cpu")
WEIGHT_TOL = {torch.float64: 1e-10, torch.float32: 1e-4}
ACC_TOL = 1e-6


@pytest.fixture(scope="module")
def digits() -> Data:
    data = load_data(load_config("lottery", overrides=["data.name=digits"]).data)
    return dataclasses.replace(data, augment=True)  # the per-seed augmentation draws count too


def train_cfg(*overrides: str) -> DictConfig:
    base = ["train.iterations=60it", "train.eval_every=10it"]
    return load_config("lottery", overrides=base + [f"train.{o}" for o in overrides]).train


def models(name: str, count: int, size: int = 8, **options: object) -> list[nn.Module]:
    out = []
    for seed in range(count):  # a different initialisation per replica
        torch.manual_seed(100 + seed)
        out.append(build_model(name, 1, 10, size, **options))
    return out


def random_masks(model: nn.Module, keep: float, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: (torch.rand(p.shape, generator=gen) < keep).float() for k, p in prunable(model).items()
    }


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


F64, F32 = torch.float64, torch.float32
CASES = {
    # seeds [1, 2, 1]: unequal seed groups (one input per replica); [4, 7, 7, 4]: two groups of
    # two replicas sharing each batch (the first layer is one wide matmul or conv per group)
    "lenet-adam": ("lenet_300_100", [1, 2, 1], ["optimizer=adam", "lr=0.003"], F64),
    "lenet-sgd-shared": ("lenet_300_100", [4, 7, 7, 4], ["optimizer=sgd", "lr=0.05"], F64),
    "conv2-sgd": ("conv2", [1, 2, 1], ["optimizer=sgd", "lr=0.03"], F64),
    "conv2-adam-shared": ("conv2", [3, 3, 3], ["optimizer=adam", "lr=0.002"], F64),
    "lenet-sgd-float32": ("lenet_300_100", [1, 2, 2], ["optimizer=sgd", "lr=0.05"], F32),
}


def as_dtype(data: Data, dtype: torch.dtype) -> Data:
    x = {k: getattr(data, k).to(dtype) for k in ("train_x", "val_x", "test_x")}
    return dataclasses.replace(data, **x)


def small(data: Data) -> Data:
    """Conv cases: 4x4 images (2x2 average pooling), 60 validation and test examples (the
    per-example cost of conv2 in float64 is ~40x LeNet's; the checks do not need more)."""
    x = {k: F.avg_pool2d(getattr(data, k), 2) for k in ("train_x", "val_x", "test_x")}
    for k in ("val", "test"):
        x[f"{k}_x"], x[f"{k}_y"] = x[f"{k}_x"][:60], getattr(data, f"{k}_y")[:60]
    return dataclasses.replace(data, **x)


@pytest.mark.parametrize("case", list(CASES))
def test_batched_matches_one_by_one(digits: Data, case: str) -> None:
    """Different inits, seeds and masks, momentum, weight decay, a step schedule, late
    rewinding (start at 20) and checkpoints: every replica ends where `train` takes it."""
    name, seeds, extra, dtype = CASES[case]
    digits = as_dtype(digits, dtype)
    if name == "conv2":  # same steps, start, checkpoint and augmentation; less work per step
        digits, extra = small(digits), [*extra, "batch_size=20"]
    cfg = train_cfg(
        *extra, "momentum=0.9", "weight_decay=1e-4", "schedule=step", "milestones=[0.5]"
    )
    batched = [m.to(dtype) for m in models(name, len(seeds), digits.image_size)]
    serial = copy.deepcopy(batched)
    masks = [None] + [random_masks(batched[0], 0.3 + 0.2 * i, i) for i in range(len(seeds) - 1)]
    seen_b: list[dict] = [{} for _ in seeds]
    seen_s: list[dict] = [{} for _ in seeds]

    def keep(into: dict):
        return lambda m: into.update({k: v.detach().clone() for k, v in m.state_dict().items()})

    expected = [
        train(
            m,
            digits,
            cfg,
            seed=s,
            device=CPU,
            masks=k,
            start_iteration=20,
            checkpoints={40: keep(seen)},
        )
        for m, s, k, seen in zip(serial, seeds, masks, seen_s)
    ]
    got = train_replicas(
        batched,
        digits,
        cfg,
        seeds=seeds,
        device=CPU,
        masks=masks,
        start_iteration=20,
        checkpoints=[{40: keep(seen)} for seen in seen_b],
    )

    for i, (a, b) in enumerate(zip(expected, got)):
        assert max_diff(serial[i], batched[i]) < WEIGHT_TOL[dtype], (case, i)
        assert (
            max(abs(seen_s[i][k] - seen_b[i][k]).max().item() for k in seen_s[i])
            < WEIGHT_TOL[dtype]
        )
        assert [r["iteration"] for r in b.history] == [r["iteration"] for r in a.history]
        assert [r["lr"] for r in b.history] == [r["lr"] for r in a.history]
        assert b.early_stop_iteration == a.early_stop_iteration
        assert (b.iterations, b.start_iteration) == (a.iterations, a.start_iteration) == (60, 20)
        for ra, rb in zip(a.history, b.history):
            assert rb["val_accuracy"] == pytest.approx(ra["val_accuracy"], abs=ACC_TOL)
            assert rb["test_accuracy"] == pytest.approx(ra["test_accuracy"], abs=ACC_TOL)
            assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-4)
            if ra["iteration"] > 20:
                assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4)
    # the replicas really differ: a mix-up between them could not pass the checks above
    assert max_diff(batched[0], batched[-1]) > 1e-2


def test_masks_stay_exactly_zero(digits: Data) -> None:
    batch = models("lenet_300_100", 3)
    masks = [random_masks(batch[0], keep, seed) for seed, keep in enumerate((0.5, 0.2, 0.9))]
    # weight decay and momentum would move a zero weight back if the mask were not re-applied
    cfg = train_cfg("optimizer=sgd", "momentum=0.9", "weight_decay=0.01", "lr=0.05")
    train_replicas(batch, digits, cfg, seeds=[0, 1, 2], device=CPU, masks=masks)
    for model, mask in zip(batch, masks):
        for k, p in prunable(model).items():
            assert torch.count_nonzero(p[mask[k] == 0]) == 0
            assert torch.count_nonzero(p[mask[k] == 1]) == int(mask[k].sum())


def test_early_stop_is_per_replica(digits: Data, monkeypatch: pytest.MonkeyPatch) -> None:
    # scripted evaluations at 0, 10, 20, 30, 40: replica 0's val loss is lowest at 20, replica
    # 1's at 10, replica 2's at 40 (the first minimum wins a tie)
    val = {0: [3, 2, 1, 1, 1.5], 1: [3, 0.5, 1, 1, 0.5], 2: [3, 2, 2, 2, 1]}
    calls = iter(range(100))

    def fake(stack, x, y):
        call = next(calls)
        at = call // 2
        if call % 2 == 0:
            return [(val[k][at], 0.1 * at + k / 100) for k in range(3)]
        return [(9.0, 0.2 * at + k / 100) for k in range(3)]

    monkeypatch.setattr(replicas_mod, "_evaluate", fake)
    results = train_replicas(
        models("lenet_300_100", 3),
        digits,
        train_cfg("iterations=40it"),
        seeds=[0, 0, 1],
        device=CPU,
    )
    assert [r.early_stop_iteration for r in results] == [20, 10, 40]
    assert [r.early_stop_val_loss for r in results] == [1, 0.5, 1]
    assert [r.early_stop_test_accuracy for r in results] == pytest.approx([0.4, 0.21, 0.82])
    assert [r.test_accuracy for r in results] == pytest.approx([0.8, 0.81, 0.82])
    assert [r.val_accuracy for r in results] == pytest.approx([0.4, 0.41, 0.42])


def test_reported_tests_each_replica_at_its_early_stop_and_end(digits: Data) -> None:
    """`eval_test="reported"`: the test split only where results report it, from each replica's
    kept early-stop weights: the same numbers as testing at every evaluation, and as `train`."""
    cfg = train_cfg("optimizer=adam", "lr=0.02", "iterations=80it")
    seeds, start = [0, 1, 0], models("lenet_300_100", 3)
    every = train_replicas(copy.deepcopy(start), digits, cfg, seeds=seeds, device=CPU)
    batched = copy.deepcopy(start)
    got = train_replicas(batched, digits, cfg, seeds=seeds, device=CPU, eval_test="reported")
    alone = [train(m, digits, cfg, seed=s, device=CPU, eval_test="reported")
             for m, s in zip(copy.deepcopy(start), seeds)]
    # the check needs early stops before the end (else the kept weights are the final ones)
    assert any(r.early_stop_iteration < r.iterations for r in got)
    for a, b, c in zip(every, got, alone):
        assert b.early_stop_iteration == a.early_stop_iteration == c.early_stop_iteration
        assert b.early_stop_test_accuracy == pytest.approx(a.early_stop_test_accuracy, abs=ACC_TOL)
        assert b.early_stop_test_accuracy == pytest.approx(c.early_stop_test_accuracy, abs=ACC_TOL)
        assert b.test_accuracy == pytest.approx(a.test_accuracy, abs=ACC_TOL)
        tested = [r["iteration"] for r in b.history if r["test_accuracy"] == r["test_accuracy"]]
        assert tested == sorted({b.early_stop_iteration, b.iterations})
    final = copy.deepcopy(start)
    train_replicas(final, digits, cfg, seeds=seeds, device=CPU)
    assert max(max_diff(x, y) for x, y in zip(final, batched)) == 0  # test passes change nothing


def test_can_batch_refuses_batchnorm_dropout_and_amp() -> None:
    cfg = train_cfg()
    assert can_batch(build_model("lenet_300_100", 1, 10, 8), cfg) is None
    assert can_batch(build_model("conv2", 1, 10, 8), cfg) is None
    assert "BatchNorm" in can_batch(build_model("vgg", 3, 10, 32), cfg)
    assert "dropout" in can_batch(build_model("lenet_300_100", 1, 10, 8, dropout=0.5), cfg)
    assert "amp" in can_batch(build_model("lenet_300_100", 1, 10, 8), train_cfg("amp=true"))

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))

    assert "not a plain nn.Sequential" in can_batch(Custom(), cfg)


def test_train_replicas_refuses_unbatchable_models(digits: Data) -> None:
    batch = models("lenet_300_100", 1) + models("lenet_300_100", 1, dropout=0.5)
    with pytest.raises(LottoError, match="replica 1 cannot be trained batched: .*dropout"):
        train_replicas(batch, digits, train_cfg(), seeds=[0, 1], device=CPU)
    mixed = models("lenet_300_100", 1) + models("conv2", 1)
    with pytest.raises(LottoError, match="replica 1 does not have the shape"):
        train_replicas(mixed, digits, train_cfg(), seeds=[0, 1], device=CPU)


def test_a_diverged_replica_is_named(digits: Data) -> None:
    batch = models("lenet_300_100", 3)
    with torch.no_grad():
        next(batch[1].parameters()).fill_(float("nan"))
    with pytest.raises(ReplicaDiverged, match="replica 1: loss is not finite at iteration 10") as e:
        train_replicas(batch, digits, train_cfg(), seeds=[0, 1, 2], device=CPU)
    assert isinstance(e.value, TrainingDiverged) and e.value.replica == 1
