"""`lotto search`: MnasNet-style hardware-aware architecture search (Tan et al. 2019).

A controller (`lotto.search.controllers`) proposes a batch of networks from the factorised space
(`lotto.search.space`, the `space:` section); each new one is trained on the proxy task
(`lotto.search.evaluate`: accuracy on the validation split; or, under search.proxy=supernet,
scored with inherited weights of one weight-sharing supernet, `lotto.search.supernet`, trained
once per setup and cached) as a task of `lotto.parallel`, and priced on the target device at its
own resolution (`lotto.latency.pricer.Pricer`: the phone model, a host lookup table, or a
measurement); the reward `ACC * (LAT/TAR)^w` goes back to the controller.

Files under the run directory: `metrics.{csv,parquet}` (one row per sample), `failures.csv`
(samples whose training crashed: reward 0), `evaluated.jsonl` (this run's proxy results by spec
string), `controller/state.json` + the `controller/state.<step>.safetensors` it names (the
controller after each batch: state.json, written last, is the one commit point) and
`controller/pending.json` (the batch being evaluated), and at the end `pareto.csv`,
`best.yaml`, `search.png` and `summary.json`. Proxy results are also cached across runs of the
same proxy setup under `<runs_dir>/search/.cache/`.

Resume: batch k's samples are asked once (pending.json) and its rows are written when it ends;
a killed run re-asks nothing, retrains nothing that reached a cache, and goes on from the
controller saved after the last finished batch. A re-run also retrains the samples whose
training failed (their rows and failures.csv entries are replaced when they succeed; the
controller keeps what it learned from their reward 0).
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress

from lotto.config import check
from lotto.errors import LottoError
from lotto.experiments.common import (
    FailureLog,
    inject,
    injected_fault,
    open_runner,
    parallel_settings,
    task_function,
    unit_label,
)
from lotto.latency.devices import canonical_device, is_phone
from lotto.latency.measure import CLOCKS
from lotto.latency.pricer import Pricer
from lotto.parallel import Runner, TaskResult
from lotto.runs import MetricsLog, RunDir, write_text
from lotto.search.controllers import (
    CONTROLLERS,
    OPTUNA_CONTROLLERS,
    Controller,
    Outcome,
    import_optuna,
    make_controller,
)
from lotto.search.evaluate import (
    Cache,
    evaluate,
    proxy_key,
    proxy_network,
    proxy_seed,
    sample_job,
    spec_key,
)
from lotto.search.reward import Objective, objective
from lotto.search.space import Space, parse_space, space_config

COMMAND = "search"
KEYS = ("step", "sample")
COLUMNS = ("step", "sample", "controller", "spec", "params", "macs", "latency_ms",
           "latency_source", "expected_error", "val_accuracy", "reward", "cached", "seconds")
LATENCY_SOURCES = (None, "model", "lut", "measure")
PROXIES = ("train", "supernet")


@dataclass
class SearchResult:
    run: RunDir
    metrics: pd.DataFrame
    pareto: pd.DataFrame
    summary: dict
    failures: list[dict] = field(default_factory=list)


# ---- configuration ------------------------------------------------------------------------------


def make_objective(cfg: DictConfig) -> Objective:
    r = cfg.reward
    return objective(float(cfg.target_latency), str(r.constraint),
                     None if r.w is None else float(r.w), str(r.preset))


def load_search_space(cfg: DictConfig) -> Space:
    # a name (SPACES) or a mapping; an illegal stage: one line naming it
    space = parse_space(space_config(cfg.space), "config key space")
    if not space.factorised:
        raise LottoError("config key space: search needs a factorised space (stages), "
                         "not a list of specs")
    return space


def validate(cfg: DictConfig) -> tuple[Space, Objective, str]:
    s = cfg.search
    check(s.controller in CONTROLLERS, "search.controller",
          f"unknown controller {s.controller!r}; choose one of {', '.join(CONTROLLERS)}")
    if s.controller in OPTUNA_CONTROLLERS:
        import_optuna(s.controller)
    check(s.samples >= 1, "search.samples", f"{s.samples}: the sample budget must be >= 1")
    check(s.batch_size >= 1, "search.batch_size", "must be >= 1")
    validate_controller_settings(s)
    check(s.get("proxy", "train") in PROXIES, "search.proxy",
          f"{s.get('proxy')!r}: choose {' or '.join(PROXIES)}")
    if s.get("proxy") == "supernet":
        from lotto.search.supernet import check_config

        check_config(cfg.supernet)
    obj = make_objective(cfg)
    device = canonical_device(str(cfg.latency.device))
    src = cfg.latency.source
    check(src in LATENCY_SOURCES, "latency.source", f"{src!r}: null, model, lut or measure")
    check(not is_phone(device) or src in (None, "model"), "latency.source",
          f"{device} is a phone: its latency comes from the model")
    check(cfg.latency.threads >= 1, "latency.threads", "must be >= 1")
    check(cfg.latency.min_run_time > 0, "latency.min_run_time", "must be > 0")
    check(cfg.latency.clock in CLOCKS, "latency.clock", f"must be one of {', '.join(CLOCKS)}")
    p = cfg.proxy
    check(p.width_mult > 0, "proxy.width_mult", "must be > 0")
    check(p.min_output >= 1, "proxy.min_output", "must be >= 1")
    check(0 <= p.bn_momentum <= 1, "proxy.bn_momentum", "must be in [0, 1]")
    from lotto.train import check_train_config

    check_train_config(cfg.train)
    return load_search_space(cfg), obj, device


def validate_controller_settings(s: DictConfig) -> None:
    """The controllers' sections (all of them: a run may switch controller on a re-run)."""
    ppo = s.ppo
    check(ppo.hidden >= 1, "search.ppo.hidden", f"{ppo.hidden}: must be >= 1")
    check(ppo.lr > 0, "search.ppo.lr", f"{ppo.lr}: must be > 0")
    check(0 < ppo.clip < 1, "search.ppo.clip", f"{ppo.clip}: the ratio clip must be in (0, 1)")
    check(ppo.epochs >= 1, "search.ppo.epochs", f"{ppo.epochs}: must be >= 1")
    check(ppo.entropy >= 0, "search.ppo.entropy", f"{ppo.entropy}: must be >= 0")
    check(0 <= ppo.baseline_decay < 1, "search.ppo.baseline_decay",
          f"{ppo.baseline_decay}: must be in [0, 1)")
    evo = s.evolution
    check(evo.population >= 2, "search.evolution.population", f"{evo.population}: must be >= 2")
    check(1 <= evo.tournament <= evo.population, "search.evolution.tournament",
          f"{evo.tournament}: must be in 1..population ({evo.population})")
    check(s.tpe.startup >= 0, "search.tpe.startup", f"{s.tpe.startup}: must be >= 0")
    check(s.nsga2.population >= 2, "search.nsga2.population",
          f"{s.nsga2.population}: must be >= 2")


def proxy_description(cfg: DictConfig) -> str:
    d, t, p = cfg.data, cfg.train, cfg.proxy
    subset = (f"up to {d.subset} training examples" if d.subset is not None
              else "all training examples")
    val = f"{d.val_size} validation examples" if d.val_size is not None else "the validation split"
    if cfg.search.get("proxy") == "supernet":
        n = cfg.supernet
        distilled = ", distilled" if n.distill else ""
        if n.rule in ("sandwich", "sandwich_ops"):
            on = ", one op path per step" if n.rule == "sandwich_ops" else ""
            rule = f"sandwich (+{n.random} random{distilled}{on})"
        elif n.rule == "progressive":
            opened = ", ".join("+".join(g) for g in n.phases if len(g))
            rule = (f"progressive shrinking: the base {n.base_op} network, then {opened} "
                    f"opened in turn (+{n.random} random{distilled}"
                    f"{', ds nested in ir' if n.get('nest_ds') else ''})")
        elif n.rule == "oneshot":
            rule = f"one-shot: op types summed, path dropout to {n.keep_end:g}"
        else:
            rule = "uniform"
        return (f"supernet proxy: {d.name}, {subset}, scored on {val}; widths x{p.width_mult:g}, "
                f"strides cut only below {p.min_output} px; inherited weights of a supernet "
                f"trained {n.steps} steps ({rule}), BN recalibrated on {n.recal_batches} "
                f"batches of {n.recal_batch_size}")
    return (f"proxy task: {d.name}, {subset}, scored on {val}; widths x{p.width_mult:g}, strides "
            f"cut only below {p.min_output} px, {t.iterations} steps of batch {t.batch_size} from "
            "scratch")


def check_proxy(cfg: DictConfig, space: Space) -> None:
    """Build the proxy of the space's first and last networks on the data before any training
    (as netadapt's prepare does): every network of a factorised space has the same strides, so
    a proxy the data cannot take fails here, once, not in every sample."""
    from lotto.proxy import proxy_spec
    from lotto.tasks import shared_data
    from lotto.train import resolve_device

    data = shared_data(cfg.data, resolve_device(str(cfg.device)))
    axes = space.axes()
    for ix in ([0] * len(axes), [n - 1 for _, _, n in axes]):
        net = proxy_network(space.network(ix, "proxy_check"), cfg.proxy)
        try:
            proxy_spec(net, data, float(cfg.proxy.bn_momentum), int(cfg.proxy.min_output))
        except LottoError as e:
            raise LottoError(f"the proxy cannot be built on data {cfg.data.name} "
                             f"({data.image_size} px): {e}") from None


def proxy_cache_name(cfg: DictConfig, supernet: Path | None) -> str:
    """The shared cache of a proxy setup: a supernet's scores belong to its weights (and the
    recalibration settings), the train proxy's to `proxy_key`."""
    if supernet is None:
        return proxy_key(cfg)
    import hashlib

    text = supernet.stem + json.dumps(OmegaConf.to_container(cfg.supernet, resolve=True),
                                      sort_keys=True)
    return "supernet-" + hashlib.sha1(text.encode()).hexdigest()[:12]


def proxy_cache_path(cfg: DictConfig, supernet: Path | None) -> Path:
    """The file of that shared cache under the runs directory."""
    return (Path(cfg.run.runs_dir).expanduser() / COMMAND / ".cache"
            / f"{proxy_cache_name(cfg, supernet)}.jsonl")


def make_job(cfg: DictConfig, space: Space, supernet: Path | None, spec: Any, ix: list[int],
             unit: dict) -> Any:
    """The task scoring one network `space.network(ix)` with the configured proxy."""
    if supernet is None:
        return sample_job(spec, cfg.data, cfg.train, cfg.proxy, proxy_seed(cfg), str(cfg.device),
                          unit_label(unit), injected_fault(unit))
    from lotto.search.supernet import SupernetJob, layout

    return SupernetJob(spec, layout(space, ix), space_config(cfg.space),
                       cfg.data, cfg.proxy, cfg.supernet, str(supernet), proxy_seed(cfg),
                       str(cfg.device), unit_label(unit), injected_fault(unit))


def proxy_task(cfg: DictConfig) -> Any:
    """The task function of the configured proxy."""
    if cfg.search.get("proxy") == "supernet":
        from lotto.search.supernet import evaluate_supernet

        return evaluate_supernet
    return evaluate


# ---- latency: `lotto.latency.pricer.Pricer` (the rule is documented there) ---------------------


def fastest_ms(space: Space, price: Pricer) -> float:
    """The lowest latency found in the space: coordinate descent over its decisions from the
    first options (each axis set in turn to its fastest option, until nothing changes)."""
    axes = space.axes()
    best = [0] * len(axes)
    best_ms = price(space.network(best, "fastest"))[0]
    for _ in range(3):
        changed = False
        for a, (_, _, n) in enumerate(axes):
            for v in range(n):
                ix = best[:a] + [v] + best[a + 1:]
                ms = price(space.network(ix, "fastest"))[0]
                if ms < best_ms:
                    best, best_ms, changed = ix, ms, True
        if not changed:
            break
    return best_ms


def check_target(cfg: DictConfig, space: Space, obj: Objective, price: Pricer,
                 say: Any = lambda m: None) -> float | None:
    """Refuse an unreachable target under the hard constraint (every reward would be about 0);
    under the soft one (alpha = beta: the target scales every reward alike) say so. Returns the
    fastest latency found, or None where finding it would mean timing networks one by one."""
    if price.source == "measure" and obj.alpha == obj.beta:
        return None  # soft: the ranking does not depend on the target; not worth the timings
    low = fastest_ms(space, price)
    if obj.target_ms < low:
        text = (f"target {obj.target_ms:g} ms is unreachable on {price.device}: the fastest "
                f"network of the space takes {low:.3f} ms ({price.source})")
        if obj.alpha != obj.beta:
            raise LottoError(f"{text}; raise --target-latency or use --constraint soft")
        say(f"warning: {text}; every sample is over the target")
    return low


# ---- the loop ---------------------------------------------------------------------------------


class _Search:
    def __init__(self, cfg: DictConfig, space: Space, obj: Objective, device: str, run: RunDir,
                 progress: Progress | None, price: Pricer | None = None):
        self.cfg, self.space, self.obj, self.run, self.progress = cfg, space, obj, run, progress
        self.metrics = MetricsLog(run)
        self.failures = FailureLog(run, self.metrics)
        self.local = Cache(run.file("evaluated.jsonl"))
        shared = None
        self.supernet = None  # (weights file, its record) under search.proxy=supernet
        if cfg.search.get("proxy") == "supernet":
            from lotto.experiments.common import shared_data
            from lotto.search.supernet import ensure_supernet
            from lotto.train import resolve_device

            device_ = resolve_device(str(cfg.device))
            self.supernet = ensure_supernet(cfg, space, shared_data(cfg.data, device_),
                                            seed=proxy_seed(cfg), device=device_,
                                            progress=progress)
        if cfg.proxy.cache:
            shared = proxy_cache_path(cfg, None if self.supernet is None
                                      else self.supernet[0])
        self.shared = Cache(shared) if shared is not None else None
        self.price = price if price is not None else Pricer(cfg, device)
        axes = space.axes()
        self.names = [f"s{i}_{axis}" for i, axis, _ in axes]
        self.controller: Controller = make_controller(
            str(cfg.search.controller), [n for _, _, n in axes], int(cfg.seed),
            OmegaConf.to_container(cfg.search, resolve=True), self.names, space.canonical)
        self.step = 0
        self.load_state()

    def make_job(self, spec: Any, ix: list[int], unit: dict) -> Any:
        return make_job(self.cfg, self.space, None if self.supernet is None else self.supernet[0],
                        spec, ix, unit)

    # controller state: a new tensor file first, then the JSON that names it and the step (the
    # one commit point: a kill between the two leaves the old JSON naming the old tensors)
    def load_state(self) -> None:
        path = self.run.file("controller/state.json")
        if not path.exists():
            return
        try:
            meta = json.loads(path.read_text())
        except ValueError:
            raise LottoError(f"{path} is corrupt; use --force to start this run afresh") from None
        name = meta.get("tensors")
        if name is not None:
            tensors = self.run.load_tensors(f"controller/{Path(str(name)).name}")
        elif self.run.has("controller/state.safetensors"):  # a run of an older lotto
            tensors = self.run.load_tensors("controller/state.safetensors")
        else:
            tensors = {}
        self.controller.load(meta.get("controller", {}), tensors)
        self.step = int(meta["step"])

    def save_state(self) -> None:
        meta, tensors = self.controller.state()
        record = {"step": self.step, "controller_name": self.controller.name,
                  "controller": meta}
        if tensors:
            record["tensors"] = f"state.{self.step}.safetensors"
            self.run.save_tensors(f"controller/{record['tensors']}", tensors)
        inject(injected_fault({"save": "controller", "step": self.step}))  # tests: a kill here
        self.run.write_json("controller/state.json", record)  # the commit point
        for old in self.run.file("controller").glob("state*.safetensors"):
            if old.name != record.get("tensors"):
                old.unlink(missing_ok=True)

    def batch_samples(self, n: int) -> list[list[int]]:
        path = self.run.file("controller/pending.json")
        if path.exists():
            try:
                pending = json.loads(path.read_text())
                if pending.get("step") == self.step and len(pending["samples"]) == n:
                    return [list(map(int, s)) for s in pending["samples"]]
            except (ValueError, KeyError, TypeError):
                pass
        samples = self.controller.ask(n, self.step)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps({"step": self.step, "samples": samples}) + "\n")
        return samples

    def lookup(self, key: str) -> dict | None:
        hit = self.local.get(key)
        if hit is None and self.shared is not None:
            hit = self.shared.get(key)
        return hit

    def run_batches(self, runner: Runner, stop_after: int | None = None) -> None:
        s = self.cfg.search
        total, size = int(s.samples), int(s.batch_size)
        batches = math.ceil(total / size)
        bar = None
        if self.progress is not None:
            bar = self.progress.add_task(f"search ({self.controller.name})", total=total)
            self.progress.advance(bar, min(total, self.step * size))
        fn = task_function(proxy_task(self.cfg), runner, self.progress)
        self.retry_failed(runner, fn)
        done = 0
        while self.step < batches:
            first = self.step * size
            n = min(size, total - first)
            samples = self.batch_samples(n)
            # decisions that build the same network are one sample: canonical indices pick
            # the supernet's slice, the spec string keys the caches
            canon = [self.space.canonical(ix) for ix in samples]
            specs = [self.space.network(ix, f"search_s{self.step}_{j}")
                     for j, ix in enumerate(canon)]
            keys = [spec_key(sp) for sp in specs]
            trained: dict[str, tuple[dict | None, str, float]] = {}
            jobs, job_keys = [], []
            for j, (spec, key) in enumerate(zip(specs, keys)):
                if self.metrics.find(step=self.step, sample=first + j):
                    continue
                if self.lookup(key) is None and key not in job_keys:
                    unit = {"step": self.step, "sample": first + j}
                    jobs.append(self.make_job(spec, canon[j], unit))
                    job_keys.append(key)

            if jobs:
                runner.run(fn, jobs, on_result=self._on_result(job_keys, trained))
            outcomes = []
            for j, (ix, spec, key) in enumerate(zip(samples, specs, keys)):
                old = self.metrics.find(step=self.step, sample=first + j)
                if old:
                    outcomes.append(_outcome(old[0]))
                    continue
                row = self.row(first + j, ix, spec, key, trained)
                self.metrics.append(row, flush=False)
                outcomes.append(_outcome(row))
                if bar is not None:
                    self.progress.advance(bar)
            self.metrics.flush()
            self.controller.tell(samples, outcomes)
            self.step += 1
            self.save_state()
            done += 1
            if stop_after is not None and done >= stop_after:
                break
        if bar is not None:
            self.progress.remove_task(bar)

    def retry_failed(self, runner: Runner, fn: Any) -> None:
        """Train again the samples whose rows say failed (a past run's crash), and replace those
        rows and failures.csv entries by the results. The controller is not told again: it has
        learnt from their reward 0 already (telling twice would apply its update twice)."""
        failed = [r for r in self.metrics.rows if r.get("status") == "failed"]
        if not failed:
            return
        specs = {}
        for r in failed:
            ix = [int(v) for v in str(r["choices"]).split("-")]
            specs[(int(r["step"]), int(r["sample"]))] = (ix, self.space.network(ix, "retry"))
        trained: dict[str, tuple[dict | None, str, float]] = {}
        jobs, job_keys = [], []
        for (step, sample), (ix, spec) in specs.items():
            key = spec_key(spec)
            if self.lookup(key) is None and key not in job_keys:
                jobs.append(self.make_job(spec, self.space.canonical(ix),
                                          {"step": step, "sample": sample}))
                job_keys.append(key)
        if jobs:
            runner.run(fn, jobs, on_result=self._on_result(job_keys, trained))
        rows, current = [], self.step
        try:
            for r in self.metrics.rows:
                if r.get("status") != "failed":
                    rows.append(r)
                    continue
                self.step = int(r["step"])
                ix, spec = specs[(self.step, int(r["sample"]))]
                rows.append(self.row(int(r["sample"]), ix, spec, spec_key(spec), trained))
        finally:
            self.step = current
        self.metrics.drop()  # every row: the append rewrites the table whole, in its order
        self.metrics.append(rows)
        log = self.failures.log
        left = [f for f in log.rows
                if any(r.get("status") == "failed"
                       for r in self.metrics.find(step=f["step"], sample=f["sample"]))]
        if len(left) < len(log.rows):
            log.drop()
            if left:
                log.append(left)
            else:
                for path in (log.csv, log.parquet, log.length_file):
                    path.unlink(missing_ok=True)

    def _on_result(self, job_keys: list[str], trained: dict) -> Any:
        def on_result(index: int, result: TaskResult) -> None:
            key = job_keys[index]
            if result.ok:
                value = {**result.value, "seconds": result.seconds}
                self.local.put(key, value)
                if self.shared is not None:
                    self.shared.put(key, value)
                trained[key] = (value, "", result.seconds)
            else:
                trained[key] = (None, result.error or "failed", result.seconds)
        return on_result

    def row(self, sample: int, ix: list[int], spec: Any, key: str,
            trained: dict[str, tuple[dict | None, str, float]]) -> dict[str, Any]:
        """One metrics row: the README's columns first, then status, proxy size, choices."""
        row = self._row(sample, ix, spec, key, trained)
        return {**{k: row[k] for k in COLUMNS}, **row}

    def _row(self, sample: int, ix: list[int], spec: Any, key: str,
             trained: dict[str, tuple[dict | None, str, float]]) -> dict[str, Any]:
        ms, source, error = self.price(spec)
        row: dict[str, Any] = {
            "step": self.step, "sample": sample, "controller": self.controller.name,
            "spec": " ".join(spec.block_strings()), "params": spec.params(),
            "macs": spec.macs(), "latency_ms": ms, "latency_source": source,
            "expected_error": error, "choices": "-".join(map(str, ix)),
        }
        fresh = trained.pop(key, None)  # the first sample of a batch with this spec trained it
        if fresh is not None and fresh[0] is None:
            self.failures.add({"step": self.step, "sample": sample}, "failed", fresh[1])
            return {**row, "val_accuracy": float("nan"), "reward": 0.0, "cached": False,
                    "seconds": fresh[2], "status": "failed", "proxy_params": None,
                    "proxy_macs": None}
        value = fresh[0] if fresh is not None else self.lookup(key)
        if value is None:  # a repeat, in this batch, of a spec whose training failed
            return {**row, "val_accuracy": float("nan"), "reward": 0.0, "cached": True,
                    "seconds": 0.0, "status": "failed", "proxy_params": None,
                    "proxy_macs": None}
        acc = float(value["val_accuracy"])
        return {**row, "val_accuracy": acc, "reward": self.obj(acc, ms),
                "cached": fresh is None, "seconds": fresh[2] if fresh is not None else 0.0,
                "status": "ok", "proxy_params": value.get("proxy_params"),
                "proxy_macs": value.get("proxy_macs")}


def _outcome(row: dict) -> Outcome:
    acc = row["val_accuracy"]
    ok = row.get("status", "ok") == "ok" and acc == acc
    return Outcome(float(row["reward"]), float(acc) if ok else 0.0, float(row["latency_ms"]), ok)


# ---- results ----------------------------------------------------------------------------------


def pareto_front(frame: pd.DataFrame) -> pd.DataFrame:
    """Distinct networks no other beats in both accuracy (higher) and latency (lower)."""
    ok = frame[frame.status == "ok"].drop_duplicates("spec")
    ok = ok.sort_values(["latency_ms", "val_accuracy"], ascending=[True, False])
    rows, best = [], -math.inf
    for _, r in ok.iterrows():
        if r.val_accuracy > best:
            rows.append(r)
            best = r.val_accuracy
    cols = ["step", "sample", "latency_ms", "val_accuracy", "reward", "params", "macs", "spec"]
    return pd.DataFrame(rows)[cols] if rows else pd.DataFrame(columns=cols)


def summarize(frame: pd.DataFrame, cfg: DictConfig, obj: Objective) -> dict[str, Any]:
    distinct = frame.sort_values("reward", ascending=False).drop_duplicates("spec")
    best = distinct.iloc[0]
    near = (frame.latency_ms - obj.target_ms).abs() <= 0.05 * obj.target_ms
    return {
        "controller": str(cfg.search.controller),
        "samples": len(frame),
        "distinct": int(frame.spec.nunique()),
        "trained": int((~frame.cached.astype(bool) & (frame.status == "ok")).sum()),
        "cached": int(frame.cached.astype(bool).sum()),
        "failed": int((frame.status == "failed").sum()),
        "target_ms": obj.target_ms, "alpha": obj.alpha, "beta": obj.beta,
        "device": str(cfg.latency.device),
        "best": {"reward": float(best.reward), "val_accuracy": float(best.val_accuracy),
                 "latency_ms": float(best.latency_ms), "latency_source": best.latency_source,
                 "params": int(best.params), "macs": int(best.macs), "spec": best.spec,
                 "step": int(best["step"]), "sample": int(best["sample"])},
        "top5_mean_reward": float(distinct.reward.head(5).mean()),
        "within_5pct_of_target": float(near.mean()),
        "accuracy_source": proxy_description(cfg),
        "seconds": float(frame.seconds.sum()),
    }


def plot(frame: pd.DataFrame, front: pd.DataFrame, obj: Objective, title: str, path: Path
         ) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lotto.runs import atomic_write

    ok = frame[frame.status == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    points = ax.scatter(ok.latency_ms, 100 * ok.val_accuracy, c=ok["sample"], s=14,
                        cmap="viridis")
    fig.colorbar(points, ax=ax, label="sample")
    if len(front):
        ax.step(front.latency_ms, 100 * front.val_accuracy, where="post", color="crimson",
                lw=1.2, label="Pareto front")
    ax.axvline(obj.target_ms, color="gray", ls=":", label=f"target {obj.target_ms:g} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("proxy validation accuracy (%)")
    ax.legend(loc="lower right")
    ax = axes[1]
    ax.plot(frame["sample"], frame.reward, ".", ms=5, label="reward")
    ax.plot(frame["sample"], frame.reward.cummax(), "-", label="best so far")
    ax.set_xlabel("sample")
    ax.set_ylabel("reward ACC x (LAT/TAR)^w")
    ax.legend(loc="lower right")
    for a in axes:
        a.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def prepare(cfg: DictConfig, say: Any = lambda m: None, time_target: bool = True
            ) -> tuple[Space, Objective, str, Pricer, float | None]:
    """The checks before a run directory exists (also `--dry-run`'s): config, proxy on the
    data, the latency source, a reachable target. `time_target` False skips the target check
    where it would time networks one by one on this host (returns fastest None)."""
    space, obj, device = validate(cfg)
    parallel_settings(cfg)
    check_proxy(cfg, space)  # before the run directory and the budget
    price = Pricer(cfg, device, say=say)
    fastest = (check_target(cfg, space, obj, price, say)
               if time_target or price.source != "measure" else None)
    return space, obj, device, price, fastest


def run_search(cfg: DictConfig, *, force: bool = False, progress: Progress | None = None,
               runner: Runner | None = None, stop_after: int | None = None) -> SearchResult:
    """`stop_after`: stop after this many batches (tests of resume); `runner`: workers to reuse."""
    say = (lambda m: progress.console.print(m, highlight=False)) if progress else (lambda m: None)
    space, obj, device, price, fastest = prepare(cfg, say)
    run = RunDir.open(cfg, COMMAND, force=force)
    search = _Search(cfg, space, obj, device, run, progress, price)
    with open_runner(cfg) if runner is None else nullcontext(runner) as tasks:
        search.run_batches(tasks, stop_after)
    frame = search.metrics.frame()
    front = pareto_front(frame) if len(frame) else pd.DataFrame()
    summary: dict[str, Any] = {"run_dir": str(run.path), "failures": search.failures.entries,
                               "fastest_ms": fastest,
                               "proxy": str(cfg.search.get("proxy", "train"))}
    from lotto.experiments.fidelity import fidelity_record

    # the proxy's fidelity, if `lotto search --fidelity` measured this setup (here or at release)
    summary["fidelity"] = fidelity_record(cfg, None if search.supernet is None
                                          else search.supernet[0])
    if search.supernet is not None:
        record = search.supernet[1]
        summary["supernet"] = {"weights": str(search.supernet[0]), "cached": record["cached"],
                               "train_seconds": record.get("seconds"),
                               "steps": record.get("steps"),
                               "final_loss": record.get("final_loss")}
    if len(frame):
        summary.update(summarize(frame, cfg, obj))
        from lotto.runs import atomic_write

        atomic_write(run.file("pareto.csv"), lambda tmp: front.to_csv(tmp, index=False))
        best = frame.loc[frame.reward.idxmax()]
        ix = [int(v) for v in str(best.choices).split("-")]
        space.network(ix, f"search_{run.path.name}").save(run.file("best.yaml"))
        png, rows = run.file("search.png"), run.file("metrics.csv")
        if not png.exists() or png.stat().st_mtime < rows.stat().st_mtime:  # else: up to date
            plot(frame, front, obj, f"search ({cfg.search.controller}) on {device}: "
                 f"{proxy_description(cfg).split(';')[0]}", png)
    run.write_json("summary.json", summary)
    return SearchResult(run, frame, front, summary, search.failures.entries)
