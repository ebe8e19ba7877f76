"""`lotto search --fidelity N`: how well the configured proxy ranks networks of the space.

N distinct random networks of the space (drawn with `fidelity.seed`) are scored by the
configured proxy (`search.proxy`: train or supernet, with the same caches a search uses) and by
a reference training: the proxy's network (same widths and strides) trained from scratch for
`fidelity.reference.iterations` steps with each of `fidelity.reference.seeds`, scored on the
validation split and averaged over the seeds. Reported: Kendall's tau of proxy score vs
reference accuracy with a bootstrap interval (networks resampled), and the reference's own
seed-to-seed tau, the ceiling any proxy can reach.

Files under the run directory: `fidelity.csv` (spec, proxy, reference, proxy_seconds,
reference_seconds, then reference_seed<k> per seed, proxy_loss) and `summary.json` (kendall_tau,
kendall_tau_ci, the same for the proxy's validation loss as the score: kendall_tau_loss,
kendall_tau_loss_ci; reference_seed_tau, timings). Every training is a task of `lotto.parallel`; a
failed one drops its network from the tau (listed under failures). Reference trainings are
cached across runs under `<runs_dir>/search/.reference/<key>.jsonl` (key: data, train,
reference and proxy widths), proxy scores in the search's cache, so a rerun trains nothing.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress

from lotto.config import check
from lotto.experiments.common import open_runner, parallel_settings, task_function, unit_label
from lotto.experiments.search import (
    COMMAND,
    make_job,
    proxy_cache_name,
    proxy_cache_path,
    proxy_seed,
    proxy_task,
    validate,
)
from lotto.parallel import Runner, TaskResult
from lotto.runs import RunDir
from lotto.search.evaluate import Cache, evaluate, sample_job, spec_key
from lotto.search.fidelity import bootstrap_tau, seed_tau, tau

COLUMNS = ("spec", "proxy", "reference", "proxy_seconds", "reference_seconds")


@dataclass
class FidelityResult:
    run: RunDir
    table: pd.DataFrame
    summary: dict


def reference_sections(cfg: DictConfig) -> tuple[DictConfig, DictConfig]:
    """The train and proxy sections of a reference training."""
    ref = cfg.fidelity.reference
    train = OmegaConf.merge(cfg.train, {"iterations": ref.iterations, "warmup": ref.warmup})
    proxy = OmegaConf.merge(cfg.proxy, {"bn_momentum": ref.bn_momentum})
    return train, proxy


def reference_key(cfg: DictConfig) -> str:
    train, proxy = reference_sections(cfg)
    payload = {"data": OmegaConf.to_container(cfg.data, resolve=True),
               "train": OmegaConf.to_container(train, resolve=True),
               "proxy": {k: OmegaConf.to_container(proxy, resolve=True)[k]
                         for k in ("width_mult", "min_output", "bn_momentum")}}
    payload["data"].pop("workers", None)
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def reference_cache_path(cfg: DictConfig) -> Path:
    """The reference trainings of this setup, shared by every run under the runs directory."""
    return (Path(cfg.run.runs_dir).expanduser() / COMMAND / ".reference"
            / f"{reference_key(cfg)}.jsonl")


def draw(space: Any, n: int, seed: int) -> list[list[int]]:
    """`n` distinct networks (by spec) drawn uniformly; fewer if the space has fewer."""
    rng, out, seen = random.Random(seed), [], set()
    for _ in range(50 * n):
        ix = space.sample_indices(rng)
        key = spec_key(space.network(ix))
        if key not in seen:
            seen.add(key)
            out.append(ix)
            if len(out) == n:
                break
    return out


def prepare(cfg: DictConfig) -> tuple[Any, list[int], DictConfig, DictConfig]:
    """The checks before a run directory exists (also `--dry-run`'s): (space, reference seeds,
    the reference's train and proxy sections)."""
    space, _, _ = validate(cfg)
    f = cfg.fidelity
    check(int(f.networks) >= 3, "fidelity.networks", f"{f.networks}: at least 3 networks")
    seeds = [int(s) for s in f.reference.seeds]
    check(len(seeds) >= 1 and len(set(seeds)) == len(seeds), "fidelity.reference.seeds",
          "one or more distinct seeds")
    check(int(f.bootstrap) >= 10, "fidelity.bootstrap", "must be >= 10")
    parallel_settings(cfg)
    ref_train, ref_proxy = reference_sections(cfg)
    from lotto.train import check_train_config

    check_train_config(ref_train)
    return space, seeds, ref_train, ref_proxy


def run_fidelity(cfg: DictConfig, *, force: bool = False, progress: Progress | None = None,
                 runner: Runner | None = None) -> FidelityResult:
    space, seeds, ref_train, ref_proxy = prepare(cfg)
    f = cfg.fidelity
    run = RunDir.open(cfg, COMMAND, force=force)

    supernet, supernet_record = None, None
    if cfg.search.get("proxy") == "supernet":
        from lotto.experiments.common import shared_data
        from lotto.search.supernet import ensure_supernet
        from lotto.train import resolve_device

        device = resolve_device(str(cfg.device))
        supernet, supernet_record = ensure_supernet(
            cfg, space, shared_data(cfg.data, device), seed=proxy_seed(cfg), device=device,
            progress=progress)
    proxy_cache = Cache(proxy_cache_path(cfg, supernet) if cfg.proxy.cache else None)

    picks = draw(space, int(f.networks), int(f.seed))
    specs = [space.network(ix, f"fidelity_{i}") for i, ix in enumerate(picks)]
    keys = [spec_key(s) for s in specs]
    failures: list[dict] = []
    with open_runner(cfg) if runner is None else nullcontext(runner) as tasks:
        # the proxy's scores
        todo = [i for i, k in enumerate(keys) if proxy_cache.get(k) is None]
        jobs = [make_job(cfg, space, supernet, specs[i], picks[i], {"network": i})
                for i in todo]
        # one bar over both phases (workers draw none): the reference count is an upper bound
        # until the proxy phase ends, as a concurrent run may fill the reference cache
        bar = None if progress is None else progress.add_task(
            "fidelity", total=len(jobs) + len(specs) * len(seeds))

        def tick() -> None:
            if bar is not None:
                progress.advance(bar)

        def on_proxy(index: int, result: TaskResult) -> None:
            tick()
            i = todo[index]
            if result.ok:
                proxy_cache.put(keys[i], {**result.value, "seconds": result.seconds})
            else:
                failures.append({"network": i, "what": "proxy", "error": result.error})

        if jobs:
            tasks.run(task_function(proxy_task(cfg), tasks, progress), jobs, on_result=on_proxy)
        # the reference trainings, one per (network, seed); the cache is read now, after the
        # proxy phase, so that what a concurrent run trained meanwhile is not trained again
        ref_cache = Cache(reference_cache_path(cfg))
        units = [(i, s) for i in range(len(specs)) for s in seeds
                 if ref_cache.get(f"{keys[i]} seed{s}") is None]
        ref_jobs = [sample_job(specs[i], cfg.data, ref_train, ref_proxy, s, str(cfg.device),
                               unit_label({"network": i, "seed": s})) for i, s in units]
        if bar is not None:
            progress.update(bar, total=len(jobs) + len(units))

        def on_reference(index: int, result: TaskResult) -> None:
            tick()
            i, s = units[index]
            if result.ok:
                ref_cache.put(f"{keys[i]} seed{s}", {**result.value, "seconds": result.seconds})
            else:
                failures.append({"network": i, "what": f"reference seed {s}",
                                 "error": result.error})

        if ref_jobs:
            tasks.run(task_function(evaluate, tasks, progress), ref_jobs, on_result=on_reference)
        if bar is not None:
            progress.remove_task(bar)

    rows = []
    for i, key in enumerate(keys):
        p = proxy_cache.get(key)
        refs = [ref_cache.get(f"{key} seed{s}") for s in seeds]
        if p is None or any(r is None for r in refs):
            continue
        row = {"spec": " ".join(specs[i].block_strings()),
               "proxy": float(p["val_accuracy"]),
               "reference": sum(float(r["val_accuracy"]) for r in refs) / len(refs),
               "proxy_seconds": float(p["seconds"]),
               "reference_seconds": sum(float(r["seconds"]) for r in refs)}
        row.update({f"reference_seed{s}": float(r["val_accuracy"]) for s, r in zip(seeds, refs)})
        row["proxy_loss"] = float(p.get("val_loss", float("nan")))
        rows.append(row)
    table = pd.DataFrame(rows, columns=[*COLUMNS, *(f"reference_seed{s}" for s in seeds),
                                        "proxy_loss"])
    from lotto.runs import atomic_write

    atomic_write(run.file("fidelity.csv"), lambda tmp: table.to_csv(tmp, index=False))
    ci = bootstrap_tau(table.proxy, table.reference, int(f.bootstrap), int(f.seed))
    train_s = float(supernet_record.get("seconds") or 0.0) if supernet_record else 0.0
    summary: dict[str, Any] = {
        "run_dir": str(run.path), "proxy": str(cfg.search.get("proxy", "train")),
        "networks": len(table), "asked": len(specs),
        "kendall_tau": tau(table.proxy, table.reference),
        "kendall_tau_ci": list(ci),
        # the proxy scored by its validation loss instead (lower is better): a smoother
        # score than accuracy on 1,000 images
        "kendall_tau_loss": tau(-table.proxy_loss, table.reference),
        "kendall_tau_loss_ci": list(bootstrap_tau(-table.proxy_loss, table.reference,
                                                  int(f.bootstrap), int(f.seed))),
        "reference_seed_tau": seed_tau([table[f"reference_seed{s}"] for s in seeds]),
        "reference": f"{f.reference.iterations} steps from scratch, mean over seeds {seeds}",
        "proxy_seconds_per_network": float(table.proxy_seconds.mean()) if len(table) else None,
        "reference_seconds_per_network": (float(table.reference_seconds.mean())
                                          if len(table) else None),
        "supernet_train_seconds": train_s if supernet_record else None,
        "proxy_total_seconds": train_s + float(table.proxy_seconds.sum()),
        "failures": failures,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    run.write_json("summary.json", summary)
    record = fidelity_record_path(cfg, supernet)
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(record, lambda tmp: tmp.write_text(json.dumps(
        {k: summary[k] for k in ("kendall_tau", "kendall_tau_ci", "reference_seed_tau",
                                 "networks", "reference", "run_dir")}, indent=1)))
    return FidelityResult(run, table, summary)


SHIPPED_RECORDS = Path(__file__).resolve().parent.parent / "search" / "data"


def fidelity_record(cfg: DictConfig, supernet: Path | None) -> dict[str, Any] | None:
    """The fidelity measured for this proxy setup and space: the last `--fidelity` run's here,
    else the one shipped with lotto for the same setup (the default search's, measured at
    release; `shipped` says so), else None."""
    here = fidelity_record_path(cfg, supernet)
    for path, shipped in ((here, False), (SHIPPED_RECORDS / here.name, True)):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        return {**record, "shipped": shipped}
    return None


def fidelity_record_path(cfg: DictConfig, supernet: Path | None) -> Path:
    """Where the last fidelity measured for this proxy setup and space is kept (a search of the
    same setup reports it)."""
    from lotto.search.space import space_config

    space = json.dumps(space_config(cfg.space), sort_keys=True)
    name = f"{proxy_cache_name(cfg, supernet)}-{hashlib.sha1(space.encode()).hexdigest()[:8]}"
    return Path(cfg.run.runs_dir).expanduser() / COMMAND / ".fidelity" / f"{name}.json"
