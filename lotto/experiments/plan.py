"""`--dry-run`: what a command would do, without doing it or creating its run directory.

A plan lists the trainings of the resolved config, marks those a past run of the same name has
finished (they would be reused), and estimates the rest from this machine's speed: a short real
trainings of the dense model (lotto's trainer, the configured recipe) and one evaluation of
the validation and test sets, scaled by each training's steps and evaluations. The
estimate is rough: it ignores data loading and start-up, and a pruned structured network is
counted at its share of the dense network's FLOPs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lotto.data import Data
from lotto.runs import RunDir
from lotto.train import parse_step

TIMED_STEPS = (5, 45)  # steps of the two timed trainings (their difference: the step time)


@dataclass
class Training:
    key: dict  # the unit's metrics key: seed, round, variant / the rethink cell
    steps: int
    evals: int
    scale: float = 1.0  # cost of a step relative to the dense network's
    done: bool = False


@dataclass
class Plan:
    command: str
    cfg: DictConfig
    run_path: Path
    exists: bool
    conflict: str | None  # why the run directory cannot be resumed (then nothing is reused)
    trainings: list[Training]
    eval_examples: int  # examples of one evaluation (validation + test)
    step_seconds: float = float("nan")  # measured: one dense training step here
    eval_seconds: float = float("nan")  # measured: one evaluation (validation + test) here
    fixed_seconds: float = 0.0  # measured: a training's set-up here
    workers: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def todo(self) -> list[Training]:
        return [t for t in self.trainings if not t.done]

    def seconds(self) -> float:
        """Rough wall time of the trainings still to do."""
        total = sum(self.fixed_seconds + t.scale * (t.steps * self.step_seconds
                                                    + t.evals * self.eval_seconds)
                    for t in self.todo)
        return total / max(1, self.workers)


def _finished(path: Path, keys: list[str]) -> set[tuple]:
    """The unit keys with a metrics row in a past run's metrics.csv (read only)."""
    csv = path / "metrics.csv"
    if not csv.exists():
        return set()
    try:
        frame = pd.read_csv(csv)
    except Exception:
        return set()
    if frame.empty or any(k not in frame.columns for k in keys):
        return set()
    return {tuple(_norm(v) for v in row) for row in frame[keys].itertuples(index=False)}


def _norm(value: object) -> object:
    return round(float(value), 12) if isinstance(value, (int, float)) else str(value)


def _mark_done(plan: Plan, keys: list[str]) -> None:
    if plan.conflict is not None:
        return
    done = _finished(plan.run_path, keys)
    for t in plan.trainings:
        t.done = tuple(_norm(t.key[k]) for k in keys) in done


def time_training(model: nn.Module, data: Data, train_cfg: DictConfig,
                  device: torch.device) -> tuple[float, float, float]:
    """Seconds of one training step, of one evaluation (validation + test) and of a training's
    fixed cost (set-up, the first epoch's draws) of `model` here, on lotto's own trainer with the
    configured recipe: two short trainings, TIMED_STEPS[0] and TIMED_STEPS[1] steps."""
    from lotto.train import evaluate, train

    def timed(steps: int) -> float:
        cfg = OmegaConf.create(OmegaConf.to_container(train_cfg, resolve=True))
        cfg.iterations, cfg.eval_every, cfg.warmup = f"{steps}it", f"{10**9}it", "0it"
        start = time.perf_counter()
        train(model, data, cfg, seed=0, device=device, eval_start=False, eval_test=False)
        return time.perf_counter() - start  # the steps and one validation pass at the end

    timed(TIMED_STEPS[0])  # warm-up: first-call costs (allocations, kernels) are not per training
    short, long = (timed(n) for n in TIMED_STEPS)
    step = max(long - short, 0.0) / (TIMED_STEPS[1] - TIMED_STEPS[0])
    start = time.perf_counter()
    evaluate(model, data.val_x, data.val_y)
    val = time.perf_counter() - start
    start = time.perf_counter()
    evaluate(model, data.test_x, data.test_y)
    test = time.perf_counter() - start
    fixed = max(short - val - step * TIMED_STEPS[0], 0.0)
    return step, val + test, fixed


def _evals(steps: int, eval_every: int) -> int:
    return steps // max(1, eval_every) + 1


def _workers(cfg: DictConfig) -> int:
    return int(cfg.parallel.workers) if cfg.parallel.backend != "serial" else 1


def plan_lottery(cfg: DictConfig) -> Plan:
    from lotto.experiments.common import seeded_model, shared_data
    from lotto.experiments.lottery import validate
    from lotto.train import resolve_device

    validate(cfg)
    device = resolve_device(cfg.device)
    data = shared_data(cfg.data, device)
    per_epoch = max(1, len(data.train_y) // cfg.train.batch_size)
    total = parse_step(cfg.train.iterations, per_epoch)
    every = max(1, parse_step(cfg.train.eval_every, per_epoch))
    rewind = parse_step(cfg.lottery.rewind, per_epoch)
    lot = cfg.lottery
    trainings = []
    for seed in range(cfg.seed, cfg.seed + lot.seeds):
        for rnd in range(lot.rounds + 1):
            for variant in ["ticket"] + (list(lot.controls) if rnd > 0 else []):
                steps = total - (rewind if rnd > 0 else 0)
                trainings.append(Training({"seed": seed, "round": rnd, "variant": variant},
                                          steps, _evals(steps, every)))
    path = RunDir.locate(cfg, "lottery")
    plan = Plan("lottery", cfg, path, path.exists(), RunDir.conflict(cfg, path), trainings,
                len(data.val_y) + len(data.test_y), workers=_workers(cfg))
    _mark_done(plan, ["seed", "round", "variant"])
    model = seeded_model(cfg.model.name, data, cfg.seed, dropout=cfg.model.dropout)
    plan.step_seconds, plan.eval_seconds, plan.fixed_seconds = time_training(
        model, data, cfg.train, device)
    return plan


def plan_rethink(cfg: DictConfig) -> Plan:
    from lotto.experiments.common import seeded_model, shared_data
    from lotto.experiments.rethink import (
        DENSE,
        LotterySource,
        grid_lrs,
        model_options,
        prunings,
        validate,
    )
    from lotto.train import resolve_device

    notes = []
    if cfg["from"] is not None:
        lottery = LotterySource.open(str(cfg["from"]))
        cfg = lottery.adopt(cfg)
        notes.append(f"reuses the lottery run {lottery.path} (its init, masks and recipe)")
    validate(cfg)
    device = resolve_device(cfg.device)
    data = shared_data(cfg.data, device)
    per_epoch = max(1, len(data.train_y) // cfg.train.batch_size)
    base = parse_step(cfg.train.iterations, per_epoch)
    ft = parse_step(cfg.finetune.iterations, per_epoch)
    every = max(1, parse_step(cfg.train.eval_every, per_epoch))
    cap = cfg.budget.max_factor
    trainings = []
    for seed in range(cfg.seed, cfg.seed + cfg.grid.seeds):
        for lr in grid_lrs(cfg):
            bases = [(DENSE, DENSE)] + (
                [("structured", "slimming")] if any(m == "slimming" for _, m, _ in prunings(cfg))
                else [])
            for kind, method in bases:
                key = {"pruning": kind, "method": method, "ratio": 0.0, "mode": "baseline",
                       "lr": lr, "seed": seed}
                trainings.append(Training(key, base, _evals(base, every)))
            for kind, method, ratio in prunings(cfg):
                # a structured network keeps about (1 - ratio)^2 of the FLOPs; a masked one
                # computes densely on a CPU
                share = (1 - ratio) ** 2 if kind == "structured" else 1.0
                flops_share = share if kind == "structured" else 1 - ratio
                for mode in cfg.pruning[kind].modes:
                    steps = {"finetune": ft, "scratch_b": round(base * min(
                        1 / max(flops_share, 1e-6), float(cap) if cap is not None else 1e9))
                    }.get(mode, base)
                    key = {"pruning": kind, "method": method, "ratio": ratio, "mode": mode,
                           "lr": lr, "seed": seed}
                    trainings.append(Training(key, steps, _evals(steps, every), share))
    path = RunDir.locate(cfg, "rethink")
    plan = Plan("rethink", cfg, path, path.exists(), RunDir.conflict(cfg, path), trainings,
                len(data.val_y) + len(data.test_y), workers=_workers(cfg), notes=notes)
    _mark_done(plan, ["pruning", "method", "ratio", "mode", "lr", "seed"])
    model = seeded_model(cfg.model.name, data, cfg.seed, **model_options(cfg))
    plan.step_seconds, plan.eval_seconds, plan.fixed_seconds = time_training(
        model, data, cfg.train, device)
    return plan
