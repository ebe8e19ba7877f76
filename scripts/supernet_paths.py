"""Does the supernet's training loss fall? One path per step through the shared weights, the
loss printed every 20 steps (issue 18's op-axis diagnosis). Paths: `uniform` (a new random
network of the rung's space each step, SPOS) or `fixed` (cycling through `--fixed N` networks
drawn once). Constant learning rate (no decay: a plateau is not hidden by the schedule).

    PYTHONPATH=$PWD python scripts/supernet_paths.py op 2000 --lr 0.001 supernet.nest_ds=false
"""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from supernet_ladder import space_for

from lotto.config import load_config
from lotto.search.space import parse_space, space_config
from lotto.search.supernet import Supernet, _batches, make_adapt
from lotto.tasks import shared_data

CPU = torch.device("cpu")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("rung", help="a rung of supernet_ladder.py (one, op, all, ...)")
    ap.add_argument("steps", type=int)
    ap.add_argument("--paths", choices=("uniform", "fixed"), default="uniform")
    ap.add_argument("--fixed", type=int, default=1)
    ap.add_argument("--opt", choices=("adam", "sgd"), default="adam")
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--clip", type=float, default=0.0, help="gradient norm cap (0: off)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()
    torch.set_num_threads(1)
    cfg = load_config("search", None, ["device=cpu", "data.name=fashion-mnist",
                                        "data.val_size=1000", "data.subset=10000",
                                        *args.overrides])
    cfg.space = OmegaConf.create(space_for(args.rung))
    space = parse_space(space_config(cfg.space), "space")
    data = shared_data(cfg.data, CPU)
    net = Supernet(space, make_adapt(cfg, data), 0, bool(cfg.supernet.nest_ds))
    params = list(net.weights.values())
    opt = (torch.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True)
           if args.opt == "sgd" else torch.optim.Adam(params, lr=args.lr))
    rng, fixed_rng = random.Random(0), random.Random(5)
    fixed = [space.decode(space.sample_indices(fixed_rng)) for _ in range(args.fixed)]
    batches = _batches(data, int(cfg.supernet.batch_size), torch.Generator().manual_seed(0))
    losses: list[float] = []
    for step in range(args.steps):
        x, y = next(batches)
        choices = (space.decode(space.sample_indices(rng)) if args.paths == "uniform"
                   else fixed[step % len(fixed)])
        opt.zero_grad()
        loss = F.cross_entropy(net.forward(choices, x), y)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], args.clip)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 20 == 19 or step == args.steps - 1:
            print(step + 1, f"loss {sum(losses[-20:]) / len(losses[-20:]):.3f}", flush=True)


if __name__ == "__main__":
    main()
