"""Train a cached supernet further (a warm restart of the cosine schedule) and measure its
fidelity on the networks `lotto search --fidelity N` drew, against that run's cached reference
trainings (same runs dir, same data / train / proxy / fidelity sections):

    PYTHONPATH=$PWD python scripts/supernet_continue.py --runs-dir R --more 6000 --lr 0.001 \
        -- search.proxy=supernet supernet.rule=uniform supernet.steps=6000 ...

The continued weights are written next to the cache entry as <key>-more<N>.safetensors (not a
cache entry: a search does not pick them up).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from lotto.config import load_config
from lotto.experiments.fidelity import draw, reference_cache_path
from lotto.experiments.search import load_search_space
from lotto.search.evaluate import Cache, proxy_seed, spec_key
from lotto.search.fidelity import bootstrap_tau, tau
from lotto.search.supernet import Supernet, make_adapt, score, supernet_path, train_supernet
from lotto.tasks import shared_data

CPU = torch.device("cpu")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs-dir", required=True)
    ap.add_argument("--more", type=int, required=True, help="further training steps")
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()
    torch.set_num_threads(1)
    cfg = load_config("search", None, ["device=cpu", f"run.runs_dir={args.runs_dir}",
                                        "fidelity.reference.iterations=160it",
                                        *args.overrides])
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    seed = proxy_seed(cfg)
    path = supernet_path(cfg, seed)
    net = Supernet(space, make_adapt(cfg, data), seed, bool(cfg.supernet.nest_ds))
    net.load(load_file(str(path)))
    more = OmegaConf.merge(cfg.supernet, {"steps": args.more, "lr": args.lr})
    stats = train_supernet(net, data, more, seed=seed + 1, device=CPU)
    save_file(net.state_dict(), str(path.with_name(f"{path.stem}-more{args.more}.safetensors")))
    refs = Cache(reference_cache_path(cfg))
    seeds = [int(s) for s in cfg.fidelity.reference.seeds]
    proxy, loss, ref, seconds = [], [], [], []
    for ix in draw(space, int(cfg.fidelity.networks), int(cfg.fidelity.seed)):
        key = spec_key(space.network(ix))
        rows = [refs.get(f"{key} seed{s}") for s in seeds]
        if any(r is None for r in rows):
            continue
        t = time.perf_counter()
        got = score(net, *net.member(space.decode(ix)), data, cfg.supernet, seed=seed,
                    device=CPU)
        seconds.append(time.perf_counter() - t)
        proxy.append(got["val_accuracy"])
        loss.append(-got["val_loss"])
        ref.append(sum(float(r["val_accuracy"]) for r in rows) / len(rows))
    print(json.dumps({
        "steps": f"{cfg.supernet.steps} + {args.more}", "train_seconds": round(stats["seconds"]),
        "final_loss": round(stats["final_loss"], 3), "networks": len(ref),
        "scores": [round(min(proxy), 3), round(max(proxy), 3)],
        "kendall_tau": round(tau(proxy, ref), 3),
        "kendall_tau_ci": [round(v, 2) for v in bootstrap_tau(proxy, ref, 1000, 1000)],
        "kendall_tau_loss": round(tau(loss, ref), 3),
        "kendall_tau_loss_ci": [round(v, 2) for v in bootstrap_tau(loss, ref, 1000, 1000)],
        "score_seconds": round(sum(seconds) / len(seconds), 3)}))


if __name__ == "__main__":
    main()
