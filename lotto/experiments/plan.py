"""`--dry-run`: what a command would do, without doing it or creating its run directory.

A plan lists the trainings (and latency measurements) of the resolved config, marks those a
past run of the same name has finished (they would be reused), and estimates the rest from this
machine's speed: short real trainings of a representative network (lotto's trainer, the
configured recipe) and one evaluation of the validation and test sets, scaled by each
training's steps and evaluations; a host measurement is timed once for real with a short run
time. The estimate is rough: it ignores data loading and start-up, and a pruned structured
network is counted at its share of the dense network's FLOPs. What a plan cannot count up front
(netadapt's steps, search's cache hits) is estimated and said so in its notes.

One planner per command (`plan_<command>`), each small: the command's own checks first (an
invalid config is the usual one-line error), then its units; `show_plan` (lotto.cli.app) prints
every plan alike.
"""

from __future__ import annotations

import functools
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

# Steps of the short timed training and, at most, of the long one (their difference: the step
# time); the long one is cut so that it takes about TIMING_BUDGET seconds on a costly network.
TIMED_STEPS = (3, 43)
TIMING_BUDGET = 3.0


@dataclass
class Training:
    key: dict  # the unit's metrics key: seed, round, variant / the rethink cell
    steps: int
    evals: int
    scale: float = 1.0  # cost of a step relative to the dense network's
    done: bool = False


@dataclass
class Measurement:
    key: dict  # the unit's metrics key: a network, a build step
    seconds: float  # rough wall time of the measurement here (0: a phone model, instant)
    done: bool = False
    estimated: bool = True  # False: its time is unknown here (counted as 0; a caveat says so)


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
    notes: list[str] = field(default_factory=list)  # printed before the counts
    measurements: list[Measurement] = field(default_factory=list)
    unit: str = "trainings"  # what the run-directory line counts (trainings or measurements)
    unit_name: str = ""  # its word there ("samples", "steps"); "" = unit
    timed: str = ""  # the network whose training step was timed ("" = model.name)
    caveats: list[str] = field(default_factory=list)  # printed after the time: what is rough
    stage_seconds: float = 0.0  # sub-runs (a pipeline's stages), as their own plans price them

    @property
    def todo(self) -> list[Training]:
        return [t for t in self.trainings if not t.done]

    @property
    def to_measure(self) -> list[Measurement]:
        return [m for m in self.measurements if not m.done]

    def training_seconds(self) -> float:
        """Rough wall time of the trainings still to do."""
        total = sum(self.fixed_seconds + t.scale * (t.steps * self.step_seconds
                                                    + t.evals * self.eval_seconds)
                    for t in self.todo)
        return total / max(1, self.workers)

    def seconds(self) -> float:
        """Rough wall time of the work still to do: trainings, then measurements (serial)."""
        train = self.training_seconds() if self.todo else 0.0
        return train + sum(m.seconds for m in self.to_measure) + self.stage_seconds


def past_rows(path: Path, stem: str = "metrics") -> pd.DataFrame:
    """A past run's committed metrics rows, as a resumed run reads them (a partial last append
    cut off); read only; empty when there are none or they do not read."""
    import io

    from lotto.report.discover import committed_text

    text = committed_text(path / f"{stem}.csv")
    if not text.strip():
        return pd.DataFrame()
    try:
        return pd.read_csv(io.StringIO(text))
    except Exception:
        return pd.DataFrame()


def _finished(path: Path, keys: list[str], stem: str = "metrics") -> set[tuple]:
    """The unit keys with a metrics row in a past run's <stem>.csv (read only)."""
    frame = past_rows(path, stem)
    if frame.empty or any(k not in frame.columns for k in keys):
        return set()
    return {tuple(_norm(v) for v in row) for row in frame[keys].itertuples(index=False)}


def _norm(value: object) -> object:
    return round(float(value), 12) if isinstance(value, (int, float)) else str(value)


def _mark_done(plan: Plan, keys: list[str], stem: str = "metrics") -> None:
    """Mark the trainings and measurements whose key has a row in the past run's metrics."""
    if plan.conflict is not None:
        return
    done = _finished(plan.run_path, keys, stem)
    for t in [*plan.trainings, *plan.measurements]:
        t.done = tuple(_norm(t.key[k]) for k in keys) in done


def _new_plan(cfg: DictConfig, command: str, trainings: list[Training] | None = None,
              eval_examples: int = 0, **options: object) -> Plan:
    """A plan for the run directory `cfg` would open (located, not created)."""
    path = RunDir.locate(cfg, command)
    return Plan(command, cfg, path, path.exists(), RunDir.conflict(cfg, path),
                trainings or [], eval_examples, **options)  # type: ignore[arg-type]


def _reusable(plan: Plan) -> pd.DataFrame:
    """The past run's rows, if it can be resumed."""
    return past_rows(plan.run_path) if plan.conflict is None else pd.DataFrame()


EVAL_SAMPLE = 1000  # examples an evaluation is timed on (scaled to the split's size)


def _eval_seconds(model: nn.Module, x: object, y: torch.Tensor) -> float:
    """Seconds of one evaluation of (x, y): timed on its first EVAL_SAMPLE examples, scaled."""
    from lotto.train import evaluate

    n = len(y)
    k = min(n, EVAL_SAMPLE) if isinstance(x, torch.Tensor) else n  # a stream: whole
    start = time.perf_counter()
    evaluate(model, x[:k] if k < n else x, y[:k] if k < n else y)  # type: ignore[index]
    return (time.perf_counter() - start) * n / max(1, k)


def time_training(model: nn.Module, data: Data, train_cfg: DictConfig,
                  device: torch.device, test: bool = True) -> tuple[float, float, float]:
    """Seconds of one training step, of one evaluation (validation, + test unless `test` is
    False: the proxy trainings of search and netadapt score on validation only) and of a
    training's fixed cost (set-up, the first epoch's draws) of `model` here, on lotto's own
    trainer with the configured recipe: after a one-step warm-up, two short trainings of
    TIMED_STEPS[0] steps and of up to TIMED_STEPS[1] (fewer where the network is slow: about
    TIMING_BUDGET s), each validated on one batch only (so that their difference is training);
    the evaluations are timed apart on up to EVAL_SAMPLE examples and scaled."""
    from dataclasses import replace

    from lotto.train import train

    small = data
    if isinstance(data.val_x, torch.Tensor):
        b = int(train_cfg.batch_size)
        small = replace(data, val_x=data.val_x[:b], val_y=data.val_y[:b])

    def timed(steps: int) -> float:
        cfg = OmegaConf.create(OmegaConf.to_container(train_cfg, resolve=True))
        cfg.iterations, cfg.eval_every, cfg.warmup = f"{steps}it", f"{10**9}it", "0it"
        start = time.perf_counter()
        train(model, small, cfg, seed=0, device=device, eval_start=False, eval_test=False)
        return time.perf_counter() - start  # the steps and one (small) validation at the end

    timed(1)  # warm-up: first-call costs (allocations, kernels) are not per training
    short = timed(TIMED_STEPS[0])
    rough = max(short / TIMED_STEPS[0], 1e-6)  # with set-up: an overestimate
    extra = int(min(TIMED_STEPS[1] - TIMED_STEPS[0], max(2, TIMING_BUDGET / rough)))
    long = timed(TIMED_STEPS[0] + extra)
    step = max(long - short, 0.0) / extra
    val = _eval_seconds(model, data.val_x, data.val_y)
    tested = _eval_seconds(model, data.test_x, data.test_y) if test else 0.0
    fixed = max(short - step * TIMED_STEPS[0], 0.0)
    return step, val + tested, fixed


QUICK_RUN = 0.05  # seconds of timed runs in the quick host measurement of a plan


def time_measurement(spec: object, device: str, *, threads: int, min_run_time: float,
                     warmup: int, dtype: str = "float32", clock: str = "wall") -> float:
    """Rough seconds one host measurement of `spec` (build, warm-up, at least `min_run_time`
    of timed runs) takes here: the real measurement once with QUICK_RUN seconds of timed runs,
    plus what `min_run_time` adds to the runs it timed (a slow network's minimum number of runs
    may already last longer). Re-measurements of a noisy timing count as they happen now."""
    from lotto.latency import predict

    start = time.perf_counter()
    lat = predict(spec, device, source="measure", threads=threads, min_run_time=QUICK_RUN,
                  warmup=warmup, dtype=dtype, clock=clock)
    elapsed = time.perf_counter() - start
    d = lat.detail
    timed = float(d.get("n", 0)) * float(d.get("number_per_run", 1)) * float(
        d.get("mean_ms", 0.0)) / 1000
    return elapsed + max(0.0, min_run_time - timed)


def _time(plan: Plan, model: object, data: Data, train_cfg: DictConfig, device: torch.device,
          test: bool = True) -> None:
    """Time `model` (a module, or a function making it) on this machine's trainer, only when
    the plan has trainings left to do."""
    if not plan.todo:
        return
    module = model() if callable(model) and not isinstance(model, nn.Module) else model
    plan.step_seconds, plan.eval_seconds, plan.fixed_seconds = time_training(
        module, data, train_cfg, device, test)  # type: ignore[arg-type]


def _time_measurements(plan: Plan, seconds: object) -> bool:
    """Price each measurement still to do at `seconds()` (one quick real timing), only if any;
    True if there were."""
    left = plan.to_measure
    if left:
        each = seconds()  # type: ignore[operator]
        for m in left:
            m.seconds = each
    return bool(left)


def _evals(steps: int, eval_every: int) -> int:
    return steps // max(1, eval_every) + 1


def _workers(cfg: DictConfig) -> int:
    return int(cfg.parallel.workers) if cfg.parallel.backend != "serial" else 1


def plan_lottery(cfg: DictConfig) -> Plan:
    from lotto.experiments.common import seeded_model, shared_data
    from lotto.experiments.lottery import validate
    from lotto.train import eval_test_mode, resolve_device

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
    # `train.test_eval: reported` tests only twice per training: left out of the estimate
    tested = len(data.test_y) if eval_test_mode(cfg.train) is True else 0
    plan = Plan("lottery", cfg, path, path.exists(), RunDir.conflict(cfg, path), trainings,
                len(data.val_y) + tested, workers=_workers(cfg))
    _mark_done(plan, ["seed", "round", "variant"])
    _time(plan, lambda: seeded_model(cfg.model.name, data, cfg.seed, dropout=cfg.model.dropout),
          data, cfg.train, device)
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
    _time(plan, lambda: seeded_model(cfg.model.name, data, cfg.seed, **model_options(cfg)),
          data, cfg.train, device)
    return plan


# ---- search, netadapt, build-v3, bench ----------------------------------------------------------


def plan_search(cfg: DictConfig) -> Plan:
    """The samples still to score (those without an ok row in the past run), each trained on the
    proxy task unless a cache holds its network: cache hits cannot be known before the
    controller draws, so the count is an upper bound."""
    from lotto.arch.build import build_network
    from lotto.experiments.common import shared_data
    from lotto.experiments.search import COMMAND, prepare, proxy_cache_path
    from lotto.proxy import proxy_spec
    from lotto.search.evaluate import Cache, proxy_network
    from lotto.train import resolve_device

    space, obj, device, price, _ = prepare(cfg, time_target=False)
    dev = resolve_device(str(cfg.device))
    data = shared_data(cfg.data, dev)
    per_epoch = max(1, len(data.train_y) // cfg.train.batch_size)
    supernet = cfg.search.get("proxy") == "supernet"
    steps = 0 if supernet else parse_step(cfg.train.iterations, per_epoch)
    every = max(1, parse_step(cfg.train.eval_every, per_epoch))
    total = int(cfg.search.samples)
    plan = _new_plan(cfg, COMMAND, eval_examples=len(data.val_y), unit_name="samples",
                     workers=_workers(cfg))
    rows = _reusable(plan)
    if not rows.empty and "sample" in rows.columns:
        status = rows["status"] if "status" in rows.columns else pd.Series("ok", rows.index)
        ok = {int(n) for n, st in zip(rows["sample"], status) if st == "ok"}
        failed = int((status == "failed").sum())
        if failed:
            plan.notes.append(f"{failed} sample(s) of the past run failed: they are trained again")
        if len(rows) > total:
            plan.notes.append(f"the past run holds {len(rows)} samples, more than "
                              f"search.samples={total}: nothing new is drawn")
    else:
        ok = set()
    for n in range(total):
        plan.trainings.append(Training({"sample": n}, steps, _evals(steps, every),
                                       done=n in ok))
    mid = [n // 2 for _, _, n in space.axes()]
    net = space.network(mid, "plan")
    small = proxy_spec(proxy_network(net, cfg.proxy), data, float(cfg.proxy.bn_momentum),
                       int(cfg.proxy.min_output))
    plan.timed = f"the proxy of the space's middle network ({small.macs() / 1e6:.1f}M MAdds)"
    torch.manual_seed(int(cfg.seed))
    _time(plan, lambda: build_network(small), data, cfg.train, dev, test=False)
    caches = [plan.run_path / "evaluated.jsonl"] if plan.conflict is None else []
    if cfg.proxy.cache and not supernet:
        caches.append(proxy_cache_path(cfg, None))
    cached = set().union(*(Cache(c).entries for c in caches if c.exists()))
    if cached:
        plan.notes.append(f"proxy results cached for this proxy setup: {len(cached)} networks "
                          f"({', '.join(str(c) for c in caches if c.exists())}); a sample that "
                          "draws one is not trained again")
    plan.caveats.append("the samples to train are an upper bound: a sample that repeats a "
                        "network, or draws one a cache holds, is not trained")
    if supernet:
        plan.caveats.append(f"search.proxy=supernet: the supernet's training "
                            f"({cfg.supernet.steps} steps, once per setup, cached under "
                            f"{cfg.run.runs_dir}/search/.supernet/) and each sample's BN "
                            "recalibration are not estimated; a sample is priced as one "
                            "validation pass")
    if price.source == "measure":
        each = time_measurement(net, device, threads=int(cfg.latency.threads),
                                min_run_time=float(cfg.latency.min_run_time), warmup=10)
        plan.measurements = [Measurement(t.key, each, t.done) for t in plan.trainings]
        if obj.alpha != obj.beta:
            plan.caveats.append("the hard constraint's reachable-target check (timing the "
                                "space's fastest networks here) is left to the run")
    else:
        plan.notes.append(f"latency on {device}: {price.source} (instant)")
    return plan


def remaining_steps(lat_ms: float, target_ms: float, delta_ms: float, decay: float,
                    first: int, max_steps: int) -> list[int]:
    """NetAdapt's steps from step `first` on, at latency `lat_ms`, if each cuts exactly its
    delta (delta * decay^(k-1)) until the target or max_steps: an estimate (a chosen proposal
    cuts at least delta, often more, so fewer steps may do)."""
    out, k = [], first
    while lat_ms > target_ms and k <= max_steps:
        out.append(k)
        lat_ms -= delta_ms * decay ** (k - 1)
        k += 1
    return out


def plan_netadapt(cfg: DictConfig) -> Plan:
    """Seed training, then about (latency - target) / delta steps of one short fine-tune per
    proposal, then long_ft (+ scratch, + the width-multiplier baseline)."""
    from lotto.arch import load_spec
    from lotto.arch.build import build_network
    from lotto.experiments import netadapt as na
    from lotto.latency import predict
    from lotto.latency.devices import canonical_device, is_phone
    from lotto.netadapt import knobs, widest_within

    spec, data, device = na.prepare(cfg)
    dev = canonical_device(cfg.latency.device)
    plan = _new_plan(cfg, na.COMMAND, eval_examples=len(data.val_y), workers=_workers(cfg))
    lat = cfg.latency
    if is_phone(dev):
        ms = na.Pricer(cfg, spec).ms  # the phone model: instant, exactly the run's numbers
        how = f"{dev} phone model, as the run prices"
    else:  # the run first times a lookup table (minutes): here one end-to-end measurement each
        na.refuse_far_target(cfg, spec)

        @functools.cache
        def ms(s: object) -> float:
            return float(predict(s, dev, source="measure", threads=int(lat.threads),
                                 min_run_time=float(lat.min_run_time)).ms)
        how = (f"{dev} measured end to end just now (the run prices from a lookup table; its "
               "missing units are timed first, not estimated here)")
        plan.caveats.append("on cpu the exact check of the target against the narrowest "
                            "network needs the lookup table: left to the run (the far-target "
                            "check ran)")
    # the exact check where the run's own prices are at hand (phones); cpu: the seed measured
    seed_ms = na.check_reachable(cfg, spec, ms, dev) if is_phone(dev) else ms(spec)
    target_ms, delta_ms = na.amounts(cfg, seed_ms)
    per_epoch = max(1, len(data.train_y) // int(cfg.train.batch_size))
    every = max(1, parse_step(cfg.train.eval_every, per_epoch))

    def training(kind: str, step: int, name: str, iterations: int, done: bool) -> Training:
        return Training({"kind": kind, "step": step, "proposal": name}, iterations,
                        _evals(iterations, every), done=done)

    rows = _reusable(plan)
    past = rows if not rows.empty and "kind" in rows.columns else pd.DataFrame(
        columns=["kind", "step", "proposal", "chosen", "latency_ms"])
    chosen = past[(past.kind == "proposal") & past.chosen.map(na._true)].sort_values("step")
    seed_iters = parse_step(cfg.pretrained_ft if cfg.pretrained is not None else cfg.seed_train,
                            per_epoch)
    seed_done = bool((past.kind == "seed").any()) and (plan.run_path / "seed.safetensors").exists()
    plan.trainings.append(training("seed", 0, "seed", seed_iters, seed_done))
    for r in past[past.kind == "proposal"].itertuples():  # proposals of past steps
        if int(r.step) <= len(chosen):
            plan.trainings.append(training("proposal", int(r.step), str(r.proposal),
                                           parse_step(cfg.netadapt.short_ft, per_epoch), True))
    current, now_ms, first = spec, seed_ms, len(chosen) + 1
    if len(chosen):
        current = load_spec(plan.run_path / f"spec_step{len(chosen)}.yaml")
        now_ms = float(chosen.latency_ms.iloc[-1])
    n = cfg.netadapt
    todo = remaining_steps(now_ms, target_ms, delta_ms, float(n.delta_decay), first,
                           int(n.max_steps))
    short = parse_step(n.short_ft, per_epoch)
    if todo:
        budget = now_ms - delta_ms * float(n.delta_decay) ** (first - 1)
        if is_phone(dev):  # the next step's proposals, exactly as the run finds them
            names = [p.knob.name for p in (widest_within(current, k, budget, int(n.width_step),
                                                         ms) for k in knobs(current))
                     if p is not None]
            counted = f"step {first}'s proposals found on the phone model"
        else:
            names = [k.name for k in knobs(current)]
            counted = f"step {first}'s knobs (an upper bound: some may not meet the budget)"
        for k in todo:
            for name in names if k == first else [f"p{i}" for i in range(len(names))]:
                done = k == first and bool(((past.kind == "proposal") & (past.step == k)
                                            & (past.proposal == name)).any())
                plan.trainings.append(training("proposal", k, name, short, done))
        plan.notes.append(f"proposals: {len(names)} per step ({counted}; later steps assumed "
                          "the same)")
    steps = len(chosen) + len(todo)
    chain = seed_iters + steps * short + parse_step(n.long_ft, per_epoch)
    finals = [("long_ft", 0, "long_ft", parse_step(n.long_ft, per_epoch))]
    if n.scratch:
        finals.append(("scratch", 0, "scratch", chain))
    bases = {"none": 0, "final": 1, "steps": steps}[str(n.baseline)]
    done_bases = int((past.kind == "baseline").sum())
    finals += [("baseline", i, f"x{i}", chain) for i in range(bases)]
    for kind, step, name, iterations in finals:
        if kind == "baseline":  # named by its multiplier, known only at the end: counted
            done = step < done_bases
        else:
            done = bool(((past.kind == kind) & (past.proposal == name)).any())
        plan.trainings.append(training(kind, step, name, iterations, done))
    plan.notes.append(
        f"latency ({how}): seed {seed_ms:.3f} ms, target {target_ms:.3f} ms, delta "
        f"{delta_ms:.3f} ms; steps: "
        + (f"{len(chosen)} done in the past run (reused), " if len(chosen) else "")
        + f"about {len(todo)} to go (an estimate: (current {now_ms:.3f} ms - target) / delta; "
        "a chosen proposal cuts at least delta, often more, so fewer steps may do)")
    plan.notes.append("seed training: " + (
        "reused (the past run's seed.safetensors)" if seed_done else f"{seed_iters} iterations"))
    proxy = na._proxy(cfg, spec, data)
    plan.timed = f"the seed's proxy {spec.name} ({proxy.macs() / 1e6:.1f}M MAdds)"
    torch.manual_seed(int(cfg.seed))
    _time(plan, lambda: build_network(proxy), data, cfg.train, device, test=False)
    plan.caveats.append("every training is priced as the seed's proxy (adapted networks are "
                        "smaller: an overestimate); the proposals' latency search and weight "
                        "truncation are not counted")
    return plan


def plan_build_v3(cfg: DictConfig) -> Plan:
    """One row per construction step: a host measurement (phones: the model, instant) and, with
    train_steps, a training; a step with a row in the past run is reused whole."""
    from lotto.arch import adapt_to_resolution
    from lotto.arch.build import build_network, load_pretrained
    from lotto.experiments.build_v3 import COMMAND, construct, phones

    skipped: list[str] = []
    steps = construct(cfg, skipped)
    final = steps[-1].spec
    if cfg.pretrained is not None:  # weights that do not fit: the run's error, here too
        load_pretrained(build_network(final), Path(cfg.pretrained).expanduser())
    plan = _new_plan(cfg, COMMAND, unit="measurements", unit_name="steps", notes=skipped)
    host = str(cfg.latency.host)
    plan.measurements = [Measurement({"step": st.step, "change": st.change}, 0.0)
                         for st in steps]
    plan.notes.append(f"steps: {', '.join(st.change for st in steps)}; latency: "
                      + ", ".join([*([f"{host} measured"] if host != "none" else []),
                                   *(f"{p} phone model (instant)" for p in phones(cfg))]))
    trained = {"none": [], "final": steps[-1:], "all": steps}[str(cfg.train_steps)]
    if trained:
        from lotto.data import load_data
        from lotto.train import resolve_device

        device = resolve_device(cfg.device)
        data = load_data(cfg.data, device)
        per_epoch = max(1, len(data.train_y) // int(cfg.train.batch_size))
        iters = parse_step(cfg.train.iterations, per_epoch)
        every = max(1, parse_step(cfg.train.eval_every, per_epoch))
        plan.trainings = [Training({"step": st.step, "change": st.change}, iters,
                                   _evals(iters, every) + 1)  # + the evaluation at the start
                          for st in trained]
        plan.eval_examples = len(data.val_y) + len(data.test_y)
        small = adapt_to_resolution(final.replace(in_channels=data.in_channels,
                                                  num_classes=data.num_classes,
                                                  bn_momentum=cfg.train_bn_momentum),
                                    data.image_size)
        plan.timed = f"the final network adapted to {cfg.data.name} ({small.macs() / 1e6:.1f}M " \
                     "MAdds)"
    _mark_done(plan, ["step", "change"])
    if host != "none":
        lat = cfg.latency
        if _time_measurements(plan, lambda: time_measurement(
                steps[0].spec, host, threads=int(lat.threads),
                min_run_time=float(lat.min_run_time), warmup=10)):
            plan.caveats.append(f"each step's {host} measurement is priced as the seed's (one "
                                "quick real measurement); a noisy one the run re-takes is not "
                                "counted")
    if trained:
        torch.manual_seed(int(cfg.seed))
        _time(plan, lambda: build_network(small), data, cfg.train, device)
    if cfg.export == "onnx":
        plan.caveats.append("the ONNX export of the final network is not estimated (seconds)")
    return plan


def plan_bench(cfg: DictConfig) -> Plan:
    """The networks bench would price (one; --validate: validation.networks; --build-lut: the
    space's carrier networks with units missing from the table), those a past run priced, and
    the time of a host measurement here (phones: the model, instant)."""
    from lotto.experiments import bench
    from lotto.latency.devices import is_phone, is_runtime_device

    bench.check_modes(cfg)
    if cfg.calibrate:  # the fit is cheap: done here, so that its errors show now
        name, specs, _, fit = bench.fit_calibration(cfg)
        plan = _new_plan(cfg, "bench", unit="measurements", unit_name="networks")
        plan.notes.append(f"--calibrate: fits the phone model's features to {len(specs)} "
                          f"measured networks (cross-validated RMSPE "
                          f"{100 * fit['cv']['rmspe']:.1f}%) and would register device {name} "
                          "in <runs_dir>/devices; nothing is measured")
        return plan
    device, spec, space = bench.prepare_bench(cfg)
    plan = _new_plan(cfg, "bench", unit="measurements", unit_name="networks")
    phone = is_phone(device)
    if is_runtime_device(device):
        assert spec is not None
        plan.measurements = [Measurement({"kind": "bench", "network": spec.name,
                                          "device": device}, 0.0, estimated=False)]
        plan.caveats.append(f"{device}: the export to ExecuTorch and the runtime's timing are "
                            "not estimated")
    elif spec is not None:  # price one network
        source = cfg.source or ("model" if phone else "measure")
        plan.measurements = [Measurement({"kind": "bench", "network": spec.name,
                                          "device": device}, 0.0)]
        _mark_done(plan, ["kind", "network", "device"])
        if source == "measure":
            _time_measurements(plan, lambda: time_measurement(
                spec, device, threads=int(cfg.threads),
                min_run_time=float(cfg.measure.min_run_time), warmup=int(cfg.measure.warmup),
                dtype=str(cfg.dtype), clock=str(cfg.measure.clock)))
            if cfg.per_layer:
                plan.caveats.append(f"--per-layer: {cfg.measure.per_layer_runs} more forwards "
                                    "with hooks, not estimated")
        elif not phone:
            missing = len(bench._table(cfg, device, None).missing([spec]))
            plan.notes.append(f"lookup table: {missing} unit(s) of {spec.name} missing, timed "
                              "first" + (" (not estimated)" if missing else ""))
        plan.notes.append(f"{spec.name} on {device}: "
                          + ("measured here" if source == "measure" else
                             "phone model (instant)" if phone else f"{source} (instant)"))
    elif cfg.validate and phone:
        plan.notes.append(f"--validate {device}: the phone model's cross-validation on the "
                          "published latencies (computation: seconds; nothing is measured)")
    else:  # host tables: --build-lut and/or --validate
        assert space is not None
        lut = bench._table(cfg, device, None)
        if cfg.build_lut:
            carriers = list(space.carriers())
            missing = [c for c in carriers if lut.missing([c])]
            each = time_measurement(missing[0], device, threads=int(cfg.threads),
                                    min_run_time=float(cfg.lut.min_run_time), warmup=1,
                                    dtype=str(cfg.dtype), clock=str(cfg.measure.clock)
                                    ) if missing else 0.0
            plan.measurements += [Measurement({"kind": "lut", "network": c.name}, each,
                                              done=c not in missing) for c in carriers]
            plan.notes.append(f"--build-lut: {len(lut.entries)} units in {lut.path}; "
                              f"{len(missing)} of {len(carriers)} carrier networks hold units "
                              "still to time")
            if missing:
                plan.caveats.append("each carrier's in-situ unit timing is priced as one "
                                    "end-to-end measurement of a carrier; the offset calibration "
                                    f"({cfg.lut.reference_networks} networks) is not counted")
        if cfg.validate:
            specs = space.sample(int(cfg.validation.networks), int(cfg.seed))
            rows = _reusable(plan)
            done = set(rows.network[rows.kind == "validation"]) if "kind" in rows else set()
            todo = [s for s in specs if s.name not in done]
            each = time_measurement(todo[0], device, threads=int(cfg.threads),
                                    min_run_time=float(cfg.validation.min_run_time),
                                    warmup=int(cfg.measure.warmup), dtype=str(cfg.dtype),
                                    clock=str(cfg.measure.clock)) if todo else 0.0
            plan.measurements += [Measurement({"kind": "validation", "network": s.name}, each,
                                              done=s.name in done) for s in specs]
            plan.notes.append(f"--validate: {len(specs)} networks of the space measured end to "
                              "end against the table")
        return plan
    if is_runtime_device(device):
        _mark_done(plan, ["kind", "network", "device"])
    return plan


def plan_fidelity(cfg: DictConfig) -> Plan:
    """`search --fidelity N`: the N networks it draws (exactly: the draw is seeded), each scored
    by the proxy and trained once per reference seed, less what the shared caches hold."""
    from lotto.arch.build import build_network
    from lotto.experiments.common import shared_data
    from lotto.experiments.fidelity import draw, prepare, reference_cache_path
    from lotto.experiments.search import COMMAND, proxy_cache_path
    from lotto.proxy import proxy_spec
    from lotto.search.evaluate import Cache, proxy_network, spec_key
    from lotto.train import resolve_device

    space, seeds, ref_train, _ = prepare(cfg)
    f = cfg.fidelity
    dev = resolve_device(str(cfg.device))
    data = shared_data(cfg.data, dev)
    per_epoch = max(1, len(data.train_y) // cfg.train.batch_size)
    supernet = cfg.search.get("proxy") == "supernet"
    plan = _new_plan(cfg, COMMAND, eval_examples=len(data.val_y), workers=_workers(cfg))
    picks = draw(space, int(f.networks), int(f.seed))
    keys = [spec_key(space.network(ix)) for ix in picks]
    root = Path(cfg.run.runs_dir).expanduser() / COMMAND
    proxy_cache = Cache(proxy_cache_path(cfg, None) if cfg.proxy.cache and not supernet
                        else None)
    ref_cache = Cache(reference_cache_path(cfg))
    proxy_steps = 0 if supernet else parse_step(cfg.train.iterations, per_epoch)
    ref_steps = parse_step(ref_train.iterations, per_epoch)
    for i, key in enumerate(keys):
        plan.trainings.append(Training({"network": i, "what": "proxy"}, proxy_steps, 1,
                                       done=proxy_cache.get(key) is not None))
    for i, key in enumerate(keys):
        for s in seeds:
            plan.trainings.append(Training({"network": i, "what": f"reference seed {s}"},
                                           ref_steps, 1,
                                           done=ref_cache.get(f"{key} seed{s}") is not None))
    cached_ref = sum(t.done for t in plan.trainings if t.key["what"] != "proxy")
    plan.notes.append(f"--fidelity: {len(keys)} networks drawn (seed {f.seed}); proxy scores "
                      f"cached: {sum(t.done for t in plan.trainings[:len(keys)])}; reference "
                      f"trainings ({ref_steps} steps x {len(seeds)} seeds) cached: {cached_ref} "
                      f"of {len(keys) * len(seeds)} (shared caches under {root}: reused)")
    if supernet:
        plan.caveats.append("search.proxy=supernet: the supernet's training is not estimated; "
                            "a proxy score is priced as one validation pass")
    small = proxy_spec(proxy_network(space.network(picks[0], "plan"), cfg.proxy), data,
                       float(cfg.proxy.bn_momentum), int(cfg.proxy.min_output))
    plan.timed = f"the first drawn network's proxy ({small.macs() / 1e6:.1f}M MAdds)"
    torch.manual_seed(int(cfg.seed))
    _time(plan, lambda: build_network(small), data, cfg.train, dev, test=False)
    plan.caveats.append("every training is priced as the first drawn network's")
    return plan


def plan_pipeline(cfg: DictConfig) -> Plan:
    """Per target, each sub-run by its own planner (the search; NetAdapt of MobileNetV3-Small),
    shown as one line each with its rough time; NetAdapt of the searched network is unknown
    before the search (not estimated); then the final trainings (methods x targets x seeds)
    without a results row, timed on the MobileNetV3-Small multiplier of the first target."""
    import tempfile

    from lotto.arch.build import build_network
    from lotto.experiments import pipeline as pl
    from lotto.experiments.common import shared_data
    from lotto.proxy import proxy_spec
    from lotto.train import resolve_device

    targets, methods, device = pl.validate(cfg)
    price = pl.phone_pricer(device)
    pl.check_reachable(cfg, targets, methods, price)
    plan = _new_plan(cfg, pl.COMMAND, unit_name="final trainings", workers=_workers(cfg))
    stages = pl.RunAt(plan.run_path)
    with tempfile.TemporaryDirectory() as tmp:
        for t in targets:
            name = pl.ms_name(t)
            subs = []
            if any(m in pl.SEARCHED for m in methods):
                subs.append((f"search-{name}", plan_search(pl.stage_config(
                    cfg, "search", stages, f"search-{name}", {"target_latency": t}))))
                if "search+netadapt" in methods:
                    plan.caveats.append(f"NetAdapt of the network searched at {name} is not "
                                        "estimated: it depends on what the search finds")
            if "netadapt-v3-small" in methods:
                path = stages.file(f"specs/netadapt-v3-small-seed-{name}.yaml")  # the run's
                if not path.exists():  # (its sub-run's config names it), or a stand-in
                    path = Path(tmp) / path.name
                    pl.netadapt_seed(cfg, t, price).save(path)
                sub = f"netadapt-v3-small-{name}"
                subs.append((sub, plan_netadapt(pl.stage_config(cfg, "netadapt", stages, sub, {
                    "from": str(path), "width_mult": 1.0, "latency.target": f"{t:g}ms"}))))
            for sub, p in subs:
                left, n = len(p.todo) + len(p.to_measure), len(p.trainings) + len(p.measurements)
                plan.notes.append(f"stage {sub}: {left} of {n} {p.unit_name or p.unit} to do, "
                                  f"about {p.seconds() / 60:.1f} min")
                plan.stage_seconds += p.seconds()
    dev = resolve_device(str(cfg.device))
    data = shared_data(cfg.data, dev)
    per_epoch = max(1, len(data.train_y) // int(cfg.final.batch_size))
    steps = parse_step(cfg.final.iterations, per_epoch)
    every = max(1, parse_step(cfg.final.eval_every, per_epoch))
    plan.eval_examples = len(data.val_y) + len(data.test_y)
    for t in targets:
        for method in methods:
            for seed in cfg.seeds:
                plan.trainings.append(Training({"method": method, "target_ms": t,
                                                "seed": int(seed)}, steps, _evals(steps, every)))
    _mark_done(plan, ["method", "target_ms", "seed"], stem="results")
    net = pl.multiplier_network(pl.V3_SMALL, targets[0], price, float(cfg.multiplier_max))
    small = proxy_spec(net, data, float(cfg.proxy.bn_momentum), int(cfg.proxy.min_output))
    plan.timed = f"{net.name} as trained on the data ({small.macs() / 1e6:.1f}M MAdds)"
    torch.manual_seed(int(cfg.seed))
    _time(plan, lambda: build_network(small), data, cfg.final, dev)
    plan.caveats.append("the final trainings are all priced as the timed network (the methods' "
                        "networks differ in cost)")
    return plan
