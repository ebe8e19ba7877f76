"""Controllers at scale with the supernet proxy (`make bench`): MnasNet's Figure 7 for lotto.

For each controller (ppo, evolution, random, tpe, nsga2) and each seed, a `lotto search` of
`--samples` samples with `search.proxy=supernet` (one supernet, trained once and cached, shared
by every run; each network scored once, shared through the search cache). Prints per
controller the top-5 reward (distinct networks) mean +- standard error over seeds and, for PPO
and evolution, the gap to random in standard errors; draws reward vs samples (best so far,
mean and min-max band over seeds) and the Pareto fronts (accuracy vs latency) to
`--out`/bench_search.png, and writes the table to bench_search.csv.

Defaults are the issue's scale (2,000 samples, 5 seeds): hours on 2 cores. `--samples 200
--seeds 2` fits a loaded 2-core machine in tens of minutes.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

CONTROLLERS = ("ppo", "evolution", "random", "tpe", "nsga2")


def run_one(controller: str, seed: int, args: argparse.Namespace) -> pd.DataFrame:
    from lotto.config import load_config
    from lotto.experiments.search import run_search

    overrides = [f"search.controller={controller}", f"seed={seed}", "proxy.seed=0",
                 "search.proxy=supernet", f"search.samples={args.samples}",
                 f"search.batch_size={args.batch}", f"run.runs_dir={args.runs_dir}",
                 f"run.name=bench_{controller}{args.tag}_{seed}_{args.samples}", "device=cpu",
                 f"data.val_size={args.val_size}", f"supernet.steps={args.supernet_steps}",
                 "search.evolution.population=32", "search.evolution.tournament=8",
                 "search.tpe.startup=32", "search.nsga2.population=32", *args.override]
    cfg = load_config("search", args.config, overrides)
    result = run_search(cfg)
    frame = result.metrics.copy()
    frame["seed"] = seed
    return frame


def top5(frame: pd.DataFrame) -> float:
    return float(frame.sort_values("reward", ascending=False).drop_duplicates("spec")
                 .reward.head(5).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds first-seed .. first-seed + seeds - 1 (tune on other seeds than "
                    "those reported)")
    ap.add_argument("--tag", default="", help="appended to the run names (other settings)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--controllers", default=",".join(CONTROLLERS))
    ap.add_argument("--val-size", type=int, default=1000)
    ap.add_argument("--supernet-steps", type=int, default=300)
    ap.add_argument("--config", type=Path, default=None, help="a search config (e.g. a space)")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("override", nargs="*", help="extra config overrides (key=value)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    print(f"load average {os.getloadavg()[0]:.1f}; {args.samples} samples x {args.seeds} seeds")
    frames, rows = [], []
    for controller in args.controllers.split(","):
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            start = time.perf_counter()
            frame = run_one(controller, seed, args)
            frame["wall"] = time.perf_counter() - start
            frames.append(frame)
            print(f"{controller:10s} seed {seed}: top-5 {top5(frame):.4f}, best "
                  f"{frame.reward.max():.4f}, {frame.spec.nunique()} distinct, "
                  f"{frame.wall.iloc[0]:.0f} s", flush=True)
    data = pd.concat(frames, ignore_index=True)
    for controller, group in data.groupby("controller", sort=False):
        scores = [top5(g) for _, g in group.groupby("seed")]
        se = float(np.std(scores, ddof=1) / math.sqrt(len(scores))) if len(scores) > 1 else 0.0
        rows.append({"controller": controller, "seeds": len(scores),
                     "samples": args.samples, "top5_mean": float(np.mean(scores)),
                     "top5_se": se})
    table = pd.DataFrame(rows)
    rnd = table[table.controller == "random"]
    if len(rnd):
        r = rnd.iloc[0]
        table["gap_to_random_se"] = [
            (t.top5_mean - r.top5_mean) / max(math.hypot(t.top5_se, r.top5_se), 1e-12)
            for t in table.itertuples()]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "bench_search.csv", index=False)
    plot(data, out / "bench_search.png")
    print(f"figure: {out / 'bench_search.png'}")


def plot(data: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lotto.experiments.search import pareto_front

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for controller, group in data.groupby("controller", sort=False):
        curves = np.stack([g.sort_values("sample").reward.cummax().to_numpy()
                           for _, g in group.groupby("seed")])
        x = np.arange(1, curves.shape[1] + 1)
        line, = left.plot(x, curves.mean(0), label=controller)
        left.fill_between(x, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.2)
        front = pareto_front(group)
        right.step(front.latency_ms, 100 * front.val_accuracy, where="post",
                   color=line.get_color(), label=controller)
    left.set_xlabel("samples")
    left.set_ylabel("best reward so far (mean, min-max over seeds)")
    right.set_xlabel("latency (ms)")
    right.set_ylabel("supernet proxy accuracy (%)")
    right.set_title("Pareto fronts (all seeds)")
    for a in (left, right):
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
