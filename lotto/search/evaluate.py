"""Candidate evaluation: proxy training as a task of `lotto.parallel`, and the accuracy cache.

The task trains one spec's proxy (`lotto.proxy.Job` / `run_job`, the proxy task netadapt trains
on too: here from scratch, scored on the validation split) and returns its numbers; latency is
priced by the driver (`lotto.latency.pricer`). Anything a
sample raises (a spec the builder rejects, a diverged loss, an injected fault) is a failed task:
the sample gets reward 0 and a row in failures.csv, and the search goes on.

The cache maps a spec string to its proxy accuracy, per proxy setup (`proxy_key`: the proxy,
data and train sections and the seed): `runs/search/.cache/<key>.jsonl`, one JSON line per
spec, appended in one write. Runs of the same proxy setup (other controllers, seeds of the
controller, targets, devices) share it, so a network is trained once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lotto.arch import ArchSpec, scale_width
from lotto.errors import LottoError
from lotto.proxy import Job, run_job


def proxy_network(spec: ArchSpec, proxy: DictConfig) -> ArchSpec:
    """The spec as the proxy trains it: widths scaled by proxy.width_mult (before the strides
    are cut for the data's image size in `lotto.proxy.proxy_spec`)."""
    m = float(proxy.width_mult)
    return spec if m == 1.0 else scale_width(spec, m)


def sample_job(spec: ArchSpec, data: DictConfig, train: DictConfig, proxy: DictConfig,
               seed: int, device: str, label: str, fault: str | None = None) -> Job:
    """The proxy training of one sample: `proxy_network(spec)` from scratch for
    `train.iterations`, scored on the validation split (the `proxy` section's settings)."""
    return Job(proxy_network(spec, proxy), data, train, seed, device,
               bn_momentum=float(proxy.bn_momentum), min_output=int(proxy.min_output),
               label=label, fault=fault)


def evaluate(job: Job, progress: Any = None) -> dict[str, Any]:
    """The task function: `lotto.proxy.run_job`, its numbers as a cache entry (val accuracy /
    loss / seconds / proxy size). A diverged loss or a spec the proxy cannot build fails this
    sample (a failed task), not the run."""
    from lotto.tasks import shared_data
    from lotto.train import TrainingDiverged, resolve_device

    shared_data(job.data, resolve_device(job.device))  # data the run cannot load stops the run
    try:
        result = run_job(job, progress)
    except TrainingDiverged as e:  # one sample's problem, not the run's: a failed task
        raise RuntimeError(f"NaN/inf loss at iteration {e.iteration}") from None
    except LottoError as e:  # e.g. a spec its proxy cannot build: this sample fails, not the run
        raise RuntimeError(str(e)) from None
    acc = float(result.val_accuracy)
    if acc != acc:
        raise RuntimeError("validation accuracy is NaN")
    assert result.trained is not None
    return {"val_accuracy": acc, "val_loss": float(result.val_loss),
            "train_seconds": float(result.seconds), "proxy_params": result.trained.params(),
            "proxy_macs": result.trained.macs()}


def spec_key(spec: ArchSpec) -> str:
    """What identifies a network for the cache: stem, blocks, head, SE rule (not its name)."""
    s, h = spec.stem, spec.head
    return (f"stem_k{s.kernel}_s{s.stride}_c{s.channels}_{s.act} "
            + " ".join(spec.block_strings())
            + f" head_c{h.conv}_h{h.hidden}_{h.act} se_{spec.se_rule}_{spec.se_gate}"
            f" r{spec.resolution}")


def proxy_seed(cfg: DictConfig) -> int:
    """The seed every proxy training of the run uses (init and data order)."""
    return int(cfg.seed if cfg.proxy.get("seed") is None else cfg.proxy.seed)


def proxy_key(cfg: DictConfig) -> str:
    """Hash of what decides a proxy accuracy: proxy, data, train sections and the seed."""
    payload = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("proxy", "data", "train")}
    payload["seed"] = proxy_seed(cfg)
    payload["proxy"].pop("seed", None)
    payload["proxy"].pop("cache", None)
    payload["data"].pop("workers", None)
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class Cache:
    """Proxy results by spec string, shared by runs of the same proxy setup (append-only)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    item = json.loads(line)
                    self.entries[item["spec"]] = item
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a killed process: ignored

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        item = {"spec": key, **value}
        self.entries[key] = item
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(item, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write of one line: concurrent runs do not interleave
        finally:
            os.close(fd)
