"""Supernet ablation ladder (issue 18): one network first, then one axis opened at a time.

Per rung: a supernet over the space is trained with the supernet code path; random networks of
the space are scored with inherited weights + BN recalibration, and each is also trained
standalone (lotto.proxy.train_spec) with the same steps, batch, lr and schedule. For one
network the two must agree within a few points.

    PYTHONPATH=$PWD python scripts/supernet_ladder.py --steps 300 --rungs one,kernel
    PYTHONPATH=$PWD python scripts/supernet_ladder.py --rungs op --rule oneshot --standalone 0
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
from omegaconf import OmegaConf

from lotto.arch import scale_width
from lotto.arch.build import build_network
from lotto.config import load_config
from lotto.proxy import train_spec
from lotto.search.space import parse_space, space_config
from lotto.search.supernet import (
    Supernet,
    make_adapt,
    recalibrate,
    score,
    train_supernet,
)
from lotto.tasks import shared_data
from lotto.train import evaluate

CPU = torch.device("cpu")
ONE = {"kernels": [3], "width_factors": [1.0], "repeat_deltas": [0], "expansions": [6],
       "se": [False], "ops": ["ir"], "skips": ["identity"]}
OPEN = {"kernel": {"kernels": [3, 5]}, "width": {"width_factors": [0.75, 1.0, 1.25]},
        "repeats": {"repeat_deltas": [-1, 0, 1]}, "expansion": {"expansions": [3, 6]},
        "se": {"se": [False, True]}, "op": {"ops": ["conv", "ds", "ir"]},
        "skip": {"skips": ["pool", "identity", "none"]},
        "op_ds_ir": {"ops": ["ds", "ir"]}, "op_conv_ir": {"ops": ["conv", "ir"]},
        "op_conv_ds": {"ops": ["conv", "ds"]},
        "all": {}}


def space_for(rung: str) -> dict:
    """The rung's space: `all`, or the fixed network with the named axes opened (`op+skip`)."""
    base = space_config("mnasnet")
    if rung == "all":
        return base
    opened = {k: v for axis in rung.split("+") for k, v in OPEN.get(axis, {}).items()}
    return {**base, **ONE, **opened}


def standalone(space, choices, data, cfg, steps: int, lr: float, keep_state: bool = False):
    """The network of `choices` trained alone with the supernet's steps, batch, lr and weight
    decay (no warm-up): the same spec the supernet trains (width_mult, then the adaptation)."""
    tcfg = OmegaConf.merge(cfg.train, {
        "iterations": f"{steps}it", "lr": lr, "warmup": "0it",
        "weight_decay": float(cfg.supernet.weight_decay),
        "batch_size": int(cfg.supernet.batch_size)})
    full = space.build(choices, "x")
    return train_spec(full if cfg.proxy.width_mult == 1 else
                      scale_width(full, float(cfg.proxy.width_mult)), data, tcfg,
                      seed=0, device=CPU, bn_momentum=0.1,
                      min_output=int(cfg.proxy.min_output), keep_state=keep_state)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rungs", default="one")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--nets", type=int, default=3)
    ap.add_argument("--rule", default="uniform")
    ap.add_argument("--standalone", type=int, default=1, help="also train each net standalone")
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for rung in args.rungs.split(","):
        cfg = load_config("search", None, [
            "device=cpu", "data.name=fashion-mnist", "data.val_size=1000", "data.subset=10000",
            f"supernet.steps={args.steps}", f"supernet.lr={args.lr}",
            f"supernet.rule={args.rule}", *args.set])
        cfg.space = OmegaConf.create(space_for(rung))
        space = parse_space(space_config(cfg.space), "space")
        data = shared_data(cfg.data, CPU)
        net = Supernet(space, make_adapt(cfg, data), 0, bool(cfg.supernet.nest_ds))
        t = time.perf_counter()
        stats = train_supernet(net, data, cfg.supernet, seed=0, device=CPU)
        rng = random.Random(7)
        rows = []
        for i in range(args.nets):
            choices = space.decode(space.sample_indices(rng))
            spec, where = net.member(choices)
            s = score(net, spec, where, data, cfg.supernet, seed=0, device=CPU)
            row = {"rung": rung, "net": i, "supernet": round(s["val_accuracy"], 3),
                   "score_s": round(s["train_seconds"], 3)}
            if args.standalone:
                res = standalone(space, choices, data, cfg, args.steps, args.lr, keep_state=True)
                row["standalone"] = round(res.val_accuracy, 3)
                m = build_network(res.trained)
                m.load_state_dict(res.state)
                recalibrate(m, data, int(cfg.supernet.recal_batches),
                            int(cfg.supernet.recal_batch_size), 0, CPU)
                row["standalone_recal"] = round(evaluate(m, data.val_x, data.val_y)[1], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
        print(json.dumps({"rung": rung, "train_s": round(time.perf_counter() - t, 1),
                          "final_loss": round(stats["final_loss"], 3)}), flush=True)


if __name__ == "__main__":
    main()
