"""Probe (issue 18): does summing the op types at stage boundaries lift the op axis?

The ladder (`scripts/supernet_ladder.py`) found that single-path training over op types
{conv, ds, ir} sits at chance: each op type re-encodes the features with weights of its own,
and the next stage must read every encoding. Bender et al. (ICML 2018, "Understanding and
Simplifying One-Shot Architecture Search") train a one-shot model whose candidate ops run side
by side and are summed, with path dropout that rises over training, so every op learns to
write into one shared feature space; a network is then scored alone, single path.

Here, on the ladder's op rung (ops {conv, ds, ir}, every other decision fixed) or several axes
opened (`--rung op+skip`): each step trains the space's largest network with, per stage, the
op types summed (`Supernet.forward_summed`, path dropout `keep_sets` down to `--keep-end`);
unlike `supernet.rule=oneshot` no other decision is drawn. Networks are scored as the proxy
does (`score`: inherited weights, BN recalibrated) and, with `--standalone 1`, trained alone.

    PYTHONPATH=$PWD python scripts/supernet_oneshot.py --steps 300 --nets 3
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent))
from supernet_ladder import ONE, OPEN, space_for, standalone  # noqa: E402

from lotto.config import load_config  # noqa: E402
from lotto.search.space import parse_space, space_config  # noqa: E402
from lotto.search.supernet import Supernet, keep_sets, make_adapt, score  # noqa: E402
from lotto.tasks import shared_data  # noqa: E402

CPU = torch.device("cpu")
OP = 5  # index of the op decision in a stage's choices


def train_oneshot(net: Supernet, data, cfg, steps: int, keep_end: float, seed: int) -> dict:
    base = net.largest
    params = list(net.weights.values())
    opt = torch.optim.Adam(params, lr=float(cfg.lr))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: 0.5 * (1 + math.cos(math.pi * it / steps)))
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    losses, start = [], time.perf_counter()

    def batches():
        while True:
            yield from data.batches(torch.randperm(len(data.train_y), generator=gen),
                                    int(cfg.batch_size))

    it = batches()
    for step in range(steps):
        x, y = next(it)
        keep = keep_sets(net.space, step, steps, keep_end, rng)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net.forward_summed(base, keep, x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, float(cfg.get("clip", 0.0)) or 1e9)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return {"seconds": time.perf_counter() - start,
            "final_loss": sum(losses[-20:]) / len(losses[-20:])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rung", default="op", help="a ladder rung, or axes joined by + (op+skip)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--nets", type=int, default=3)
    ap.add_argument("--keep-end", type=float, default=0.34)
    ap.add_argument("--standalone", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[])
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config("search", None, [
        "device=cpu", "data.name=fashion-mnist", "data.val_size=1000", "data.subset=10000",
        f"supernet.steps={args.steps}", f"supernet.lr={args.lr}", *args.set])
    if "+" in args.rung:  # several axes opened together, the rest fixed as the ladder's
        opened = {k: v for a in args.rung.split("+") for k, v in OPEN[a].items()}
        cfg.space = OmegaConf.create({**space_config("mnasnet"), **ONE, **opened})
    else:
        cfg.space = OmegaConf.create(space_for(args.rung))
    space = parse_space(space_config(cfg.space), "space")
    data = shared_data(cfg.data, CPU)
    net = Supernet(space, make_adapt(cfg, data), 0, bool(cfg.supernet.nest_ds))
    stats = train_oneshot(net, data, cfg.supernet, args.steps, args.keep_end, 0)
    print(json.dumps({"rung": args.rung, "rule": "oneshot", **stats}), flush=True)
    rng = random.Random(7)  # the ladder's draw
    for i in range(args.nets):
        choices = space.decode(space.sample_indices(rng))
        spec, where = net.member(choices)
        s = score(net, spec, where, data, cfg.supernet, seed=0, device=CPU)
        row = {"net": i, "ops": [c[OP] for c in choices], "supernet": round(s["val_accuracy"], 3)}
        if args.standalone:
            res = standalone(space, choices, data, cfg, args.steps, args.lr)
            row["standalone"] = round(res.val_accuracy, 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
