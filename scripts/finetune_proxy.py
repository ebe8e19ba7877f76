"""Inherited weights + a short fine-tune as a search proxy (issue 18), against the same steps
from scratch, on `lotto search --fidelity N`'s networks and references.

NetAdapt ranks its proposals by a short fine-tune of truncated weights; here every fidelity
network takes its slice of a trained supernet, is fine-tuned `k` steps with the train proxy's
recipe, and is scored on the validation split. The control is the train proxy at the same `k`
from scratch. Run the fidelity run first (it trains and caches the references), then:

    PYTHONPATH=$PWD python scripts/finetune_proxy.py --runs-dir R [key=value ...] --steps 10 20

(overrides before --steps / --scratch, which take lists). Measured 2026-12-07: docs/search.md,
*Inherited weights + a short fine-tune*.

The supernet is the one `search.proxy=supernet` with the same overrides would use (trained and
cached under R when missing). Prints one row per arm: Kendall tau vs the reference (95%
bootstrap), the scores' range, seconds per network; writes R/<--out> (one row per network
and arm).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from fidelity_script import CPU, parser, references, setup
from omegaconf import OmegaConf

from lotto.experiments.fidelity import draw
from lotto.search.evaluate import proxy_network, proxy_seed
from lotto.search.fidelity import bootstrap_tau, tau
from lotto.search.supernet import Supernet, ensure_supernet, layout, make_adapt, score


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = parser("finetune_proxy.csv")
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--scratch", type=int, nargs="*", default=None,
                    help="from-scratch step counts (default: --steps plus 40)")
    args = ap.parse_intermixed_args(argv)
    cfg, space, seeds, data = setup(args, "search.proxy=supernet")
    path, meta = ensure_supernet(cfg, space, data, seed=proxy_seed(cfg), device=CPU)
    print(f"supernet {path.name}: {'cached' if meta['cached'] else 'trained'}, "
          f"{meta.get('seconds', 0):.0f} s, final loss {meta.get('final_loss', float('nan')):.3f}")
    from safetensors.torch import load_file

    net = Supernet(space, make_adapt(cfg, data), proxy_seed(cfg),
                   bool(cfg.supernet.get("nest_ds", False)))
    net.load(load_file(str(path)))

    picks = draw(space, int(cfg.fidelity.networks), int(cfg.fidelity.seed))
    specs = [space.network(ix, f"fidelity_{i}") for i, ix in enumerate(picks)]
    ref = references(cfg, space, picks, seeds, int(cfg.fidelity.seed))

    from lotto.proxy import train_spec

    seed = proxy_seed(cfg)
    scratch = args.scratch if args.scratch is not None else sorted({*args.steps, 40})
    arms = [("inherit", 0)] + [("inherit", k) for k in args.steps] + [
        ("scratch", k) for k in scratch]
    rows = []
    for i, (spec, ix) in enumerate(zip(specs, picks)):
        small = proxy_network(spec, cfg.proxy)
        where = layout(space, ix)
        for kind, k in arms:
            start = time.perf_counter()
            if kind == "inherit" and k == 0:
                r = score(net, net.adapt(spec), where, data, cfg.supernet, seed=seed, device=CPU)
                acc = r["val_accuracy"]
            else:
                state = None
                if kind == "inherit":
                    state = net.network(net.adapt(spec), where).state_dict()
                tcfg = OmegaConf.merge(cfg.train, {"iterations": f"{k}it",
                                                   "warmup": f"{max(1, round(k / 8))}it"})
                acc = train_spec(small, data, tcfg, seed=seed, device=CPU,
                                 bn_momentum=float(cfg.proxy.bn_momentum),
                                 min_output=int(cfg.proxy.min_output), state=state).val_accuracy
            rows.append({"network": i, "arm": f"{kind}-{k}", "score": float(acc),
                         "reference": ref[i], "seconds": time.perf_counter() - start})
        print(f"network {i}: " + " ".join(f"{r['arm']} {r['score']:.3f}"
                                           for r in rows if r["network"] == i), flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(Path(args.runs_dir) / args.out, index=False)
    print(f"\n{'arm':<12} {'tau':>6} {'95% bootstrap':>16} {'scores':>13} {'s/network':>10}")
    for arm, g in table.groupby("arm", sort=False):
        lo, hi = bootstrap_tau(g.score, g.reference, int(cfg.fidelity.bootstrap),
                               int(cfg.fidelity.seed))
        print(f"{arm:<12} {tau(g.score, g.reference):6.2f} [{lo:5.2f}, {hi:5.2f}]   "
              f"{g.score.min():.2f}-{g.score.max():.2f} {g.seconds.mean():10.2f}")
    return table


if __name__ == "__main__":
    main()
