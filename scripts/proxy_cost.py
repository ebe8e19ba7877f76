"""Cost of one sample, train proxy vs supernet proxy, on the same networks in one process.

The supernet is the cached one of the given config (trained first if missing: its training time
is printed). Each network is scored by the supernet (several scoring settings) and trained by
the train proxy (`search.proxy=train`, the `train` section), alternating, 1 thread:

    PYTHONPATH=$PWD python scripts/proxy_cost.py --runs-dir R --networks 6 -- supernet.steps=3000
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch
from omegaconf import OmegaConf

from lotto.config import load_config
from lotto.experiments.search import load_search_space
from lotto.search.evaluate import evaluate, proxy_seed, sample_job
from lotto.search.supernet import Supernet, ensure_supernet, make_adapt, score
from lotto.tasks import shared_data

CPU = torch.device("cpu")
# (recal_batches, recal_batch_size, score_images)
SETTINGS = [(4, 128, None), (2, 128, 500), (1, 128, 250), (1, 64, 128)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs-dir", required=True)
    ap.add_argument("--networks", type=int, default=6)
    ap.add_argument("--stream", type=int, default=30, help="distinct networks, reuse on/off")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config("search", None, ["device=cpu", f"run.runs_dir={args.runs_dir}",
                                        "search.proxy=supernet", *args.overrides])
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    path, meta = ensure_supernet(cfg, space, data, seed=proxy_seed(cfg), device=CPU)
    print(json.dumps({"supernet": path.stem, "cached": meta["cached"],
                      "train_seconds": round(meta["seconds"], 1)}), flush=True)
    from safetensors.torch import load_file

    net = Supernet(space, make_adapt(cfg, data), proxy_seed(cfg),
                   bool(cfg.supernet.get("nest_ds", False)))
    net.load(load_file(str(path)))
    rng = random.Random(11)
    times: dict[str, list[float]] = {"train": []}
    for _ in range(args.networks):
        ix = space.sample_indices(rng)
        choices = space.decode(ix)
        spec, where = net.member(choices)
        for rb, rbs, n in SETTINGS:
            sc = OmegaConf.merge(cfg.supernet, {"recal_batches": rb, "recal_batch_size": rbs,
                                                "score_images": n})
            t = time.perf_counter()
            score(net, spec, where, data, sc, seed=0, device=CPU)
            times.setdefault(f"supernet {rb}x{rbs} recal, {n or 'all'} images", []).append(
                time.perf_counter() - t)
        job = sample_job(space.network(ix), cfg.data, cfg.train, cfg.proxy, proxy_seed(cfg),
                         "cpu", "cost")
        t = time.perf_counter()
        evaluate(job)
        times["train"].append(time.perf_counter() - t)
    # a search's stream of distinct networks, cheapest setting: modules built per network vs
    # assembled from reused blocks (alternating, the same networks)
    cheap = OmegaConf.merge(cfg.supernet, {"recal_batches": 1, "recal_batch_size": 64,
                                           "score_images": 128})
    for _ in range(args.stream):
        spec, where = net.member(space.decode(space.sample_indices(rng)))
        for reuse in (False, True):
            t = time.perf_counter()
            score(net, spec, where, data, cheap, seed=0, device=CPU, reuse=reuse)
            times.setdefault(f"supernet 1x64 recal, 128 images, new networks, reuse={reuse}",
                             []).append(time.perf_counter() - t)
    train = statistics.mean(times["train"])
    for k, v in times.items():
        m = statistics.mean(v)
        print(json.dumps({"proxy": k, "mean_s": round(m, 4), "min_s": round(min(v), 4),
                          "max_s": round(max(v), 4), "train_over_this": round(train / m, 1)}))


if __name__ == "__main__":
    main()
