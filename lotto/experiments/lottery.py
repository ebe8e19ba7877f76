"""`lotto lottery`: iterative magnitude pruning with rewinding (Frankle & Carbin 2019).

Per seed: initialise theta_0 and save it; round 0 trains the dense network. Each later round
prunes a fraction of the surviving weights of the previous round's *trained ticket*, rewinds the
survivors to theta_0 (or theta_k), and trains again. Controls use the round's schedule and data
order: `reinit` (same mask, a fresh random init) and `random_mask` (a random mask with the same
per-layer density, the ticket's init).

Late rewinding (Frankle et al. 2020, OpenLTH): with `lottery.rewind` = k > 0 every pruned round,
controls included, trains the remaining iterations k..T from its start weights, with the
learning-rate schedule and batch order continuing from step k, and a fresh optimizer (momentum
and Adam moments are not rewound: OpenLTH saves and restores only the weights).

Files under the run directory, per seed `seed<S>/`: `init.safetensors` (theta_0),
`rewind.safetensors` (theta_k, late rewinding only), and per round `round<R>/mask.safetensors`
and `round<R>/trained.safetensors` (the trained ticket). A (seed, round, variant) is finished
when its row is in `metrics.csv`; the tensors are written before the row.

Execution: the unfinished units are one stream of tasks of `lotto.parallel` (`train_units`,
here or in workers): a seed's next round is queued as its ticket ends, and with layer-wise
ranking and no late rewinding every round's random_mask (which needs no ticket) is queued with
round 0. The driver makes each unit's start weights and mask, and alone writes the run
directory, as each task ends. A unit that fails is recorded
in `failures.csv` and retried by the next run; a seed whose ticket failed skips its later rounds.

With `parallel.batch_replicas` a round's units (variants x seeds) train together as batched
replicas (`lotto.replicas.train_replicas`): one task per worker, each with a contiguous share of
the units (serial: one task, in this process). The task fails or succeeds as a whole: a unit
that fails fails its task's other units too (recorded as failed, retried by the next run), and
a diverged replica stops the run as one-by-one divergence does. When `can_batch` refuses the
model or the train config, the run prints why once and trains units one by one.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig
from rich.progress import Progress
from torch import nn

from lotto.config import check
from lotto.data import Data
from lotto.errors import LottoError
from lotto.experiments.common import (
    RANDOM_STREAM,
    REINIT_STREAM,
    FailureLog,
    divergence_is_a_user_error,
    finished_work_is_kept,
    inject,
    injected_fault,
    load_or_make,
    open_runner,
    parallel_settings,
    seeded_model,
    shared_data,
    stream_seed,
    task_function,
)
from lotto.models import build_model, copy_state, load_state
from lotto.parallel import Runner, TaskResult
from lotto.pruning import (
    Masks,
    density,
    global_groups,
    layer_rates,
    layerwise_survivors,
    magnitude_prune,
    masked_state,
    ones_masks,
    random_masks,
    random_masks_like,
)
from lotto.replicas import ReplicaDiverged, can_batch, train_replicas
from lotto.runs import MetricsLog, RunDir, mean_std
from lotto.train import (
    TrainResult,
    check_train_config,
    eval_test_mode,
    parse_step,
    resolve_device,
    train,
)

VARIANTS = ("ticket", "reinit", "random_mask")


@dataclass
class LotteryResult:
    run: RunDir
    metrics: pd.DataFrame  # one row per (seed, round, variant)
    table: pd.DataFrame  # per (round, variant): mean and std over seeds
    summary: dict
    failures: list[dict] = field(default_factory=list)  # this run's failed and skipped units


def validate(cfg: DictConfig) -> None:
    lot = cfg.lottery
    check(0 < lot.prune_rate < 1, "lottery.prune_rate", f"{lot.prune_rate} must be in (0, 1)")
    check(lot.rounds >= 1, "lottery.rounds", f"{lot.rounds} must be at least 1")
    check(lot.seeds >= 1, "lottery.seeds", "must be at least 1")
    for key in ("conv_rate_factor", "output_rate_factor"):
        check(
            0 <= lot[key] * lot.prune_rate < 1,
            f"lottery.{key}",
            "times prune_rate must be in [0, 1)",
        )
    check(lot.ranking in ("layerwise", "global"), "lottery.ranking", "layerwise or global")
    check(lot.min_weights_per_layer >= 0, "lottery.min_weights_per_layer", "must be at least 0")
    unknown = set(lot.controls) - set(VARIANTS[1:])
    check(not unknown, "lottery.controls", f"unknown {sorted(unknown)}; use reinit, random_mask")
    check_train_config(cfg.train)
    try:
        parse_step(lot.rewind, 1)
    except LottoError as e:
        raise LottoError(f"config key lottery.rewind: {e}") from None


def check_rewind(cfg: DictConfig, data: Data) -> None:
    per_epoch = max(1, len(data.train_x) // cfg.train.batch_size)
    rewind, total = (parse_step(v, per_epoch) for v in (cfg.lottery.rewind, cfg.train.iterations))
    check(
        rewind < total,
        "lottery.rewind",
        f"{cfg.lottery.rewind} is not before the end of training ({total} iterations)",
    )


# ---- the task: train units in a worker (or here, for `serial`) --------------------------------


@dataclass
class Unit:
    """One training of the run, (seed, round, variant), with what it starts from (CPU tensors)."""

    seed: int
    round: int
    variant: str
    start: dict[str, torch.Tensor]  # the start weights, mask applied
    masks: Masks  # the mask it trains under (random_mask: its own)
    start_iteration: int  # pruned rounds resume the dense run's schedule at the rewind point
    rewind_at: int = 0  # round 0 with late rewinding: keep the weights after this many steps
    fault: str | None = None  # tests only: see `lotto.experiments.common.injected_fault`

    @property
    def key(self) -> dict:
        return {"seed": self.seed, "round": self.round, "variant": self.variant}

    @property
    def train_seed(self) -> int:
        return self.seed * 1000 + self.round  # the round's data order, shared by its controls


@dataclass
class Trained:
    """What a task sends back for one unit: the driver writes it to the run directory."""

    result: TrainResult  # the numbers of the metrics row and the curve rows
    state: dict[str, torch.Tensor] | None  # the trained ticket (ticket units only)
    theta_k: dict[str, torch.Tensor] | None  # round 0 with late rewinding


@dataclass
class Job:
    """One task: units that train in one worker, one after another (or batched: see below)."""

    cfg: DictConfig
    units: list[Unit]
    batched: bool = False  # train the units together as batched replicas (same start_iteration)


def train_units(job: Job, progress: Progress | None = None) -> list[Trained]:
    """The task function (top-level, so that workers can unpickle it): the worker loads the data
    once (cached per process) and builds each model from the config and the unit's start weights.

    A batched job (`parallel.batch_replicas`) trains its units together with
    `lotto.replicas.train_replicas` instead of the loop; it ends as a whole (one error fails all).
    """
    cfg = job.cfg
    device = resolve_device(cfg.device)
    data = shared_data(cfg.data, device)
    if job.batched and len(job.units) > 1:
        return train_batched(cfg, data, device, job.units, progress)
    return [train_unit(cfg, data, device, unit, progress) for unit in job.units]


def warm_worker(cfg: DictConfig) -> None:
    """Each worker's first job (`Runner.warm`): import this module, load the data and import
    torch._dynamo, which torch.optim imports at the first optimizer a process makes (1.5 s
    here), so that the first training starts at once."""
    import torch._dynamo  # noqa: F401

    shared_data(cfg.data, resolve_device(cfg.device))


def train_batched(
    cfg: DictConfig, data: Data, device: torch.device, units: list[Unit], progress: Progress | None
) -> list[Trained]:
    """`train_unit` for every unit, as one batched training (the same numbers up to rounding)."""
    for unit in units:
        inject(unit.fault)
    models = []
    for unit in units:
        model = seeded_model(cfg.model.name, data, unit.seed, dropout=cfg.model.dropout)
        load_state(model, unit.start, f"the start weights of seed {unit.seed} round {unit.round}")
        models.append(model)
    kept: list[dict[str, dict]] = [{} for _ in units]
    checkpoints = [
        {u.rewind_at: lambda m, k=k: k.update(theta_k=copy_state(m))} if u.rewind_at else None
        for u, k in zip(units, kept)
    ]
    (start_iteration,) = {u.start_iteration for u in units}
    try:
        results = train_replicas(
            models,
            data,
            cfg.train,
            seeds=[u.train_seed for u in units],
            device=device,
            masks=[u.masks for u in units],
            start_iteration=start_iteration,
            checkpoints=checkpoints,
            progress=progress,
            desc=f"round {units[0].round}: {len(units)} batched replicas",
            eval_test=eval_test_mode(cfg.train),
        )
    except ReplicaDiverged as e:
        u = units[e.replica]
        raise LottoError(
            f"NaN/inf loss in round {u.round} ({u.variant}, seed {u.seed}) at iteration "
            f"{e.iteration} (batched replicas)"
        ) from None
    return [
        Trained(r, copy_state(m) if u.variant == "ticket" else None, k.get("theta_k"))
        for u, r, m, k in zip(units, results, models, kept)
    ]


def train_unit(
    cfg: DictConfig, data: Data, device: torch.device, unit: Unit, progress: Progress | None
) -> Trained:
    inject(unit.fault)
    model = seeded_model(cfg.model.name, data, unit.seed, dropout=cfg.model.dropout)
    load_state(model, unit.start, f"the start weights of seed {unit.seed} round {unit.round}")
    kept: dict[str, dict] = {}
    checkpoints = {}
    if unit.rewind_at:
        checkpoints[unit.rewind_at] = lambda m: kept.update(theta_k=copy_state(m))
    with divergence_is_a_user_error(f"round {unit.round} ({unit.variant}, seed {unit.seed})"):
        result = train(
            model,
            data,
            cfg.train,
            seed=unit.train_seed,
            device=device,
            masks=unit.masks,
            checkpoints=checkpoints,
            progress=progress,
            desc=f"seed {unit.seed} round {unit.round} {unit.variant}",
            start_iteration=unit.start_iteration,
            eval_test=eval_test_mode(cfg.train),
        )
    state = copy_state(model) if unit.variant == "ticket" else None
    return Trained(result, state, kept.get("theta_k"))


# ---- the driver: units of each round, results written to the run directory ---------------------


class _Seed:
    """One replicate: the chain of rounds for one seed (round r prunes round r-1's ticket)."""

    def __init__(self, cfg: DictConfig, seed: int, data: Data, run: RunDir):
        self.cfg, self.seed, self.data, self.run = cfg, seed, data, run
        self.dir = f"seed{seed}"
        lot = cfg.lottery
        template = self.model(seed)
        self.theta_0 = load_or_make(run, f"{self.dir}/init.safetensors",
                                    lambda: copy_state(template))
        load_state(template, self.theta_0, f"{run.path / self.dir / 'init.safetensors'}")
        per_epoch = max(1, len(data.train_x) // cfg.train.batch_size)
        self.rewind_it = parse_step(lot.rewind, per_epoch)
        # global ranking is one ranking over all hidden layers (OpenLTH's sparse_global), so
        # conv and FC layers share prune_rate there: conv_rate_factor is a layer-wise setting
        conv_factor = 1.0 if lot.ranking == "global" else lot.conv_rate_factor
        self.rates = layer_rates(template, lot.prune_rate, conv_factor, lot.output_rate_factor)
        self.groups = global_groups(template)
        self.masks: Masks = ones_masks(template)
        self.shapes = {k: m.shape for k, m in self.masks.items()}
        self.trained: dict[str, torch.Tensor] | None = None  # this run's latest trained ticket
        self.theta_k = None if self.rewind_it else self.theta_0
        self.broken: str | None = None  # why later rounds cannot run (a ticket failed)

    def model(self, init_seed: int) -> nn.Module:
        return seeded_model(
            self.cfg.model.name, self.data, init_seed, dropout=self.cfg.model.dropout
        )

    def units(self, rnd: int, todo: list[str]) -> list[Unit]:
        """The units of round `rnd` for the variants `todo` (masks made or reloaded first)."""
        prev, self.trained = self.trained, None
        if rnd > 0:
            self.masks = self.round_masks(rnd, prev)
        if self.theta_k is None and rnd > 0:
            self.theta_k = self.run.load_tensors(f"{self.dir}/rewind.safetensors")
        start = self.theta_0 if rnd == 0 else self.theta_k
        units = []
        for variant in todo:
            state, masks = self.start(variant, rnd, start)
            unit = Unit(self.seed, rnd, variant, state, masks,
                        start_iteration=0 if rnd == 0 else self.rewind_it,
                        rewind_at=self.rewind_it if rnd == 0 else 0)
            unit.fault = injected_fault(unit.key)
            units.append(unit)
        return units

    def random_unit(self, rnd: int) -> Unit:
        """Round `rnd`'s random_mask unit made without the tickets: with layer-wise ranking and
        no late rewinding its mask (the ticket's survivors per layer, placed at random) and its
        start (theta_0) do not depend on any trained weights, so it can train at once."""
        lot = self.cfg.lottery
        alive = {k: math.prod(shape) for k, shape in self.shapes.items()}
        for _ in range(rnd):
            alive = {k: layerwise_survivors(n, self.rates.get(k, 0.0), lot.min_weights_per_layer)
                     for k, n in alive.items()}
        gen = torch.Generator().manual_seed(stream_seed(self.seed, RANDOM_STREAM, rnd))
        masks = random_masks({k: (self.shapes[k], alive[k]) for k in self.shapes}, gen)
        unit = Unit(self.seed, rnd, "random_mask", masked_state(self.theta_0, masks), masks,
                    start_iteration=0)
        unit.fault = injected_fault(unit.key)
        return unit

    def round_masks(self, rnd: int, prev: dict | None) -> Masks:
        """Prune the previous round's trained ticket (or reload the mask a past run saved)."""
        path = f"{self.dir}/round{rnd}/mask.safetensors"
        if self.run.has(path):
            # in the model's order (safetensors sorts keys): random_mask draws follow this order
            saved = self.run.load_tensors(path)
            return {k: saved[k].float() for k in self.masks}
        weights = prev if prev is not None else self.run.load_tensors(
            f"{self.dir}/round{rnd - 1}/trained.safetensors")
        lot = self.cfg.lottery
        new = magnitude_prune(
            weights,
            self.masks,
            self.rates,
            lot.ranking,
            groups=self.groups,
            min_weights=lot.min_weights_per_layer,
        )
        self.run.save_tensors(path, {k: v.bool() for k, v in new.items()})
        return new

    def start(self, variant: str, rnd: int, start: dict) -> tuple[dict, Masks]:
        """The weights a variant trains from, and the mask it trains under."""
        masks = self.masks
        if variant == "reinit":
            fresh = self.model(stream_seed(self.seed, REINIT_STREAM, rnd))
            return masked_state(copy_state(fresh), masks), masks
        if variant == "random_mask":
            gen = torch.Generator().manual_seed(stream_seed(self.seed, RANDOM_STREAM, rnd))
            masks = random_masks_like(masks, gen)
        return masked_state(start, masks), masks

    def finish(self, unit: Unit, out: Trained) -> None:
        """Write a ticket's tensors (before its row: a unit without a row is recomputed)."""
        if unit.variant != "ticket":
            return
        if out.theta_k is not None:
            self.theta_k = out.theta_k
            self.run.save_tensors(f"{self.dir}/rewind.safetensors", out.theta_k)
        if unit.round == 0:
            self.run.save_tensors(f"{self.dir}/round0/mask.safetensors",
                                  {k: v.bool() for k, v in unit.masks.items()})
        self.run.save_tensors(f"{self.dir}/round{unit.round}/trained.safetensors", out.state)
        self.trained = out.state


class _Lottery:
    """Runs the rounds: each round's units of every seed as one batch of tasks."""

    KEYS = ("seed", "round", "variant")

    def __init__(self, cfg: DictConfig, data: Data, run: RunDir, progress: Progress):
        self.cfg, self.run, self.progress = cfg, run, progress
        self.batched = bool(cfg.parallel.get("batch_replicas", False))
        if self.batched:
            why = can_batch(seeded_model(cfg.model.name, data, cfg.seed,
                                         dropout=cfg.model.dropout), cfg.train)
            if why:
                self.batched = False
                progress.console.print(
                    f"batch_replicas: off, units train one by one ({why})", highlight=False)
        self.metrics, self.curves = MetricsLog(run), MetricsLog(run, "curves")
        self.failures = FailureLog(run, self.metrics)
        lot = cfg.lottery
        self.seeds = [_Seed(cfg, s, data, run) for s in range(cfg.seed, cfg.seed + lot.seeds)]
        # random_mask units that need no ticket start with round 0 (`_Seed.random_unit`): the
        # dense round no longer trains alone while the other workers wait
        self.early_random = (not self.batched and lot.ranking == "layerwise"
                             and "random_mask" in lot.controls
                             and not any(s.rewind_it for s in self.seeds))
        per_seed = 1 + lot.rounds * (1 + len(lot.controls))
        self.overall = progress.add_task("lottery", total=per_seed * lot.seeds)
        self.waiting = 0  # batched replicas: jobs of the current round not yet delivered

    def run_rounds(self, runner: Runner) -> None:
        """All units as one stream of tasks: a seed's round r+1 is queued as soon as its round r
        ticket is trained (ahead of units still waiting), so its controls, other seeds and the
        next round keep every worker busy. Batched replicas keep rounds in step across seeds
        (a round's units of every seed are batched together)."""
        fn = task_function(train_units, runner, self.progress)
        kept = lambda: f"{len(self.metrics.rows)} finished (round, variant) rows"  # noqa: E731
        jobs: list[Job] = []

        def on_result(index: int, result: TaskResult) -> list[Job]:
            job = jobs[index]
            outs = result.value if result.ok else [None] * len(job.units)
            for unit, out in zip(job.units, outs):
                self.deliver(unit, out, result.error)
            if self.batched:
                self.waiting -= 1
                new = self.next_round(runner, job.units[0].round + 1) if not self.waiting else []
            else:
                new = [Job(self.cfg, [u]) for t in job.units if t.variant == "ticket"
                       for u in self.advance(self.seed_of(t), t.round + 1)]
            jobs.extend(new)
            return new

        try:
            if self.batched:
                jobs.extend(self.next_round(runner, 0))
            else:
                jobs.extend(Job(self.cfg, [u]) for s in self.seeds for u in self.advance(s, 0))
                jobs.extend(Job(self.cfg, [u]) for s in self.seeds for u in self.random_units(s))
            with finished_work_is_kept(kept, self.run):
                runner.run(fn, jobs, on_result=on_result)
        finally:
            self.failures.close(self.KEYS)

    def advance(self, seed: _Seed, rnd: int) -> list[Unit]:
        """The units of `seed` from round `rnd` on that can start now: rounds a past run
        finished are passed over, up to the first round whose ticket still has to train."""
        units: list[Unit] = []
        for r in range(rnd, self.cfg.lottery.rounds + 1):
            new = self.round_units(seed, r)
            units += new
            if any(u.variant == "ticket" for u in new):
                break
        return units

    def next_round(self, runner: Runner, rnd: int) -> list[Job]:
        """Batched replicas: the jobs of the first round from `rnd` on with work left, every
        seed's units together (the seeds' rounds stay in step)."""
        jobs: list[Job] = []
        for r in range(rnd, self.cfg.lottery.rounds + 1):
            jobs = self.jobs([u for s in self.seeds for u in self.round_units(s, r)], runner)
            if jobs:
                break
        self.waiting = len(jobs)
        return jobs

    def seed_of(self, unit: Unit) -> _Seed:
        return next(s for s in self.seeds if s.seed == unit.seed)

    def jobs(self, units: list[Unit], runner: Runner) -> list[Job]:
        """Batched replicas: one task per worker (serial: one task), each with a contiguous
        share of the round's units (a seed's units stay together)."""
        if len(units) < 2:
            return [Job(self.cfg, units, batched=True)] if units else []
        tasks = 1 if runner.backend == "serial" else max(1, min(runner.workers, len(units)))
        size = -(-len(units) // tasks)
        return [Job(self.cfg, units[i:i + size], batched=True)
                for i in range(0, len(units), size)]

    def random_units(self, seed: _Seed) -> list[Unit]:
        """The random_mask units of every round still to train, when they need no ticket."""
        if not self.early_random:
            return []
        todo = [r for r in range(1, self.cfg.lottery.rounds + 1)
                if not self.metrics.find(seed=seed.seed, round=r, variant="random_mask")]
        self.progress.advance(self.overall, self.cfg.lottery.rounds - len(todo))
        return [seed.random_unit(r) for r in todo]

    def round_units(self, seed: _Seed, rnd: int) -> list[Unit]:
        variants = ["ticket"] + (list(self.cfg.lottery.controls) if rnd > 0 else [])
        if self.early_random:  # queued with round 0 (`random_units`)
            variants = [v for v in variants if v != "random_mask"]
        todo = [v for v in variants if not self.metrics.find(seed=seed.seed, round=rnd, variant=v)]
        self.progress.advance(self.overall, len(variants) - len(todo))
        if seed.broken is not None:
            for v in todo:
                self.failures.add({"seed": seed.seed, "round": rnd, "variant": v}, "skipped",
                                  seed.broken)
            self.progress.advance(self.overall, len(todo))
            return []
        return seed.units(rnd, todo)

    def deliver(self, unit: Unit, out: Trained | None, error: str) -> None:
        seed = self.seed_of(unit)
        if out is None:
            self.failures.add(unit.key, "failed", error)
            if unit.variant == "ticket":
                seed.broken = f"needs the round {unit.round} ticket, which failed"
        else:
            seed.finish(unit, out)
            self.record(unit, out.result)
        self.progress.advance(self.overall)

    def record(self, unit: Unit, result: TrainResult) -> None:
        masks = unit.masks
        remaining = density(masks)
        key = {"round": unit.round, "variant": unit.variant, "seed": unit.seed,
               "density": remaining}
        self.curves.drop(round=unit.round, variant=unit.variant, seed=unit.seed)  # recomputed
        self.curves.append([{**key, **row} for row in result.history])
        self.metrics.append(
            {
                **key,
                "weights_remaining_pct": 100 * remaining,
                "weights_remaining": int(sum(m.sum().item() for m in masks.values())),
                "start_iteration": result.start_iteration,
                "iteration": result.iterations,
                "train_loss": result.train_loss,
                "val_loss": result.val_loss,
                "val_accuracy": result.val_accuracy,
                "test_accuracy": result.test_accuracy,
                "early_stop_iteration": result.early_stop_iteration,
                "early_stop_val_loss": result.early_stop_val_loss,
                "early_stop_test_accuracy": result.early_stop_test_accuracy,
                "seconds": result.seconds,
            }
        )


def round_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (round, variant)."""
    cols = ["weights_remaining_pct", "test_accuracy", "early_stop_test_accuracy",
            "early_stop_iteration", "seconds"]
    return mean_std(metrics, ["round", "variant"], cols).sort_values(["round", "variant"])


def smallest_within(table: pd.DataFrame, variant: str, dense: float, tol: float = 0.01) -> dict:
    """The smallest density down to which `variant` stays within `tol` of the dense accuracy."""
    rows = table[(table.variant == variant) | (table["round"] == 0)].sort_values("round")
    best = None
    for _, row in rows.iterrows():
        if row.early_stop_test_accuracy < dense - tol:
            break
        best = row
    if best is None or (variant != "ticket" and best["round"] == 0):
        return {"round": None, "weights_remaining_pct": None}
    return {
        "round": int(best["round"]),
        "weights_remaining_pct": float(best.weights_remaining_pct),
        "early_stop_test_accuracy": float(best.early_stop_test_accuracy),
    }


def summarize(table: pd.DataFrame, metrics: pd.DataFrame | None = None,
              num_classes: int | None = None) -> dict:
    """The headline numbers; with `metrics` and `num_classes`, also a `warning` when the
    trainings stayed at chance or diverged (then the headline comparisons mean nothing)."""
    dense = table[(table["round"] == 0) & (table.variant == "ticket")].iloc[0]
    out: dict = {
        "dense_early_stop_test_accuracy": float(dense.early_stop_test_accuracy),
        "dense_test_accuracy": float(dense.test_accuracy),
        "dense_early_stop_iteration": float(dense.early_stop_iteration),
        "rounds_finished": int(table["round"].max()),
        "smallest_within_1pt": {
            v: smallest_within(table, v, float(dense.early_stop_test_accuracy))
            for v in table.variant.unique()
        },
    }
    # the paper's headline comparison: the round nearest 10% of weights remaining
    pruned = table[table["round"] > 0]
    if len(pruned):
        near = pruned.iloc[(pruned.weights_remaining_pct - 10).abs().argsort()].iloc[0]["round"]
        at = table[table["round"] == near].set_index("variant")
        out["near_10pct"] = {
            "round": int(near),
            **{
                f"{v}_{c}": float(at.loc[v, c])
                for v in at.index
                for c in (
                    "weights_remaining_pct",
                    "early_stop_test_accuracy",
                    "test_accuracy",
                    "early_stop_iteration",
                )
            },
        }
    if metrics is not None and num_classes is not None:
        from lotto.experiments.sanity import warning

        losses = metrics["train_loss"] if "train_loss" in metrics else ()
        out["warning"] = warning(metrics.test_accuracy, num_classes, losses,
                                 reference=float(dense.test_accuracy))
    return out


def plot(table: pd.DataFrame, metrics: pd.DataFrame, path: Path) -> None:
    """The paper's figure: accuracy and early-stop iteration against weights remaining, drawn
    by the shared plotting module (`lotto compare` draws the same figure for several runs)."""
    from lotto.report.plots import save_run_figure
    from lotto.runs import atomic_write

    save_run_figure("lottery", metrics, path, write=atomic_write)


def run_lottery(
    cfg: DictConfig, *, force: bool = False, progress: Progress, runner: Runner | None = None
) -> LotteryResult:
    """`runner`: workers to reuse (tests, scripts); default: a Runner made from `cfg.parallel`."""
    validate(cfg)
    parallel_settings(cfg)  # a bad parallel section is a user error before the run directory
    device = resolve_device(cfg.device)
    with open_runner(cfg) if runner is None else nullcontext(runner) as tasks:
        tasks.warm(warm_worker, cfg)  # worker processes set up while this one does
        data = shared_data(cfg.data, device)
        check_rewind(cfg, data)
        build_model(
            cfg.model.name,
            data.in_channels,
            data.num_classes,
            data.image_size,
            dropout=cfg.model.dropout,
        )  # fail on a bad model before creating the run dir
        run = RunDir.open(cfg, "lottery", force=force)
        lottery = _Lottery(cfg, data, run, progress)
        lottery.run_rounds(tasks)
    frame = lottery.metrics.frame()
    dense = not frame.empty and bool(((frame["round"] == 0) & (frame.variant == "ticket")).any())
    table = round_table(frame) if dense else pd.DataFrame()
    summary = summarize(table, frame, data.num_classes) if dense else {}
    summary["run_dir"] = str(run.path)
    summary["failures"] = lottery.failures.entries
    run.write_json("summary.json", summary)
    if dense:
        plot(table, frame, run.file("lottery.png"))
    return LotteryResult(run, frame, table, summary, lottery.failures.entries)
