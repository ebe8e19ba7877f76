"""`lotto pipeline`: the MobileNetV3 recipe end to end, against hand-scaled networks at equal
phone latency (Howard et al. 2019, Figure 1; NetAdapt's and MnasNet's "at equal latency").

Per latency target T (ms on `latency.device`, specs priced at their own resolution by
`lotto.latency.predict`), thin calls into the existing commands:

1. `run_search` at target T (configs/search.yaml + the `search:` section), a sub-run
   `<run>/stages/search/search-<T>ms`: its best network (highest reward, `best.yaml`);
2. `run_netadapt` of that network to T (`netadapt-search-<T>ms`), unless it is already at or
   under T;
3. `run_netadapt` of MobileNetV3-Small scaled (`multiplier_for`) to `netadapt_seed_ratio` x T
   (`netadapt-v3-small-<T>ms`);
4. MobileNetV3-Small/Large and MobileNetV2 at the largest width multiplier priced <= T;
5. every method's network trained from scratch (`lotto.proxy.train_spec`, the shared
   trainer) with the `final:` budget, once per seed, as tasks of `lotto.parallel`.

Files: `specs/<method>-<T>ms.yaml` (the final networks), `results.{csv,parquet}` (one row per
method, target, seed: a unit is finished when its row is there), `failures.csv`, `summary.json`
(per target and method: mean test accuracy, 95% t-interval over seeds, and the paired
difference to the best multiplier baseline), `pipeline.png` (accuracy vs latency, as
MobileNetV3's Figure 1) and `stages/` (the sub-runs, each resumable as its command's own run).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress

from lotto.arch import ArchSpec, load_spec, scale_width
from lotto.config import check, load_config
from lotto.errors import LottoError
from lotto.experiments.common import (
    FailureLog,
    divergence_is_a_user_error,
    inject,
    injected_fault,
    open_runner,
    parallel_settings,
    task_function,
    unit_label,
)
from lotto.latency.devices import canonical_device, is_phone
from lotto.latency.multiplier import multiplier_for
from lotto.latency.pricer import Pricer
from lotto.parallel import Runner, TaskResult
from lotto.runs import MetricsLog, RunDir, json_value

COMMAND = "pipeline"
KEYS = ("method", "target_ms", "seed")
COLUMNS = ("method", "target_ms", "seed", "network", "spec_file", "latency_ms",
           "latency_source", "macs", "params", "val_accuracy", "test_accuracy", "train_seconds")
# the width-multiplier baselines: method -> preset
MULTIPLIERS = {"mult-v3-small": "mobilenet_v3_small", "mult-v3-large": "mobilenet_v3_large",
               "mult-v2": "mobilenet_v2"}
SEARCHED = ("search+netadapt", "search")
METHODS = (*SEARCHED, "netadapt-v3-small", *MULTIPLIERS)
V3_SMALL = "mobilenet_v3_small"


@dataclass
class PipelineResult:
    run: RunDir
    results: pd.DataFrame
    summary: dict
    failures: list[dict] = field(default_factory=list)


# ---- configuration ------------------------------------------------------------------------------


def validate(cfg: DictConfig) -> tuple[list[float], list[str], str]:
    check(all(_number(t) for t in cfg.targets), "targets",
          f"{list(cfg.targets)}: targets are latencies in ms (numbers)")
    targets = [float(t) for t in cfg.targets]
    check(len(targets) > 0, "targets", "give at least one latency target (ms)")
    check(all(t > 0 for t in targets), "targets", f"{targets}: every target must be > 0 ms")
    check(len(set(targets)) == len(targets), "targets", f"{targets}: a target is repeated")
    methods = [str(m) for m in cfg.methods]
    check(len(methods) > 0, "methods", f"give at least one of {', '.join(METHODS)}")
    for m in methods:
        check(m in METHODS, "methods", f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    seeds = list(cfg.seeds)
    check(all(isinstance(s, int) and not isinstance(s, bool) for s in seeds), "seeds",
          f"{seeds}: seeds are integers")
    check(len(seeds) > 0, "seeds", "give at least one final-training seed")
    check(len(set(seeds)) == len(seeds), "seeds", f"{seeds}: a seed is repeated")
    check(cfg.netadapt_seed_ratio > 1, "netadapt_seed_ratio",
          f"{cfg.netadapt_seed_ratio}: must be > 1 (NetAdapt's seed must be over the target)")
    check(cfg.multiplier_max > 0.01, "multiplier_max", f"{cfg.multiplier_max}: must be > 0.01")
    check(cfg.proxy.min_output >= 1, "proxy.min_output", "must be at least 1")
    check(0 <= cfg.proxy.bn_momentum <= 1, "proxy.bn_momentum", "must be in [0, 1]")
    device = canonical_device(str(cfg.latency.device))
    check(is_phone(device), "latency.device",
          f"{cfg.latency.device!r}: the pipeline prices on a phone model (pixel1, pixel2, "
          "pixel3 or a calibrated device)")
    from lotto.train import check_train_config

    check_train_config(cfg.final)
    parallel_settings(cfg)
    return targets, methods, device


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ms_name(target: float) -> str:
    return f"{target:g}ms"


def stage_config(cfg: DictConfig, command: str, run: RunDir | RunAt, name: str,
                 fixed: dict[str, Any]) -> DictConfig:
    """The config of a sub-run: `configs/<command>.yaml` <- the section's `config` file <- the
    section's keys (its sub-sections merge into the command's) <- what the pipeline sets
    (`fixed`, its data, seed, device, parallel)."""
    section = OmegaConf.to_container(cfg[command], resolve=True)
    file = section.pop("config")
    options = {**section, "seed": int(cfg.seed), "device": str(cfg.device),
               "data": OmegaConf.to_container(cfg.data, resolve=True),
               "parallel": OmegaConf.to_container(cfg.parallel, resolve=True),
               "latency.device": str(cfg.latency.device),
               "run.runs_dir": str(run.file("stages")), "run.name": name, **fixed}
    try:
        return load_config(command, Path(str(file)).expanduser() if file else None, (), options)
    except LottoError as e:
        raise LottoError(f"config section {command}: {e}") from None


# ---- latency ----------------------------------------------------------------------------------


def phone_pricer(device: str) -> Pricer:
    """The shared `Pricer` on a phone (every stage and column of a pipeline prices on one)."""
    return Pricer(OmegaConf.create({"latency": {"device": device, "threads": 1,
                                                "min_run_time": 0.0}}))


def multiplier_network(preset: str, target: float, price: Pricer, high: float) -> ArchSpec:
    """`preset` at the largest width multiplier priced <= `target` (LottoError if none is)."""
    spec = load_spec(preset)
    m = multiplier_for(spec, target, price.ms, high=high)
    net = scale_width(spec, m).replace(name=f"{preset}_x{m:g}")
    if price.ms(net) > target:
        raise LottoError(f"target {target:g} ms is unreachable by {preset}: its smallest "
                         f"multiplier x{m:g} takes {price.ms(net):.3f} ms on {price.device}")
    return net


def check_reachable(cfg: DictConfig, targets: list[float], methods: list[str],
                    price: Pricer) -> None:
    """Refuse a target some method cannot reach before any training: under the search space's
    fastest network, under a multiplier's smallest, under NetAdapt's narrowest V3-Small."""
    from lotto.netadapt import floor_spec

    low = min(targets)
    high = float(cfg.multiplier_max)
    for method, preset in MULTIPLIERS.items():
        if method in methods:
            multiplier_network(preset, low, price, high)
    if "netadapt-v3-small" in methods:
        step = int(stage_config(cfg, "netadapt", RunAt(), "check", {}).netadapt.width_step)
        floor = price.ms(floor_spec(load_spec(V3_SMALL), step))
        check(low >= floor, "targets", f"{low:g} ms is unreachable by netadapt-v3-small: "
              f"MobileNetV3-Small's narrowest widths take {floor:.3f} ms on {price.device}")
    if any(m in SEARCHED for m in methods):
        from lotto.experiments.search import fastest_ms, load_search_space

        scfg = stage_config(cfg, "search", RunAt(), "check", {"target_latency": low})
        fastest = fastest_ms(load_search_space(scfg), Pricer(scfg, price.device))
        check(low >= fastest, "targets", f"{low:g} ms is unreachable by search: the fastest "
              f"network of the search space takes {fastest:.3f} ms on {price.device}")


class RunAt:
    """Where a run directory would be (`file` as RunDir's), without creating it: stage configs
    made for checks and for `--dry-run`."""

    def __init__(self, path: Path = Path()):
        self.path = path

    def file(self, name: str) -> Path:
        return self.path / name


# ---- stages 1-4: the networks -----------------------------------------------------------------


@contextmanager
def own_bars(progress: Progress | None) -> Iterator[None]:
    """Remove the bars a stage leaves behind (the parallel runner keeps its finished ones), so
    that the progress line of the next stage does not list every earlier one."""
    before = set(progress.task_ids) if progress is not None else set()
    try:
        yield
    finally:
        if progress is not None:
            for task in [t for t in progress.task_ids if t not in before]:
                progress.remove_task(task)


def netadapt_seed(cfg: DictConfig, target: float, price: Pricer) -> ArchSpec:
    """NetAdapt's MobileNetV3-Small seed at `target`: the widest multiplier priced at or under
    netadapt_seed_ratio x target."""
    return multiplier_network(V3_SMALL, float(cfg.netadapt_seed_ratio) * target, price,
                              float(cfg.multiplier_max))


def stage_networks(cfg: DictConfig, run: RunDir, target: float, methods: list[str],
                   price: Pricer, runner: Runner, progress: Progress | None,
                   say: Callable[[str], None]) -> dict[str, ArchSpec]:
    """The network of each method at `target`, from the sub-runs (run or resumed)."""
    from lotto.experiments.search import run_search

    nets: dict[str, ArchSpec] = {}
    t = ms_name(target)
    if any(m in SEARCHED for m in methods):
        say(f"[bold]{t}[/]: search")
        scfg = stage_config(cfg, "search", run, f"search-{t}", {"target_latency": target})
        with own_bars(progress):
            found = run_search(scfg, progress=progress, runner=runner)
        best = found.run.file("best.yaml")
        if not best.exists():
            raise LottoError(f"the search at {t} found no network (every sample failed: "
                             f"{found.run.path / 'failures.csv'})")
        searched = load_spec(best).replace(name=f"search_{t}")
        nets["search"] = searched
        if "search+netadapt" in methods:
            if price.ms(searched) <= target:
                say(f"{t}: the searched network takes {price.ms(searched):.3f} ms, at or under "
                    "the target: NetAdapt skipped, used as is")
                nets["search+netadapt"] = searched.replace(name=f"search_netadapt_{t}")
            else:
                say(f"[bold]{t}[/]: netadapt of the searched network "
                    f"({price.ms(searched):.3f} ms)")
                nets["search+netadapt"] = adapt(cfg, run, f"netadapt-search-{t}", best, target,
                                                runner, progress, say)
    if "netadapt-v3-small" in methods:
        seed = netadapt_seed(cfg, target, price)
        path = run.file(f"specs/netadapt-v3-small-seed-{t}.yaml")
        path.parent.mkdir(parents=True, exist_ok=True)
        seed.save(path)
        if price.ms(seed) <= target:
            say(f"{t}: the V3-Small seed {seed.name} takes {price.ms(seed):.3f} ms, at or under "
                "the target: NetAdapt skipped, used as is")
            nets["netadapt-v3-small"] = seed
        else:
            say(f"[bold]{t}[/]: netadapt of {seed.name} ({price.ms(seed):.3f} ms)")
            nets["netadapt-v3-small"] = adapt(cfg, run, f"netadapt-v3-small-{t}", path, target,
                                              runner, progress, say)
    for method, preset in MULTIPLIERS.items():
        if method in methods:
            nets[method] = multiplier_network(preset, target, price, float(cfg.multiplier_max))
    return {m: nets[m] for m in methods}


def adapt(cfg: DictConfig, run: RunDir, name: str, seed_file: Path, target: float,
          runner: Runner, progress: Progress | None, say: Callable[[str], None]) -> ArchSpec:
    """NetAdapt (a sub-run) of the spec in `seed_file` to `target` ms: its final network (a
    line says so when it stopped over the target: its latency is in the results)."""
    from lotto.experiments.netadapt import run_netadapt

    ncfg = stage_config(cfg, "netadapt", run, name, {
        "from": str(seed_file), "width_mult": 1.0, "latency.target": f"{target:g}ms"})
    with own_bars(progress):
        result = run_netadapt(ncfg, progress=progress, runner=runner)
    if not result.summary.get("target_met"):
        say(f"[yellow]warning:[/] {name}: NetAdapt stopped at "
            f"{result.summary['final_latency_ms']:.3f} ms, over the target {target:g} ms "
            f"({result.summary['stop_reason']}); trained as is")
    return load_spec(result.run.file("final.yaml"))


# ---- stage 5: the final trainings -------------------------------------------------------------


@dataclass
class FinalJob:
    method: str
    target_ms: float
    seed: int
    spec: ArchSpec  # at its own resolution; trained as its proxy on the data
    data: DictConfig
    train: DictConfig
    min_output: int
    bn_momentum: float
    device: str
    fault: str | None = None


def train_final(job: FinalJob, progress: Progress | None = None) -> dict[str, float]:
    """The task: train `job.spec` from scratch (the shared proxy trainer), then test it."""
    from lotto.arch.build import build_network
    from lotto.experiments.common import shared_data
    from lotto.proxy import proxy_spec, train_spec
    from lotto.train import evaluate, resolve_device

    inject(job.fault)
    device = resolve_device(job.device)
    data = shared_data(job.data, device)
    what = f"{job.method} {ms_name(job.target_ms)} seed {job.seed}"
    with divergence_is_a_user_error(what):
        res = train_spec(job.spec, data, job.train, seed=job.seed, device=device,
                         bn_momentum=job.bn_momentum, min_output=job.min_output,
                         keep_state=True, progress=progress, desc=what)
    model = build_network(proxy_spec(job.spec, data, job.bn_momentum, job.min_output))
    model.load_state_dict(res.state)
    _, test_acc = evaluate(model.to(device), data.test_x, data.test_y)
    return {"val_accuracy": res.val_accuracy, "test_accuracy": test_acc,
            "train_seconds": res.seconds}


def final_trainings(cfg: DictConfig, run: RunDir, nets: dict[float, dict[str, ArchSpec]],
                    price: Pricer, results: MetricsLog, failures: FailureLog, runner: Runner,
                    progress: Progress | None, say: Callable[[str], None]) -> None:
    """Train every (method, target, seed) without a results row; a row per finished one."""
    jobs, files = [], {}
    data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))  # standalone: they
    train = OmegaConf.create(OmegaConf.to_container(cfg.final, resolve=True))  # go to workers
    for target, by_method in nets.items():
        for method, spec in by_method.items():
            rel = f"specs/{method}-{ms_name(target)}.yaml"
            spec.save(run.file(rel))
            files[(method, target)] = rel
            for seed in cfg.seeds:
                key = {"method": method, "target_ms": target, "seed": int(seed)}
                if results.find(**key):
                    continue
                jobs.append(FinalJob(method, target, int(seed), spec, data, train,
                                     int(cfg.proxy.min_output), float(cfg.proxy.bn_momentum),
                                     str(cfg.device), injected_fault(key)))
    if not jobs:
        return

    def on_result(index: int, result: TaskResult) -> None:
        job = jobs[index]
        key = {"method": job.method, "target_ms": job.target_ms, "seed": job.seed}
        if not result.ok:
            failures.add(key, "failed", result.error)
            say(f"[red]failed:[/] {unit_label(key)}: {result.error}")
            return
        lat = price(job.spec)
        results.append({**key, "network": job.spec.name, "spec_file": files[(job.method,
                        job.target_ms)], "latency_ms": float(lat.ms),
                        "latency_source": lat.source, "macs": job.spec.macs(),
                        "params": job.spec.params(), **result.value})

    fn = task_function(train_final, runner, progress)
    runner.run(fn, jobs, progress=progress, description="final trainings", on_result=on_result)


# ---- results ----------------------------------------------------------------------------------


def summarize(frame: pd.DataFrame) -> dict[str, Any]:
    """Per target and method: n, mean test accuracy, its 95% t-interval over seeds (null under
    3 seeds), latency; and for every method but the best multiplier baseline (the mult-* method
    with the highest mean) the difference to it, paired by seed, with its t-interval."""
    from lotto.report.aggregate import t_interval

    out: dict[str, Any] = {}
    for target, at in frame.groupby("target_ms", sort=True):
        acc = {m: g.set_index("seed").test_accuracy.astype(float)
               for m, g in at.groupby("method", sort=False)}
        means = {m: float(a.mean()) for m, a in acc.items()}
        mults = [m for m in means if m in MULTIPLIERS]
        best = max(mults, key=lambda m: means[m]) if mults else None
        methods: dict[str, Any] = {}
        for m, a in acc.items():
            rows = at[at.method == m]
            entry = {"n": int(len(a)), **_interval(a.to_numpy(), t_interval),
                     "latency_ms": float(rows.latency_ms.mean()),
                     "latency_source": str(rows.latency_source.iloc[0]),
                     "network": str(rows.network.iloc[0]), "macs": int(rows.macs.iloc[0]),
                     "params": int(rows.params.iloc[0])}
            if best is not None and m != best:
                diff = (a - acc[best]).dropna()  # paired: the seeds both have
                entry["diff_to_best_multiplier"] = {"baseline": best, "n": int(len(diff)),
                                                    **_interval(diff.to_numpy(), t_interval)}
            methods[m] = entry
        out[f"{target:g}"] = {"target_ms": float(target), "best_multiplier": best,
                              "methods": methods}
    return out


def _interval(values: Any, t_interval: Callable) -> dict[str, float | None]:
    lo, hi = t_interval(values)
    half = (hi - lo) / 2
    return {"mean": json_value(float(values.mean())) if len(values) else None,
            "lo": json_value(lo), "hi": json_value(hi), "half_width": json_value(half)}


def plot(summary: dict, path: Path, device: str) -> None:
    """Test accuracy vs latency, one marker series per method across targets (MobileNetV3's
    Figure 1); error bars: the 95% t-interval over seeds."""
    from matplotlib.figure import Figure

    from lotto.report.plots import _colors, save
    from lotto.runs import atomic_write

    methods = list(dict.fromkeys(m for t in summary.values() for m in t["methods"]))
    if not methods:
        return
    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    markers = ("o", "s", "^", "D", "v", "P", "X", "*")
    for i, (method, color) in enumerate(zip(methods, _colors(len(methods)))):
        points = sorted((t["methods"][method]["latency_ms"], t["methods"][method])
                        for t in summary.values() if method in t["methods"])
        x = [p[0] for p in points]
        y = [100 * p[1]["mean"] for p in points]
        err = [100 * (p[1]["half_width"] or 0.0) for p in points]
        ax.errorbar(x, y, yerr=err, marker=markers[i % len(markers)], ms=7, capsize=3,
                    color=color, ls="-" if not method.startswith("mult-") else "--",
                    label=method)
    for t in summary.values():
        ax.axvline(t["target_ms"], color="gray", ls=":", lw=1)
    ax.set_xlabel(f"{device} latency (ms, phone model, spec at its own resolution)")
    ax.set_ylabel("test accuracy (%, mean over seeds; bars: 95% t-interval)")
    ax.set_title("The MobileNetV3 recipe vs width multipliers at equal latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, [path], write=atomic_write)


# ---- the run ----------------------------------------------------------------------------------


def run_pipeline(cfg: DictConfig, *, force: bool = False, progress: Progress | None = None,
                 runner: Runner | None = None) -> PipelineResult:
    start = time.perf_counter()
    targets, methods, device = validate(cfg)
    price = phone_pricer(device)
    check_reachable(cfg, targets, methods, price)
    say = (lambda m: progress.console.print(m, highlight=False, soft_wrap=True)) if progress \
        else (lambda m: None)
    run = RunDir.open(cfg, COMMAND, force=force)
    results = MetricsLog(run, "results")
    failures = FailureLog(run, results)
    with open_runner(cfg) if runner is None else nullcontext(runner) as tasks:
        try:
            nets = {t: stage_networks(cfg, run, t, methods, price, tasks, progress, say)
                    for t in targets}
            final_trainings(cfg, run, nets, price, results, failures, tasks, progress, say)
        finally:
            failures.close(KEYS)
    frame = results.frame()
    summary: dict[str, Any] = {
        "device": device, "methods": methods, "seeds": [int(s) for s in cfg.seeds],
        "accuracy": (f"test accuracy on {cfg.data.name}, trained {cfg.final.iterations} from "
                     f"scratch (strides cut to min_output {cfg.proxy.min_output})"),
        "targets": summarize(frame) if len(frame) else {},
        "seconds": time.perf_counter() - start, "failures": failures.entries}
    run.write_json("summary.json", summary)
    plot(summary["targets"], run.file("pipeline.png"), device)
    return PipelineResult(run, frame, summary, failures.entries)
