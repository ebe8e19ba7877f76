"""What the proxy-fidelity scripts (finetune_proxy, landmark_supernet, blockwise_proxy) share:
their common arguments, the config and data they run on, and the cached reference accuracies
of `lotto search --fidelity`'s networks (a script scores proxies against them, it trains none)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig

from lotto.config import load_config
from lotto.data import Data
from lotto.experiments.fidelity import prepare, reference_cache_path
from lotto.search.evaluate import Cache, spec_key
from lotto.tasks import shared_data

CPU = torch.device("cpu")


def parser(out: str) -> argparse.ArgumentParser:
    """--runs-dir, --config, --out (default `out`) and key=value overrides (before any option
    that takes a list)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs-dir", required=True)
    ap.add_argument("--config", default=None, help="a search config file (-c of lotto search)")
    ap.add_argument("--out", default=out, help="file name under --runs-dir")
    ap.add_argument("overrides", nargs="*")
    return ap


def setup(args: argparse.Namespace, *extra: str
          ) -> tuple[DictConfig, Any, list[int], Data]:
    """(config, space, reference seeds, data) on one CPU thread, the config with `extra`
    before the command line's overrides."""
    torch.set_num_threads(1)
    cfg = load_config("search", args.config, [f"run.runs_dir={args.runs_dir}", "device=cpu",
                                        *extra, *args.overrides])
    space, seeds, _, _ = prepare(cfg)
    return cfg, space, seeds, shared_data(cfg.data, CPU)


def references(cfg: DictConfig, space: Any, picks: Sequence[Sequence[int]],
               seeds: Sequence[int], fidelity_seed: int) -> list[float]:
    """Mean reference accuracy over `seeds` of each network `space.network(ix)` of a draw,
    from the reference cache (exit with the command that fills it if one is missing)."""
    cache, out = Cache(reference_cache_path(cfg)), []
    for ix in picks:
        got = [cache.get(f"{spec_key(space.network(ix))} seed{k}") for k in seeds]
        if any(g is None for g in got):
            raise SystemExit(f"references missing: run `lotto search --fidelity {len(picks)} "
                             f"fidelity.seed={fidelity_seed}` first")
        out.append(sum(float(g["val_accuracy"]) for g in got) / len(got))
    return out
