"""Landmark regularisation of the supernet (issue 18): does a ranking term over a few networks
of known accuracy make the supernet rank the others?

Yu, Ranftl and Salzmann (CVPR 2021, "Landmark Regularization: Ranking Guided Super-Net
Training in Neural Architecture Search") add to the supernet's loss, each step, a pairwise
term over "landmark" networks whose standalone accuracy is known: for a landmark pair (i, j)
with i the more accurate, weight * relu(CE_i - CE_j), the cross-entropies of both through the
supernet on the step's batch. Here the landmarks are `--landmarks` random networks of the space
(drawn from `--landmark-seed`, checked disjoint from the scored draws), labelled by the train
proxy (its shared cache: a landmark is trained once); the supernet is the configured one
(`search.proxy=supernet`'s settings) with the term added, trained here and not cached.
Run `lotto search --fidelity N fidelity.seed=S --runs-dir R` first for each draw (it trains and
caches the references), then:

    PYTHONPATH=$PWD python scripts/landmark_supernet.py --runs-dir R [key=value ...] \
        --weight 1 --draws 1000 2000

(overrides before the list option --draws). Prints the landmark fit (tau of the supernet's
scores vs the landmark labels, on the landmarks) and, per draw, Kendall tau vs the reference
with its 95% bootstrap; writes R/<--out> (one row per scored network). Measured 2026-12-07:
docs/search.md, *Landmark regularisation*.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pandas as pd
import torch.nn.functional as F
from fidelity_script import CPU, parser, references, setup
from torch import Tensor

from lotto.experiments.fidelity import draw
from lotto.experiments.search import proxy_cache_path
from lotto.search.evaluate import Cache, evaluate, proxy_seed, sample_job, spec_key
from lotto.search.fidelity import bootstrap_tau, tau
from lotto.search.supernet import Supernet, layout, make_adapt, score, train_supernet


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = parser("landmark_supernet.csv")
    ap.add_argument("--landmarks", type=int, default=32)
    ap.add_argument("--landmark-seed", type=int, default=7000)
    ap.add_argument("--weight", type=float, default=1.0, help="the term's weight (0 = off)")
    ap.add_argument("--draws", type=int, nargs="+", default=None,
                    help="fidelity.seed of each scored draw (default: the config's)")
    args = ap.parse_intermixed_args(argv)
    cfg, space, seeds, data = setup(args, "search.proxy=supernet")
    seed = proxy_seed(cfg)
    n = int(cfg.fidelity.networks)
    draws = {s: draw(space, n, s) for s in (args.draws or [int(cfg.fidelity.seed)])}
    scored = {spec_key(space.network(ix)) for picks in draws.values() for ix in picks}
    marks = draw(space, args.landmarks, args.landmark_seed)
    if {spec_key(space.network(ix)) for ix in marks} & scored:
        raise SystemExit("a landmark is also a scored network: choose another --landmark-seed")

    # the labels: the train proxy's accuracy, from (and into) its shared cache
    cache = Cache(proxy_cache_path(cfg, None))
    labels = []
    for i, ix in enumerate(marks):
        spec, key = space.network(ix, f"landmark_{i}"), spec_key(space.network(ix))
        if cache.get(key) is None:
            start = time.perf_counter()
            value = evaluate(sample_job(spec, cfg.data, cfg.train, cfg.proxy, seed, "cpu",
                                        f"landmark {i}"))
            cache.put(key, {**value, "seconds": time.perf_counter() - start})
        labels.append(float(cache.get(key)["val_accuracy"]))
    print(f"{len(marks)} landmarks, train proxy {min(labels):.2f}-{max(labels):.2f}")

    net = Supernet(space, make_adapt(cfg, data), seed, bool(cfg.supernet.get("nest_ds", False)))
    paths = [space.decode(ix) for ix in marks]
    pairs = random.Random(seed + 1)

    def landmark_term(step: int, x: Tensor, y: Tensor) -> Tensor | None:
        i, j = pairs.sample(range(len(marks)), 2)
        if labels[i] < labels[j]:
            i, j = j, i
        better = F.cross_entropy(net.forward(paths[i], x), y)
        worse = F.cross_entropy(net.forward(paths[j], x), y)
        if float(better.detach()) <= float(worse.detach()):
            return None  # ordered: no term (zero gradients would still step Adam's state)
        return args.weight * (better - worse)

    stats = train_supernet(net, data, cfg.supernet, seed=seed, device=CPU,
                           extra_loss=landmark_term if args.weight > 0 else None)
    print(f"supernet: {stats['seconds']:.0f} s, final loss {stats['final_loss']:.3f}")

    def scores(picks: list[list[int]]) -> list[dict]:
        return [score(net, net.adapt(space.network(ix)), layout(space, ix), data, cfg.supernet,
                      seed=seed, device=CPU) for ix in picks]

    fit = scores(marks)
    print(f"landmark fit: tau {tau([r['val_accuracy'] for r in fit], labels):.2f} "
          f"(by loss {tau([-r['val_loss'] for r in fit], labels):.2f})")
    rows = []
    for s, picks in draws.items():
        ref = references(cfg, space, picks, seeds, s)
        for i, r in enumerate(scores(picks)):
            rows.append({"draw": s, "network": i, "score": r["val_accuracy"],
                         "loss": r["val_loss"], "seconds": r["train_seconds"],
                         "reference": ref[i]})
    table = pd.DataFrame(rows)
    table.to_csv(Path(args.runs_dir) / args.out, index=False)
    print(f"\n{'draw':>6} {'tau':>6} {'95% bootstrap':>16} {'by loss':>8} {'scores':>10} "
          f"{'s/network':>10}")
    for s, g in table.groupby("draw", sort=False):
        lo, hi = bootstrap_tau(g.score, g.reference, int(cfg.fidelity.bootstrap), int(s))
        print(f"{s:>6} {tau(g.score, g.reference):6.2f} [{lo:5.2f}, {hi:5.2f}] "
              f"{tau(-g.loss, g.reference):8.2f} {g.score.min():.2f}-{g.score.max():.2f} "
              f"{g.seconds.mean():10.2f}")
    return table


if __name__ == "__main__":
    main()
