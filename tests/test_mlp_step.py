"""The hand-written MLP step: the loss and gradients autograd gives, bit for bit, and trainings
through `train` with and without it that end in the same weights and history."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

import lotto.train as train_mod
from lotto.config import load_config
from lotto.data import Data, load_data
from lotto.mlp_step import mlp_layers, mlp_loss_and_grads
from lotto.models import build_model
from lotto.pruning import layer_rates, magnitude_prune, ones_masks, prunable

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> Data:
    return load_data(load_config("lottery", overrides=["data.name=digits"]).data)


def lenet(seed: int = 0, image_size: int = 28, **kw: float) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("lenet_300_100", 1, 10, image_size, **kw)


def masks_for(m: nn.Module, rate: float = 0.8) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    weights = {k: torch.randn(p.shape, generator=gen) for k, p in prunable(m).items()}
    return magnitude_prune(weights, ones_masks(m), layer_rates(m, rate))


def apply_masks(m: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """As the trainer does: the weights multiplied by their masks in place."""
    named = dict(m.named_parameters())
    with torch.no_grad():
        torch._foreach_mul_([named[k] for k in masks], list(masks.values()))


def autograd_grads(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    for p in m.parameters():
        p.grad = None
    loss = F.cross_entropy(m(x).float(), y)
    loss.backward()
    return loss


@pytest.mark.parametrize("masked", [False, True])
def test_grads_bit_identical_to_autograd(masked: bool) -> None:
    ref = lenet()
    if masked:
        apply_masks(ref, masks_for(ref))
    mine = copy.deepcopy(ref)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(60, 1, 28, 28, generator=gen), torch.randint(0, 10, (60,), generator=gen)
    want = autograd_grads(ref, x, y)
    for p in mine.parameters():
        p.grad = torch.full_like(p, 7.0)  # set fresh, not added to
    layers = mlp_layers(mine)
    assert layers is not None and len(layers) == 3
    got = mlp_loss_and_grads(layers, x.flatten(1), y)
    assert torch.equal(got, want.detach())
    for (name, a), b in zip(ref.named_parameters(), mine.parameters()):
        assert torch.equal(a.grad, b.grad), name
    if masked:  # a pruned unit's ReLU is dead for some rows: threshold_backward matters
        assert any((p.grad == 0).any() for p in mine.parameters())


def test_without_flatten_on_flat_rows() -> None:
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(5, 4), nn.ReLU(inplace=True), nn.Linear(4, 3))
    mine = copy.deepcopy(ref)
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    want = autograd_grads(ref, x, y)
    assert torch.equal(mlp_loss_and_grads(mlp_layers(mine), x, y), want.detach())
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ref.parameters(), mine.parameters()))
    with pytest.raises(ValueError, match="2-d batch"):
        mlp_loss_and_grads(mlp_layers(mine), x.view(7, 5, 1), y)


def test_mlp_layers_rejects_what_it_cannot_compute() -> None:
    def mlp(*mods: nn.Module) -> nn.Sequential:
        return nn.Sequential(nn.Flatten(), *mods)

    class MyLinear(nn.Linear):
        pass

    assert mlp_layers(lenet()) is not None
    assert mlp_layers(build_model("conv2", 3, 10, 32)) is None
    assert mlp_layers(lenet(dropout=0.5)) is None
    assert mlp_layers(mlp(nn.Linear(4, 3, bias=False))) is None
    assert mlp_layers(mlp(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2, bias=False))) is None
    assert mlp_layers(mlp(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))) is None
    assert mlp_layers(mlp(nn.Linear(4, 3), nn.ReLU())) is None  # a ReLU after the logits
    assert mlp_layers(mlp(nn.Linear(4, 3), nn.Linear(3, 2))) is None
    assert mlp_layers(mlp(MyLinear(4, 3))) is None
    assert mlp_layers(nn.Sequential(nn.Flatten(2), nn.Linear(4, 3))) is None
    assert mlp_layers(mlp(nn.Linear(4, 3).double())) is None
    assert mlp_layers(nn.Sequential()) is None
    hooked = [lenet() for _ in range(4)]
    hooked[0].register_forward_pre_hook(lambda m, a: None)
    hooked[1][2].register_forward_hook(lambda m, a, o: None)  # the ReLU
    hooked[2][1].weight.register_hook(lambda g: g)
    hooked[3][3].register_full_backward_hook(lambda m, gi, go: None)
    assert all(mlp_layers(m) is None for m in hooked)
    handle = nn.modules.module.register_module_forward_hook(lambda m, a, o: None)
    try:
        assert mlp_layers(lenet()) is None
    finally:
        handle.remove()
    assert mlp_layers(lenet()) is not None


def train_cfg(*overrides: str) -> DictConfig:
    base = ["train.iterations=40it", "train.eval_every=10it"]
    return load_config("lottery", overrides=base + [f"train.{o}" for o in overrides]).train


def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the trainer's hand-written steps."""
    seen: list[int] = []
    real = train_mod.mlp_loss_and_grads

    def counted(*args: object) -> torch.Tensor:
        seen.append(1)
        return real(*args)

    monkeypatch.setattr(train_mod, "mlp_loss_and_grads", counted)
    return seen


def rows(history: list[dict]) -> list[dict]:  # NaN != NaN: compare their text
    return [{k: repr(v) for k, v in r.items() if k != "seconds"} for r in history]


@pytest.mark.parametrize(
    "overrides,masked",
    [
        ((), False),  # the demo's Adam
        ((), True),
        (("optimizer=sgd", "momentum=0.9", "weight_decay=0.01", "lr=0.05"), True),
        (("schedule=step", "milestones=[0.5]", "warmup=5it"), False),
    ],
)
def test_training_is_bit_identical_to_autograd(
    digits: Data, monkeypatch: pytest.MonkeyPatch, overrides: tuple[str, ...], masked: bool
) -> None:
    cfg = train_cfg(*overrides)
    fast_model, slow_model = lenet(image_size=8), lenet(image_size=8)
    masks = masks_for(fast_model) if masked else None
    seen = calls(monkeypatch)
    fast = train_mod.train(fast_model, digits, cfg, seed=4, device=CPU, masks=masks)
    assert len(seen) == 40  # every step went the hand-written way
    monkeypatch.setattr(train_mod, "MLP_FAST_PATH", False)
    slow = train_mod.train(slow_model, digits, cfg, seed=4, device=CPU, masks=masks)
    assert len(seen) == 40
    assert rows(fast.history) == rows(slow.history)
    for (name, a), b in zip(fast_model.state_dict().items(), slow_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_autograd_where_the_step_cannot_be_hand_written(
    digits: Data, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = calls(monkeypatch)
    cfg = train_cfg("iterations=6it")
    train_mod.train(lenet(image_size=8), digits, cfg, seed=0, device=CPU, after_backward=id)
    frozen = lenet(image_size=8)
    frozen[1].bias.requires_grad_(False)
    train_mod.train(frozen, digits, cfg, seed=0, device=CPU)
    train_mod.train(lenet(image_size=8, dropout=0.5), digits, cfg, seed=0, device=CPU)
    assert seen == []
    # a checkpoint callback that adds a hook turns the rest of the training over to autograd
    hooked: list[int] = []
    late = lenet(image_size=8)
    add_hook = {2: lambda m: m.register_forward_hook(lambda *a: hooked.append(1))}
    train_mod.train(late, digits, cfg, seed=0, device=CPU, checkpoints=add_hook, eval_start=False)
    assert len(seen) == 2 and len(hooked) >= 4  # 4 training steps (+ the evaluations)
