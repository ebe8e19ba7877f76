"""`lotto netadapt`: latency-driven layer-wise adaptation of a trained network (NetAdapt, as
MobileNetV3 used it; Yang et al. 2018, Howard et al. 2019 s. 4.2).

Seed: `--pretrained` weights, or the seed trained for `seed_train` iterations (saved, reused).
Step k: budget = current latency - delta_k. Proposals (`lotto.netadapt.proposals`): per block
the widest expansion width, per residual group the widest shared width, whose latency on the
target device meets the budget (binary search over multiples of `width_step`); each inherits
the parent's largest-norm channels (`lotto.netadapt.truncate`), is fine-tuned `short_ft`
iterations and scored on the validation split (never the test split). The best by `metric`
becomes the next network. Then `long_ft`, a from-scratch training of the final spec, and the
seed scaled by a uniform width multiplier to the final latency, trained from scratch: the two
from-scratch trainings get the iterations the adapted network's weights saw in all (seed +
chosen short fine-tunes + long fine-tune).

Latency is the spec's at its own resolution on the target device (`lotto.latency.pricer.Pricer`,
the rule search prices by too): phones from the phone model; `cpu` from a host lookup table
(built in situ around the seed: missing units timed at the start, others interpolated), and the
seed and final measured end to end at the end. Accuracy comes from the proxy task search trains
on too (`lotto.proxy`: the configured data, strides cut to `proxy.min_output`).

Files: `seed.safetensors`, `spec_step<k>.yaml` + `step<k>.safetensors` per chosen step,
`final.yaml` (the adapted spec at its own resolution), `final.safetensors` with
`final_trained.yaml` (the proxy spec those weights fit), `metrics.{csv,parquet}`,
`failures.csv` (failed proposals), `summary.json`, `trajectory.png`. A proposal is finished
when its row is in metrics.csv (its weights in `step<k>/` until the step is chosen); a step is
finished when a row of it has chosen=True.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig
from rich.progress import Progress

from lotto.arch import ArchSpec, load_spec, scale_width
from lotto.arch.build import build_network
from lotto.config import check
from lotto.data import Data
from lotto.errors import LottoError
from lotto.experiments.common import (
    FailureLog,
    divergence_is_a_user_error,
    inject,
    injected_fault,
    open_runner,
    parallel_settings,
    shared_data,
    task_function,
)
from lotto.latency.devices import PHONES, canonical_device, is_phone
from lotto.latency.measure import CLOCKS
from lotto.latency.multiplier import multiplier_for
from lotto.latency.paired import host_clock
from lotto.latency.pricer import Pricer
from lotto.netadapt import Proposal, floor_spec, knobs, truncate_state, widest_within
from lotto.parallel import Runner, TaskResult
from lotto.proxy import Job as ProxyJob
from lotto.proxy import ProxyResult, proxy_spec, run_job
from lotto.runs import MetricsLog, RunDir, json_value
from lotto.train import check_train_config, parse_step, resolve_device

COMMAND = "netadapt"
METRICS = ("ratio", "min-drop")
BASELINES = ("final", "steps", "none")
KEYS = ("kind", "step", "proposal")
_AMOUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(x|ms)\s*$")


@dataclass
class NetAdaptResult:
    run: RunDir
    metrics: pd.DataFrame
    summary: dict
    failures: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Config


def parse_amount(value: Any, key: str) -> tuple[float, str]:
    """'0.8x' -> (0.8, 'x'); '12ms' -> (12.0, 'ms')."""
    m = _AMOUNT.match(str(value))
    if not m:
        raise LottoError(f"config key {key}: {value!r} is not like '0.8x' (of the seed's "
                         "latency) or '12ms'")
    return float(m.group(1)), m.group(2)


def validate(cfg: DictConfig) -> None:
    na = cfg.netadapt
    check(na.metric in METRICS, "netadapt.metric", f"{na.metric!r}: choose ratio or min-drop")
    delta, _ = parse_amount(na.delta, "netadapt.delta")
    check(delta > 0, "netadapt.delta", f"{na.delta!r} must be positive")
    target, _ = parse_amount(cfg.latency.target, "latency.target")
    check(target > 0, "latency.target", f"{cfg.latency.target!r} must be positive")
    check(0 < na.delta_decay <= 1, "netadapt.delta_decay", "must be in (0, 1]")
    check(na.width_step >= 1, "netadapt.width_step", "must be at least 1")
    check(na.max_steps >= 1, "netadapt.max_steps", "must be at least 1")
    check(na.baseline in BASELINES, "netadapt.baseline", "final, steps or none")
    wm = cfg.width_mult
    check(wm is None or (isinstance(wm, (int, float)) and not isinstance(wm, bool) and wm > 0),
          "width_mult", f"{wm!r} must be a positive number or null")
    check(cfg.proxy.min_output >= 1, "proxy.min_output", "must be at least 1")
    check(cfg.latency.threads >= 1, "latency.threads", "must be at least 1")
    check(cfg.latency.min_run_time > 0, "latency.min_run_time", "must be positive")
    check(cfg.latency.clock in CLOCKS, "latency.clock", f"must be one of {', '.join(CLOCKS)}")
    check(all(m > 0 for m in cfg.latency.lut_multipliers), "latency.lut_multipliers",
          "must be positive")
    for key, value in (("netadapt.short_ft", na.short_ft), ("netadapt.long_ft", na.long_ft),
                       ("seed_train", cfg.seed_train), ("pretrained_ft", cfg.pretrained_ft)):
        try:
            parse_step(value, 1)
        except LottoError as e:
            raise LottoError(f"config key {key}: {e}") from None
    check(parse_step(na.short_ft, 1) >= 1, "netadapt.short_ft", "must be at least 1 iteration")
    check(parse_step(cfg.seed_train, 1) >= 1 or cfg.pretrained is not None, "seed_train",
          "must be at least 1 iteration without pretrained weights")
    check_train_config(cfg.train)
    device = str(cfg.latency.device).strip().lower()
    try:
        canonical_device(device)
    except LottoError:
        raise LottoError(f"unknown device {cfg.latency.device!r}; choose {', '.join(PHONES)} "
                         "(pixel = pixel1), a calibrated device, or cpu") from None
    check(is_phone(device) or device == "cpu", "latency.device",
          f"{cfg.latency.device!r}: netadapt prices on a phone ({', '.join(PHONES)}, a "
          "calibrated device) or cpu")


DEFAULT_SEED, DEFAULT_MULT = "mobilenet_v3_small", 0.5  # the demo's proxy (configs/netadapt.yaml)


def seed_spec(cfg: DictConfig) -> ArchSpec:
    spec = load_spec(str(cfg["from"])).validate()
    mult = cfg.width_mult
    if mult is None:
        mult = DEFAULT_MULT if str(cfg["from"]) == DEFAULT_SEED else 1.0
    if mult != 1.0:
        spec = scale_width(spec, float(mult)).replace(name=f"{spec.name}_x{mult:g}")
    return spec


# --------------------------------------------------------------------------------------------
# The task: one training (a proposal's short fine-tune, the seed, long_ft, scratch, baseline):
# the proxy task `lotto.proxy.Job`, with the unit it trains


@dataclass(kw_only=True)
class Job(ProxyJob):
    kind: str  # seed | proposal | long_ft | scratch | baseline
    step: int
    proposal: str
    parent: ArchSpec | None = None  # a proposal's `state` is its parent's: truncated first


def _proxy(cfg: DictConfig, spec: ArchSpec, data: Data) -> ArchSpec:
    return proxy_spec(spec, data, float(cfg.proxy.bn_momentum), int(cfg.proxy.min_output))


def train_job(job: Job, progress: Progress | None = None) -> ProxyResult:
    """The task function: truncate the parent's weights (proposals), then `lotto.proxy.run_job`
    (train, evaluate). Runs here or in a worker. A diverged loss stops the run (a user error:
    the recipe would diverge again)."""
    inject(job.fault)
    state = job.state
    if job.parent is not None and state is not None:
        data = shared_data(job.data, resolve_device(job.device))
        state = truncate_state(
            proxy_spec(job.parent, data, job.bn_momentum, job.min_output),
            proxy_spec(job.spec, data, job.bn_momentum, job.min_output), state)
    with divergence_is_a_user_error(f"{job.kind} {job.proposal} (step {job.step})"):
        return run_job(replace(job, state=state, parent=None, fault=None), progress)


# --------------------------------------------------------------------------------------------
# Seed weights


def load_seed_weights(cfg: DictConfig, spec: ArchSpec, data: Data) -> dict[str, torch.Tensor]:
    """`--pretrained`: ours (fitting the proxy) or a state dict of the full spec (torchvision's
    too): tensors of equal shape copied, the stem summed over input channels when the data has
    fewer, a classifier of another task re-initialised."""
    from lotto.arch.build import load_torchvision_state_dict

    path = Path(str(cfg.pretrained)).expanduser()
    if not path.is_file():
        raise LottoError(f"pretrained weights {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LottoError(f"cannot read pretrained weights {path}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise LottoError(f"pretrained weights {path} are not a state dict of tensors")
    torch.manual_seed(int(cfg.seed))
    proxy = build_network(_proxy(cfg, spec, data))
    ours = proxy.state_dict()
    if set(sd) == set(ours) and all(sd[k].shape == ours[k].shape for k in ours):
        return {k: v.clone() for k, v in sd.items()}
    full = build_network(spec)
    theirs = full.state_dict()
    try:
        if set(sd) == set(theirs):
            full.load_state_dict(sd)
        else:
            load_torchvision_state_dict(full, sd)
    except (LottoError, RuntimeError) as e:
        detail = " ".join(str(e).split())[:160]
        raise LottoError(f"pretrained weights {path} do not fit spec {spec.name!r}: "
                         f"{detail}") from None
    out = {}
    for k, v in full.state_dict().items():
        if v.shape == ours[k].shape:
            out[k] = v.clone()
        elif k == "stem.0.weight":
            out[k] = v.sum(1, keepdim=True).expand_as(ours[k]).clone()
        elif k.startswith("classifier."):
            out[k] = ours[k].clone()
        else:
            raise LottoError(f"pretrained weights {path}: {k} {tuple(v.shape)} does not fit "
                             f"the proxy's {tuple(ours[k].shape)}")
    return out


# --------------------------------------------------------------------------------------------
# The run


class _NetAdapt:
    def __init__(self, cfg: DictConfig, run: RunDir, data: Data, pricer: Pricer, seed: ArchSpec,
                 progress: Progress | None, report: Callable[[pd.DataFrame], None] | None):
        self.cfg, self.run, self.data, self.pricer = cfg, run, data, pricer
        self.progress, self.report = progress, report
        self.seed_spec = seed
        self.metrics = MetricsLog(run)
        self.failures = FailureLog(run, self.metrics)
        self.per_epoch = max(1, len(data.train_y) // int(cfg.train.batch_size))
        self.seed_ms = pricer.ms(seed)
        self.target_ms, self.delta_ms = amounts(cfg, self.seed_ms)
        self.stop_reason = ""

    def iters(self, value: Any) -> int:
        return parse_step(value, self.per_epoch)

    def job(self, kind: str, step: int, proposal: str, spec: ArchSpec, iterations: int, *,
            seed: int, state: dict | None = None, parent: ArchSpec | None = None,
            test: bool = False, fault: str | None = None) -> Job:
        """One training of the run: the proxy of `spec` (at its own resolution) for
        `iterations` steps from `state` (truncated from `parent`'s proxy) or a fresh init."""
        cfg = self.cfg
        return Job(spec, cfg.data, cfg.train, seed, str(cfg.device), int(iterations),
                   float(cfg.proxy.bn_momentum), int(cfg.proxy.min_output), state=state,
                   keep_state=True, test=test, label=f"step {step} {proposal}", fault=fault,
                   kind=kind, step=step, proposal=proposal, parent=parent)

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, highlight=False, soft_wrap=True)

    def row(self, kind: str, step: int, proposal: str, spec: ArchSpec, **extra: Any) -> dict:
        lat = self.pricer(spec)
        return {"kind": kind, "step": step, "proposal": proposal, "block": "", "old_width": None,
                "new_width": None, "latency_ms": float(lat.ms), "latency_source": lat.source,
                "expected_error": float(lat.expected_error), "budget_ms": None,
                "val_accuracy": None, "val_loss": None, "test_accuracy": None, "score": None,
                "chosen": False, "params": spec.params(), "macs": spec.macs(),
                "width_mult": None, "iterations": None, "seconds": None, **extra}

    def run_jobs(self, runner: Runner, jobs: list[Job],
                 done: Callable[[Job, ProxyResult], None]) -> None:
        fn = task_function(train_job, runner, self.progress)

        def on_result(index: int, result: TaskResult) -> None:
            job = jobs[index]
            if result.ok:
                done(job, result.value)
            else:
                self.failures.add({"kind": job.kind, "step": job.step, "proposal": job.proposal},
                                  "failed", result.error)
                self.say(f"[red]failed:[/] step {job.step} {job.proposal}: {result.error}")

        runner.run(fn, jobs, progress=self.progress, description=f"{jobs[0].kind} trainings"
                   if jobs else "", on_result=on_result)

    # ---- seed ----------------------------------------------------------------------------------

    def seed(self, runner: Runner) -> tuple[dict, float, int]:
        cfg = self.cfg
        found = self.metrics.find(kind="seed")
        if found and self.run.has("seed.safetensors"):
            return (self.run.load_tensors("seed.safetensors"), float(found[0]["val_accuracy"]),
                    int(found[0]["iterations"]))
        state = None
        iterations = self.iters(cfg.seed_train)
        if cfg.pretrained is not None:
            state = load_seed_weights(cfg, self.seed_spec, self.data)
            iterations = self.iters(cfg.pretrained_ft)
        job = self.job("seed", 0, "seed", self.seed_spec, iterations, state=state,
                       seed=int(cfg.seed), fault=injected_fault({"step": 0, "proposal": "seed"}))
        out: list[ProxyResult] = []
        self.run_jobs(runner, [job], lambda j, t: out.append(t))
        if not out:
            raise LottoError(f"the seed's training failed ({self.failures.entries[-1]['error']})"
                             "; nothing to adapt")
        self.run.save_tensors("seed.safetensors", out[0].state)
        self.seed_spec.save(self.run.file("spec_step0.yaml"))
        self.metrics.append(self.row("seed", 0, "seed", self.seed_spec, chosen=True,
                                     val_accuracy=out[0].val_accuracy,
                                     val_loss=out[0].val_loss, iterations=iterations,
                                     seconds=out[0].seconds))
        return out[0].state, out[0].val_accuracy, iterations

    # ---- steps ---------------------------------------------------------------------------------

    def steps(self, runner: Runner, state: dict, acc: float) -> tuple[ArchSpec, dict, float, int]:
        na = self.cfg.netadapt
        spec, lat = self.seed_spec, self.seed_ms
        chosen_steps = 0
        for k in range(1, int(na.max_steps) + 1):
            if lat <= self.target_ms:
                self.stop_reason = "target met"
                break
            chosen = [r for r in self.metrics.find(kind="proposal", step=k) if _true(r["chosen"])]
            if chosen:  # finished by a past run
                r = chosen[0]
                spec = load_spec(self.run.file(f"spec_step{k}.yaml"))
                state = self.run.load_tensors(f"step{k}.safetensors")
                acc, lat = float(r["val_accuracy"]), float(r["latency_ms"])
                chosen_steps = k
                continue
            budget = lat - self.delta_ms * float(na.delta_decay) ** (k - 1)
            proposals = [p for p in (widest_within(spec, knob, budget, int(na.width_step),
                                                   self.pricer.ms) for knob in knobs(spec))
                         if p is not None]
            if not proposals:
                self.stop_reason = (f"no proposal meets step {k}'s budget {budget:.3f} ms "
                                    f"(current {lat:.3f} ms)")
                break
            self.evaluate_step(runner, k, spec, state, acc, lat, budget, proposals)
            rows = self.metrics.find(kind="proposal", step=k)
            if not rows:
                self.stop_reason = f"every proposal of step {k} failed"
                break
            best = max(rows, key=lambda r: float(r["score"]))  # first of equal scores
            spec = next(p.spec for p in proposals if p.knob.name == best["proposal"])
            state = self.run.load_tensors(f"step{k}/{best['proposal']}.safetensors")
            spec.save(self.run.file(f"spec_step{k}.yaml"))
            self.run.save_tensors(f"step{k}.safetensors", state)
            self.metrics.drop(kind="proposal", step=k, proposal=best["proposal"])
            self.metrics.append({**best, "chosen": True})
            shutil.rmtree(self.run.file(f"step{k}"), ignore_errors=True)
            acc, lat = float(best["val_accuracy"]), float(best["latency_ms"])
            chosen_steps = k
            if self.report is not None:
                self.report(pd.DataFrame(self.metrics.find(kind="proposal", step=k)))
        else:
            self.stop_reason = "target met" if lat <= self.target_ms else "max_steps reached"
        return spec, state, acc, chosen_steps

    def evaluate_step(self, runner: Runner, k: int, spec: ArchSpec, state: dict, acc: float,
                      lat: float, budget: float, proposals: list[Proposal]) -> None:
        cfg = self.cfg
        todo = [p for p in proposals
                if not self.metrics.find(kind="proposal", step=k, proposal=p.knob.name)]
        by_name = {p.knob.name: p for p in proposals}
        jobs = []
        for p in todo:
            key = {"step": k, "proposal": p.knob.name}
            jobs.append(self.job("proposal", k, p.knob.name, p.spec,
                                 self.iters(cfg.netadapt.short_ft), parent=spec, state=state,
                                 seed=int(cfg.seed) * 1000 + k, fault=injected_fault(key)))

        def done(job: Job, out: ProxyResult) -> None:
            p = by_name[job.proposal]
            self.run.save_tensors(f"step{k}/{job.proposal}.safetensors", out.state)
            d_acc, d_lat = out.val_accuracy - acc, lat - p.latency_ms
            score = d_acc / abs(d_lat) if cfg.netadapt.metric == "ratio" else d_acc
            self.metrics.append(self.row(
                "proposal", k, job.proposal, p.spec, block=p.knob.blocks,
                old_width=p.old_width, new_width=p.new_width, budget_ms=budget,
                val_accuracy=out.val_accuracy, val_loss=out.val_loss, score=score,
                iterations=job.iterations, seconds=out.seconds, latency_queries=p.queries))

        if jobs:
            self.run_jobs(runner, jobs, done)

    # ---- final trainings -----------------------------------------------------------------------

    def finals(self, runner: Runner, spec: ArchSpec, state: dict, budget: int) -> None:
        cfg, na = self.cfg, self.cfg.netadapt
        jobs = [self.job("long_ft", 0, "long_ft", spec, self.iters(na.long_ft), state=state,
                         seed=int(cfg.seed) + 7, test=True)]
        if na.scratch:
            jobs.append(self.job("scratch", 0, "scratch", spec, budget, seed=int(cfg.seed) + 11,
                                 test=True))
        if na.baseline != "none":
            chosen = sorted((r for r in self.metrics.find(kind="proposal") if _true(r["chosen"])),
                            key=lambda r: r["step"])
            points = chosen if na.baseline == "steps" else chosen[-1:]
            for r in points:
                m = multiplier_for(self.seed_spec, float(r["latency_ms"]), self.pricer.ms)
                base = scale_width(self.seed_spec, m).replace(name=f"{self.seed_spec.name}*{m:g}")
                jobs.append(self.job("baseline", int(r["step"]), f"x{m:g}", base, budget,
                                     seed=int(cfg.seed) + 13, test=True))
        for job in jobs:
            job.fault = injected_fault({"step": job.step, "proposal": job.proposal})
        todo = [j for j in jobs if not self.metrics.find(kind=j.kind, step=j.step,
                                                        proposal=j.proposal)]

        def done(job: Job, out: ProxyResult) -> None:
            if job.kind == "long_ft":
                self.run.save_tensors("final.safetensors", out.state)
                _proxy(cfg, spec, self.data).save(self.run.file("final_trained.yaml"))
            extra = {"width_mult": job.spec.width_mult} if job.kind == "baseline" else {}
            self.metrics.append(self.row(job.kind, job.step, job.proposal, job.spec,
                                         val_accuracy=out.val_accuracy, val_loss=out.val_loss,
                                         test_accuracy=out.test_accuracy,
                                         iterations=job.iterations, seconds=out.seconds, **extra))

        if todo:
            self.run_jobs(runner, todo, done)


def _true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"




def prepare(cfg: DictConfig) -> tuple[ArchSpec, Data, torch.device]:
    """Checks that need no run directory: config, seed spec, data, weights."""
    validate(cfg)
    parallel_settings(cfg)
    spec = seed_spec(cfg)
    device = resolve_device(cfg.device)
    data = shared_data(cfg.data, device)
    _proxy(cfg, spec, data)  # a spec that cannot train on this data fails here
    if cfg.pretrained is not None:
        load_seed_weights(cfg, spec, data)
    return spec, data, device


FAR = 0.5  # a host target under this fraction of the narrowest network's measured latency


def refuse_far_target(cfg: DictConfig, spec: ArchSpec) -> None:
    """On a host, refuse a target far below the lowest reachable latency before timing the
    lookup table: the narrowest network (and, for an "x" target, the seed) measured end to end.
    The margin `FAR` leaves targets a loaded host could inflate the measurement past to the
    exact check against the table (after it is built)."""
    device = canonical_device(cfg.latency.device)
    if is_phone(device):
        return  # the phone model is instant: the exact check comes first anyway
    from lotto.latency import predict

    lat = cfg.latency

    def measured(s: ArchSpec) -> float:
        return float(predict(s, device, source="measure", threads=int(lat.threads),
                             min_run_time=float(lat.min_run_time),
                             clock=host_clock(str(lat.clock), device)).ms)

    value, unit = parse_amount(lat.target, "latency.target")
    floor_ms = measured(floor_spec(spec, int(cfg.netadapt.width_step)))
    target_ms = value * measured(spec) if unit == "x" else value
    if target_ms < FAR * floor_ms:
        raise LottoError(f"target {target_ms:.3f} ms is unreachable on {device}: the lowest "
                         f"reachable latency is about {floor_ms:.3f} ms (every width at its "
                         "narrowest, measured end to end)")


def amounts(cfg: DictConfig, seed_ms: float) -> tuple[float, float]:
    """(target, delta) in ms: latency.target and netadapt.delta, '0.8x' of the seed's or ms."""
    value, unit = parse_amount(cfg.latency.target, "latency.target")
    target_ms = value * seed_ms if unit == "x" else value
    value, unit = parse_amount(cfg.netadapt.delta, "netadapt.delta")
    return target_ms, value * seed_ms if unit == "x" else value


def check_reachable(cfg: DictConfig, spec: ArchSpec, ms: Callable[[ArchSpec], float],
                    dev: str) -> float:
    """The target below the seed and above the narrowest network (both priced by `ms`);
    returns the seed's latency."""
    seed_ms = ms(spec)
    target_ms, _ = amounts(cfg, seed_ms)
    if target_ms >= seed_ms:
        raise LottoError(f"target {target_ms:.3f} ms is not below the seed's latency "
                         f"{seed_ms:.3f} ms on {dev}")
    floor_ms = ms(floor_spec(spec, int(cfg.netadapt.width_step)))
    if target_ms < floor_ms:
        raise LottoError(f"target {target_ms:.3f} ms is unreachable on {dev}: the lowest "
                         f"reachable latency is {floor_ms:.3f} ms (every width at its narrowest)")
    return seed_ms


def run_netadapt(cfg: DictConfig, *, force: bool = False, progress: Progress | None = None,
                 runner: Runner | None = None,
                 report: Callable[[pd.DataFrame], None] | None = None) -> NetAdaptResult:
    start = time.perf_counter()
    spec, data, _ = prepare(cfg)
    say = (lambda m: progress.console.print(m, highlight=False)) if progress else (lambda m: None)
    refuse_far_target(cfg, spec)  # before a host table is timed (minutes)
    pricer = Pricer(cfg, spec, say=say)
    dev = pricer.device
    check_reachable(cfg, spec, pricer.ms, dev)
    run = RunDir.open(cfg, COMMAND, force=force)
    na = _NetAdapt(cfg, run, data, pricer, spec, progress, report)
    with open_runner(cfg) if runner is None else nullcontext(runner) as tasks:
        try:
            state, seed_acc, seed_iters = na.seed(tasks)
            final, state, acc, steps = na.steps(tasks, state, seed_acc)
            final = final.replace(name=f"{spec.name}_netadapt{steps}" if steps else spec.name)
            final.save(run.file("final.yaml"))
            chain = seed_iters + steps * na.iters(cfg.netadapt.short_ft) + na.iters(
                cfg.netadapt.long_ft)
            na.finals(tasks, final, state, chain)
        finally:
            na.failures.close(KEYS)
    frame = na.metrics.frame()
    summary = summarize(cfg, na, frame, final, steps, chain, time.perf_counter() - start)
    if dev == "cpu" and cfg.latency.measure_final:
        for name, s in (("seed", spec), ("final", final)):
            measured = pricer.measure(s, max(1.0, float(cfg.latency.min_run_time)))
            summary[f"{name}_measured_ms"] = float(measured.ms)
            summary[f"{name}_measured_iqr_rel"] = float(measured.expected_error)
            summary[f"{name}_lut_error"] = (summary[f"{name}_latency_ms"] - measured.ms) \
                / measured.ms
    run.write_json("summary.json", summary)
    plot(frame, run.file("trajectory.png"), dev, na.target_ms)
    return NetAdaptResult(run, frame, summary, na.failures.entries)


def summarize(cfg: DictConfig, na: _NetAdapt, frame: pd.DataFrame, final: ArchSpec,
              steps: int, chain: int, seconds: float) -> dict:
    def one(kind: str) -> dict | None:
        rows = frame[frame.kind == kind] if not frame.empty else frame
        if rows.empty:
            return None
        return {k: json_value(v) for k, v in rows.iloc[-1].items()}

    chosen = frame[(frame.kind == "proposal") & frame.chosen.map(_true)] if not frame.empty \
        else frame
    final_ms = na.pricer.ms(final)
    out = {
        "device": na.pricer.device,
        "latency_source": na.pricer(final).source,
        "proxy": (f"accuracy on {cfg.data.name} (strides cut to min_output "
                  f"{cfg.proxy.min_output}); latency of the spec at {final.resolution} px"),
        "seed_network": na.seed_spec.name,
        "seed_latency_ms": na.seed_ms,
        "target_ms": na.target_ms,
        "delta_ms": na.delta_ms,
        "metric": cfg.netadapt.metric,
        "steps": steps,
        "stop_reason": na.stop_reason,
        "target_met": bool(final_ms <= na.target_ms),
        "final_network": final.name,
        "final_latency_ms": final_ms,
        "final_blocks": final.block_strings(),
        "seed": one("seed"),
        "trajectory": [{"step": int(r.step), "proposal": r.proposal,
                        "latency_ms": float(r.latency_ms), "val_accuracy": float(r.val_accuracy)}
                       for r in chosen.sort_values("step").itertuples()] if len(chosen) else [],
        "long_ft": one("long_ft"),
        "scratch": one("scratch"),
        "baseline": one("baseline"),
        "chain_iterations": chain,
        "seconds": seconds,
        "failures": na.failures.entries,
    }
    return out


def plot(frame: pd.DataFrame, path: Path, device: str, target_ms: float | None = None) -> None:
    """Latency vs validation accuracy: the NetAdapt trajectory, the final trainings and the
    multiplier baseline."""
    if frame.empty:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lotto.runs import atomic_write

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    props = frame[frame.kind == "proposal"]
    if len(props):
        ax.scatter(props.latency_ms, props.val_accuracy * 100, s=10, color="0.7",
                   label="proposals (short fine-tune)")
    path_rows = pd.concat([frame[frame.kind == "seed"],
                           props[props.chosen.map(_true)].sort_values("step")])
    ax.plot(path_rows.latency_ms, path_rows.val_accuracy * 100, "o-", color="C0",
            label="NetAdapt (chosen steps)")
    for kind, marker, color in (("long_ft", "*", "C0"), ("scratch", "s", "C2"),
                                ("baseline", "D", "C3")):
        rows = frame[frame.kind == kind]
        if len(rows):
            label = {"long_ft": "NetAdapt + long fine-tune", "scratch": "final spec from scratch",
                     "baseline": "width multiplier (from scratch)"}[kind]
            ax.scatter(rows.latency_ms, rows.val_accuracy * 100, marker=marker, s=60,
                       color=color, label=label, zorder=3)
    if target_ms is not None:
        ax.axvline(target_ms, color="gray", ls="--", lw=1, label="target")
    ax.set_xlabel(f"latency on {device} (ms, spec at its own resolution)")
    ax.set_ylabel("validation accuracy (%, proxy task)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
