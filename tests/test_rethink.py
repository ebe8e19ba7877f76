"""`lotto rethink`: the grid's outputs, budgets, initialisations, resume, --from and bad input.

Runs use scikit-learn's digits (8x8), a VGG-11 of 4-32 channels and a handful of iterations.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import DictConfig
from rich.progress import Progress
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

import lotto.experiments.rethink as rethink_mod
from lotto.cli import app
from lotto.cli.rethink import pruning_options
from lotto.config import load_config
from lotto.errors import LottoError
from lotto.experiments.lottery import run_lottery
from lotto.experiments.rethink import (
    RethinkResult,
    finetune_lr,
    run_rethink,
    scratch_b_iterations,
    scratch_init,
)
from lotto.models import build_model
from lotto.structured import slice_state

TINY = [
    "data.name=digits", "data.val_size=100", "model.width=0.0625", "train.iterations=6it",
    "train.batch_size=32", "finetune.iterations=2it", "grid.seeds=1", "grid.lrs=[0.1]",
    "pruning.unstructured.modes=[finetune,scratch_e,ticket,reinit]", "device=cpu",
]
COLUMNS = [
    "pruning", "method", "ratio", "mode", "lr", "seed", "params", "params_pct", "flops",
    "flops_pct", "channels", "train_lr", "iterations", "epochs", "budget_factor",
    "test_accuracy", "val_accuracy", "train_loss", "seconds", "source", "rewind_iteration",
]
KEY = ["pruning", "method", "ratio", "mode", "lr", "seed"]


def make_cfg(runs_dir: Path, *extra: str) -> DictConfig:
    return load_config("rethink", overrides=[*TINY, f"run.runs_dir={runs_dir}", *extra])


def run(cfg: DictConfig, force: bool = False) -> RethinkResult:
    return run_rethink(cfg, force=force, progress=Progress(disable=True))


def results(frame: pd.DataFrame) -> pd.DataFrame:
    """Everything but the wall clock, in a stable order."""
    cols = [c for c in frame.columns if c != "seconds"]
    return frame[cols].sort_values(KEY).reset_index(drop=True)


class Spy:
    """Wraps the trainer: records each call's start weights, masks, budget and hook; raises
    KeyboardInterrupt instead of training once `fail_after` calls have been made."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_after: int | None = None):
        self.calls: list[dict] = []
        real = rethink_mod.train

        def spy(model: nn.Module, data: object, cfg: DictConfig, **kw: object) -> object:
            if fail_after is not None and len(self.calls) >= fail_after:
                raise KeyboardInterrupt()
            self.calls.append({
                "desc": kw.get("desc"),
                "start": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "masks": kw.get("masks"),
                "hook": kw.get("after_backward"),
                "iterations": cfg.iterations,
                "lr": cfg.lr,
                "start_iteration": kw.get("start_iteration", 0),
            })
            return real(model, data, cfg, **kw)

        monkeypatch.setattr(rethink_mod, "train", spy)

    def call(self, mode: str, pruning: str = "") -> dict:
        hits = [c for c in self.calls if c["desc"].endswith(f" {mode}") and pruning in c["desc"]]
        assert len(hits) == 1, [c["desc"] for c in self.calls]
        return hits[0]

    def start(self, mode: str, pruning: str = "") -> dict[str, torch.Tensor]:
        return self.call(mode, pruning)["start"]


@pytest.fixture
def tiny(tmp_path: Path) -> DictConfig:
    return make_cfg(tmp_path / "runs")


# --- outputs and budgets --------------------------------------------------------------------------


def test_grid_rows_columns_and_files(tiny: DictConfig) -> None:
    result = run(tiny)
    frame = result.metrics
    assert list(frame.columns) == COLUMNS
    # baseline + 5 structured modes + 4 unstructured modes, one lr, one seed
    assert len(frame) == 10 and not frame.duplicated(KEY).any()
    assert set(frame["mode"]) == {"baseline", "finetune", "scratch_e", "scratch_b", "ticket",
                                  "reinit"}
    for name in ("metrics.csv", "metrics.parquet", "summary.json", "config.yaml"):
        assert (result.run.path / name).exists()
    pd.testing.assert_frame_equal(pd.read_parquet(result.run.path / "metrics.parquet"), frame)
    base = frame[frame["mode"] == "baseline"].iloc[0]
    assert base.params_pct == 100 and base.iterations == 6 and base.train_lr == 0.1
    s = frame[frame.pruning == "structured"]
    u = frame[frame.pruning == "unstructured"]
    assert (s.params < base.params).all() and (s.flops < base.flops).all()
    assert (frame.channels.str.count("-") == 7).all()  # 8 conv widths
    assert (u.channels == base.channels).all() and (s.channels != base.channels).all()
    # unstructured ratio 0.9 of the conv weights: the classifier stays whole
    assert u.params.iloc[0] < 0.2 * base.params
    assert u.flops.iloc[0] < 0.2 * base.flops
    ft = frame[frame["mode"] == "finetune"]
    assert (ft.iterations == 2).all() and (ft.train_lr.round(12) == 0.01).all()  # 0.1 x 0.1
    assert set(frame.source) == {"trained"}
    assert result.summary["comparisons"][0]["pruning"] == "structured"
    assert "ticket_minus_reinit" in result.summary["comparisons"][0]


def test_scratch_b_follows_the_flops_rule(tiny: DictConfig) -> None:
    frame = run(tiny).metrics
    base = frame[frame["mode"] == "baseline"].iloc[0]
    b = frame[(frame["mode"] == "scratch_b")].iloc[0]
    expected = round(6 * base.flops / b.flops)
    assert b.iterations == expected > 6
    assert b.budget_factor == pytest.approx(expected / 6)
    e = frame[(frame["mode"] == "scratch_e") & (frame.pruning == "structured")].iloc[0]
    assert e.iterations == 6


def test_scratch_b_rules() -> None:
    assert scratch_b_iterations(100, 4e6, 1e6, "flops") == (400, 4.0)
    assert scratch_b_iterations(100, 4e6, 1e6, "flops+finetune", finetune=25) == (425, 4.25)
    assert scratch_b_iterations(100, 4e6, 1e6, "epochs") == (100, 1.0)
    assert scratch_b_iterations(100, 4e6, 1e6, "flops", max_factor=2) == (200, 2.0)
    assert scratch_b_iterations(160, 3.0, 2.0, "flops") == (240, 1.5)
    with pytest.raises(LottoError):
        scratch_b_iterations(100, 4e6, 1e6, "double")


def test_finetune_lr() -> None:
    assert finetune_lr(load_config("rethink"), 0.1) == pytest.approx(0.01)
    assert finetune_lr(load_config("rethink", overrides=["finetune.lr=0.003"]), 0.1) == 0.003
    paper = load_config("rethink", Path("configs/rethink-cifar10-paper.yaml"))
    assert finetune_lr(paper, 0.1) == pytest.approx(0.001)  # Li et al.


def test_scratch_b_rule_is_a_config_field(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "pruning.kinds=[structured]", "pruning.structured.modes=[scratch_b]",
                   "budget.scratch_b=flops+finetune", "budget.max_factor=2")
    b = run(cfg).metrics.query("mode == 'scratch_b'").iloc[0]
    assert b.iterations == 6 * 2 + 2 and b.budget_factor == pytest.approx(14 / 6)


# --- initialisations --------------------------------------------------------------------------


def test_ticket_starts_from_theta0_restricted(tiny: DictConfig,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    result = run(tiny)
    path = result.run.path / "seed0"
    theta0 = load_file(str(path / "init.safetensors"))
    trained = load_file(str(path / "lr0.1" / "baseline.safetensors"))
    dense = build_model("vgg", 1, 10, 8, depth=11, width=0.0625)
    # structured: theta_0 sliced to the kept channels, exactly
    sel = load_file(str(path / "lr0.1" / "structured-l1-filter-0.5" / "selection.safetensors"))
    keep = [sel[f"layer{i}"] for i in range(len(sel))]
    ticket = spy.start("ticket", "l1-filter")
    expected = slice_state(theta0, dense, keep)
    assert ticket.keys() == expected.keys()
    assert all(torch.equal(ticket[k], expected[k]) for k in expected)
    # fine-tuning starts from the trained baseline, sliced the same way
    finetune = spy.start("finetune", "l1-filter")
    expected_ft = slice_state(trained, dense, keep)
    assert all(torch.equal(finetune[k], expected_ft[k]) for k in expected_ft)
    # reinit: same shapes, other values; scratch: the small network's own init
    reinit, scratch = spy.start("reinit", "l1-filter"), spy.start("scratch_e", "l1-filter")
    w = "features.0.weight"
    assert reinit[w].shape == ticket[w].shape == scratch[w].shape
    assert not torch.equal(reinit[w], ticket[w]) and not torch.equal(scratch[w], ticket[w])
    # unstructured: mask * theta_0
    masks = load_file(str(path / "lr0.1" / "unstructured-magnitude-0.9" / "selection.safetensors"))
    uticket = spy.start("ticket", "magnitude")
    for k, v in theta0.items():
        want = v * masks[k].to(v.dtype) if k in masks else v
        assert torch.equal(uticket[k], want), k
    assert "classifier.weight" not in masks or bool(masks["classifier.weight"].all())


def test_unstructured_scratch_rescales_to_the_surviving_fan(tiny: DictConfig,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    run(tiny)
    scratch, reinit = spy.start("scratch_e", "magnitude"), spy.start("reinit", "magnitude")
    # the pruned conv layer with the most survivors (global ranking: densities differ)
    convs = [k for k, v in scratch.items() if v.dim() == 4]
    w = max(convs, key=lambda k: int((scratch[k] != 0).sum()))
    alive = scratch[w] != 0
    assert 0 < alive.float().mean() < 0.5
    assert torch.equal(alive, reinit[w] != 0)
    ratio = scratch[w][alive].std() / reinit[w][alive].std()
    density = alive.float().mean()
    assert ratio == pytest.approx(float(density.rsqrt()), rel=0.35)


def test_scratch_init_is_liu_et_al_he_fan_out_over_the_survivors() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 64, 3), nn.Flatten(), nn.Linear(64, 10))
    gen = torch.Generator().manual_seed(0)
    masks = {"0.weight": (torch.rand(64, 4, 3, 3, generator=gen) < 0.25).float(),
             "2.weight": (torch.rand(10, 64, generator=gen) < 0.5).float()}
    linear = model[2].weight.detach().clone()
    scratch_init(model, masks, torch.Generator().manual_seed(1))
    density = float(masks["0.weight"].mean())
    fan_out, fan_in = 64 * 9, 4 * 9  # 8x apart: the test tells which one the init used
    std = float(model[0].weight.detach().std())
    assert std == pytest.approx(math.sqrt(2 / (density * fan_out)), rel=0.1)
    assert std < 0.5 * math.sqrt(2 / (density * fan_in))
    assert torch.equal(model[2].weight, linear)  # Linear layers keep the model's own init
    again = nn.Sequential(nn.Conv2d(4, 64, 3), nn.Flatten(), nn.Linear(64, 10))
    scratch_init(again, masks, torch.Generator().manual_seed(1))
    assert torch.equal(again[0].weight, model[0].weight)  # reproducible from the generator


def test_slimming_trains_its_own_baseline_with_the_l1_hook(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_cfg(tmp_path, "pruning.kinds=[structured]", "pruning.structured.methods=[slimming]",
                   "pruning.structured.modes=[finetune]", "pruning.slimming_l1=1e-3")
    spy = Spy(monkeypatch)
    frame = run(cfg).metrics
    assert list(frame["method"]) == ["none", "slimming", "slimming"]
    assert list(frame["mode"]) == ["baseline", "baseline", "finetune"]
    hooks = [c["hook"] is not None for c in spy.calls]
    assert hooks == [False, True, False]


# --- resume ---------------------------------------------------------------------------------


def test_resume_after_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = run(make_cfg(tmp_path / "a"))
    cfg = make_cfg(tmp_path / "b")
    with monkeypatch.context() as m:
        Spy(m, fail_after=4)
        with pytest.raises(KeyboardInterrupt):
            run(cfg)
    path = tmp_path / "b" / "rethink" / reference.run.path.name
    assert len(pd.read_csv(path / "metrics.csv")) == 4
    assert not list(path.rglob("*.tmp"))
    spy = Spy(monkeypatch)
    resumed = run(cfg)
    assert len(spy.calls) == 10 - 4  # finished cells are not retrained
    pd.testing.assert_frame_equal(results(resumed.metrics), results(reference.metrics))
    again = Spy(monkeypatch)
    run(cfg)
    assert again.calls == []


def test_force_starts_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_cfg(tmp_path, "pruning.kinds=[unstructured]", "pruning.unstructured.modes=[ticket]")
    run(cfg)
    spy = Spy(monkeypatch)
    assert len(run(cfg, force=True).metrics) == 2 and len(spy.calls) == 2


# --- --from a lottery run ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def lottery_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-round lottery run of ResNet-20 (a channel model) on digits, shared by the tests."""
    runs = tmp_path_factory.mktemp("lottery") / "runs"
    cfg = load_config("lottery", overrides=[
        "data.name=digits", "model.name=resnet20", "train.iterations=4it",
        "train.eval_every=4it", "train.batch_size=32", "lottery.rounds=2", "lottery.controls=[]",
        "device=cpu", "lottery.ranking=global", f"run.runs_dir={runs}", "run.name=lt",
    ])
    return run_lottery(cfg, progress=Progress(disable=True)).run.path


def test_from_lottery_run_reuses_init_weights_and_masks(
    lottery_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lottery_lr = load_config("lottery").train.lr
    cfg = make_cfg(tmp_path, f"from={lottery_run}", f"grid.lrs=[{lottery_lr}]",
                   "pruning.structured.modes=[ticket]", "pruning.unstructured.methods=[imp]",
                   "pruning.unstructured.ratios=[0.35]", "pruning.unstructured.modes=[ticket]")
    spy = Spy(monkeypatch)
    result = run(cfg)
    frame = result.metrics
    base = frame[frame["mode"] == "baseline"].iloc[0]
    lot = pd.read_csv(lottery_run / "metrics.csv").query("round == 0").iloc[0]
    assert base.source == "lottery" and base.test_accuracy == lot.test_accuracy
    assert len(spy.calls) == 2  # the baseline is reused, not retrained
    theta0 = load_file(str(lottery_run / "seed0" / "init.safetensors"))
    mine = load_file(str(result.run.path / "seed0" / "init.safetensors"))
    assert all(torch.equal(theta0[k], mine[k]) for k in theta0)
    # imp takes the lottery round nearest the asked density: 0.8^2 = 0.64 ~ 1 - 0.35
    mask = load_file(str(lottery_run / "seed0" / "round2" / "mask.safetensors"))
    start = spy.start("ticket", "imp")
    for k, m in mask.items():
        assert torch.equal(start[k], theta0[k] * m.to(theta0[k].dtype)), k
    assert result.run.path.parent.name == "rethink"


def test_from_lottery_run_trains_other_lrs_from_its_init(
    lottery_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_cfg(tmp_path, f"from={lottery_run}", "grid.lrs=[0.05]",
                   "pruning.kinds=[unstructured]", "pruning.unstructured.modes=[ticket]")
    spy = Spy(monkeypatch)
    frame = run(cfg).metrics
    assert list(frame.source) == ["trained", "trained"]
    theta0 = load_file(str(lottery_run / "seed0" / "init.safetensors"))
    assert all(torch.equal(spy.calls[0]["start"][k], theta0[k]) for k in theta0)


@pytest.fixture(scope="module")
def rewound_lottery_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-round lottery run of ResNet-20 on digits with late rewinding to theta_2 of 4."""
    runs = tmp_path_factory.mktemp("lottery-rewind") / "runs"
    cfg = load_config("lottery", overrides=[
        "data.name=digits", "model.name=resnet20", "train.iterations=4it",
        "train.eval_every=2it", "train.batch_size=32", "lottery.rounds=1", "lottery.controls=[]",
        "lottery.rewind=2it", "device=cpu", f"run.runs_dir={runs}", "run.name=lt",
    ])
    return run_lottery(cfg, progress=Progress(disable=True)).run.path


def test_from_a_rewinding_lottery_run_the_ticket_starts_at_theta_k(
    rewound_lottery_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lottery_lr = load_config("lottery").train.lr
    cfg = make_cfg(tmp_path, f"from={rewound_lottery_run}", f"grid.lrs=[{lottery_lr}]",
                   "pruning.structured.modes=[ticket]", "pruning.unstructured.methods=[imp]",
                   "pruning.unstructured.ratios=[0.2]",
                   "pruning.unstructured.modes=[finetune,ticket,reinit]")
    spy = Spy(monkeypatch)
    frame = run(cfg).metrics
    theta_k = load_file(str(rewound_lottery_run / "seed0" / "rewind.safetensors"))
    theta_0 = load_file(str(rewound_lottery_run / "seed0" / "init.safetensors"))
    mask = load_file(str(rewound_lottery_run / "seed0" / "round1" / "mask.safetensors"))
    ticket = spy.call("ticket", "imp")
    for k, m in mask.items():
        assert torch.equal(ticket["start"][k], theta_k[k] * m.to(theta_k[k].dtype)), k
    assert not torch.equal(theta_k["conv1.weight"], theta_0["conv1.weight"])
    # the ticket and its control train iterations 2..4, as the lottery's pruned rounds do
    starts = {c["desc"].split(" ", 4)[-1]: c["start_iteration"] for c in spy.calls}
    assert starts == {"imp 0.2 ticket": 2, "imp 0.2 reinit": 2, "imp 0.2 finetune": 0,
                      "l1-filter 0.5 ticket": 2}
    rows = frame.set_index(["method", "mode"])
    assert rows.rewind_iteration.to_dict() == {
        ("none", "baseline"): 0, ("l1-filter", "ticket"): 2, ("imp", "finetune"): 0,
        ("imp", "ticket"): 2, ("imp", "reinit"): 2,
    }
    assert rows.loc[("imp", "ticket"), "iterations"] == 4


# --- bad input: one line, exit 2, no run directory ------------------------------------------


def cli(runs_dir: Path, *args: str) -> object:
    return CliRunner().invoke(app, ["rethink", "--runs-dir", str(runs_dir), *args, *TINY])


@pytest.mark.parametrize("args,message", [
    (["--ratio", "1.5"], "must be a number in (0, 1)"),
    (["--ratio", "0"], "must be a number in (0, 1)"),
    (["--pruning", "unstructured", "--ratio", "-0.2"], "must be a number in (0, 1)"),
    (["--ratio", "half"], "not a list of numbers"),
    (["--method", "taylor"], "unknown method"),
    (["--pruning", "structured", "--method", "magnitude"], "unknown method 'magnitude'"),
    (["--pruning", "sideways"], "choose structured, unstructured or both"),
    (["--lrs", "0.1,fast"], "not a list of numbers"),
    (["--lrs", "0.1,,0.01"], "comma-separated"),
    (["--lrs", "0,0.1"], "not a positive learning rate"),
    (["--lrs", "0.1,0.1"], "repeats an entry"),
    (["--modes", "finetune,longer"], "unknown mode 'longer'"),
    (["--pruning", "structured", "model.name=lenet_300_100"], "no prunable channels"),
    (["--method", "imp"], "imp reuses a lottery run"),
    (["budget.scratch_b=twice"], "budget.scratch_b"),
])
def test_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    runs = tmp_path / "runs"
    out = cli(runs, *args)
    assert out.exit_code == 2, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.output
    assert not (runs / "rethink").exists()


def test_bad_from(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    missing = cli(runs, "--from", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and "no such run directory" in missing.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("seed: 0\ntrain: {lr: 0.1}\n")
    wrong = cli(runs, "--from", str(other))
    assert wrong.exit_code == 2 and "not a lottery run" in wrong.output
    assert not (runs / "rethink").exists()


def test_from_an_incompatible_lottery_run(tmp_path: Path) -> None:
    # a LeNet lottery run has no channels to prune; a run missing its init is unfinished
    cfg = load_config("lottery", overrides=[
        "data.name=digits", "train.iterations=2it", "train.eval_every=2it", "lottery.rounds=1",
        "lottery.controls=[]", "device=cpu", f"run.runs_dir={tmp_path / 'runs'}", "run.name=le",
    ])
    path = run_lottery(cfg, progress=Progress(disable=True)).run.path
    out = cli(tmp_path / "runs", "--from", str(path), "--pruning", "structured")
    assert out.exit_code == 2 and "no prunable channels" in out.output
    (path / "seed0" / "init.safetensors").unlink()
    out = cli(tmp_path / "runs", "--from", str(path), "--pruning", "unstructured")
    assert out.exit_code == 2 and "init.safetensors" in out.output
    assert not (tmp_path / "runs" / "rethink").exists()


def test_cli_runs_and_prints_the_tables(tmp_path: Path) -> None:
    out = cli(tmp_path / "runs", "--pruning", "structured", "--method", "l1-filter",
              "--ratio", "0.5", "--modes", "finetune,scratch_b,ticket")
    assert out.exit_code == 0, out.output
    assert "fine-tune vs scratch" in out.output and "ticket vs random init" in out.output
    assert "unpruned" in out.output and "S-L1 0.5" in out.output
    frame = pd.read_csv(next((tmp_path / "runs" / "rethink").glob("*/metrics.csv")))
    assert list(frame["mode"]) == ["baseline", "finetune", "scratch_b", "ticket"]


def test_method_names_pick_their_kind() -> None:
    opts = pruning_options(None, ["l1-filter", "magnitude", "random"], [0.3], None)
    assert opts["pruning.kinds"] == ["structured", "unstructured"]
    assert opts["pruning.structured.methods"] == ["l1-filter", "random"]
    assert opts["pruning.unstructured.methods"] == ["magnitude", "random"]
    assert opts["pruning.unstructured.ratios"] == [0.3]
    opts = pruning_options(None, ["slimming"], None, None)
    assert opts["pruning.kinds"] == ["structured"]
    opts = pruning_options("unstructured", ["random"], None, ["ticket"])
    assert opts["pruning.kinds"] == ["unstructured"]
    assert "pruning.structured.methods" not in opts
    assert pruning_options(None, None, None, None)["pruning.kinds"] is None  # the YAML decides
