"""Block-wise distillation as a weight-sharing proxy (issue 18): DNA (Li et al., CVPR 2020,
"Block-wisely Supervised Neural Architecture Search with Knowledge Distillation").

Why: every supernet tried leaves the networks that mix op types near chance, because each op
type re-encodes the features at a stage boundary and the next stage must read every encoding
(docs/search.md). Here no stage reads another candidate's output: a teacher (the space's
largest ir network, trained standalone) gives the features at every stage boundary; each
stage's candidates (their slices of the `Supernet` tensors) learn to map the teacher's features
at the stage input to the teacher's at the stage output (MSE over the target's variance, the
first channels of both as wide as the candidate); a network is scored by minus the sum of its
stages' losses on validation images (no labels), with no assembled forward pass.

Run `lotto search --fidelity N fidelity.seed=S --runs-dir R` first for each draw (it trains
and caches the references), then:

    PYTHONPATH=$PWD python scripts/blockwise_proxy.py --runs-dir R [key=value ...] \
        --steps 400 --draws 1000 2000

(overrides before the list option --draws). Prints, per draw, Kendall tau vs the reference
(95% bootstrap) and the per-stage taus; writes R/<--out> (one row per scored network).
Measured 2026-12-07: docs/search.md, *Block-wise distillation*.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from fidelity_script import CPU, parser, references, setup
from omegaconf import OmegaConf
from torch import Tensor, nn

from lotto.arch.build import build_network
from lotto.experiments.fidelity import draw
from lotto.proxy import train_spec
from lotto.search.evaluate import proxy_network, proxy_seed
from lotto.search.fidelity import bootstrap_tau, tau
from lotto.search.supernet import (
    Supernet,
    _batches,
    _call,
    _clipped_backward,
    base_choices,
    choices_layout,
    make_adapt,
)


def stage_ends(choices: Sequence[tuple]) -> list[int]:
    """Index of the last block of every stage of the network of `choices`."""
    where = choices_layout(choices)
    return [max(i for i, (s, _) in enumerate(where) if s == k) for k in range(len(choices))]


@torch.no_grad()
def teacher_features(teacher: nn.Module, ends: Sequence[int], x: Tensor) -> list[Tensor]:
    """The teacher's features after its stem and after every stage (eval mode)."""
    h = teacher.stem(x)
    out = [h]
    for i, block in enumerate(teacher.blocks):
        h = block(h)
        if i in ends:
            out.append(h)
    return out


def stage_losses(net: Supernet, choices: Sequence[tuple], feats: Sequence[Tensor],
                 train: bool = True) -> list[Tensor]:
    """Per stage, the relative MSE of the network's stage (its slice of the shared weights) run
    on the teacher's features at the stage input, against the teacher's at the stage output
    (first channels of both, as wide as the network's). `train`: BN on batch statistics."""
    spec, where = net.member(choices)
    module = net._module(spec).train(train)
    path = (module, net.params(spec, where, module), where)
    inputs = spec.block_inputs()
    losses = []
    for s in range(len(choices)):
        blocks = [i for i, (k, _) in enumerate(where) if k == s]
        y = feats[s][:, :inputs[blocks[0]]]
        for i in blocks:
            y = _call(path, f"blocks.{i}", y)
        target = feats[s + 1][:, :y.shape[1]]
        losses.append(F.mse_loss(y, target) / target.var())
    return losses


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = parser("blockwise_proxy.csv")
    ap.add_argument("--steps", type=int, default=400, help="block-wise training steps")
    ap.add_argument("--teacher-steps", type=int, default=640)
    ap.add_argument("--members", type=int, default=4, help="random networks per step")
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--score-images", type=int, default=500)
    ap.add_argument("--draws", type=int, nargs="+", default=None,
                    help="fidelity.seed of each scored draw (default: the config's)")
    args = ap.parse_intermixed_args(argv)
    cfg, space, seeds, data = setup(args)
    seed = proxy_seed(cfg)
    net = Supernet(space, make_adapt(cfg, data), seed)

    big = base_choices(space, "ir")
    start = time.perf_counter()
    trained = train_spec(proxy_network(space.build(big, "teacher"), cfg.proxy), data,
                         OmegaConf.merge(cfg.train, {"iterations": f"{args.teacher_steps}it"}),
                         seed=seed, device=CPU, bn_momentum=float(cfg.proxy.bn_momentum),
                         min_output=int(cfg.proxy.min_output), keep_state=True)
    assert trained.trained is not None
    teacher = build_network(trained.trained)
    teacher.load_state_dict(trained.state)
    teacher.eval()
    ends = stage_ends(big)
    print(f"teacher: val accuracy {trained.val_accuracy:.3f}, "
          f"{time.perf_counter() - start:.0f} s", flush=True)

    params = list(net.weights.values())
    opt = torch.optim.Adam(params, lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: 0.5 * (1 + math.cos(math.pi * it / args.steps)))
    rng = random.Random(seed)
    batches = _batches(data, int(cfg.supernet.batch_size), torch.Generator().manual_seed(seed))
    start, recent = time.perf_counter(), []
    for _ in range(args.steps):
        feats = teacher_features(teacher, ends, next(batches)[0])
        opt.zero_grad(set_to_none=True)
        for _member in range(args.members):
            loss = sum(stage_losses(net, space.decode(space.sample_indices(rng)), feats))
            _clipped_backward(loss, params, float(cfg.supernet.clip) or math.inf)
            recent = (recent + [float(loss.detach())])[-50 * args.members:]
        opt.step()
        sched.step()
    print(f"block-wise training: {time.perf_counter() - start:.0f} s, {args.steps} steps, "
          f"summed loss {sum(recent) / max(1, len(recent)):.3f}", flush=True)

    val = teacher_features(teacher, ends, data.val_x[:args.score_images])
    rows = []
    for s in args.draws or [int(cfg.fidelity.seed)]:
        picks = draw(space, int(cfg.fidelity.networks), s)
        ref = references(cfg, space, picks, seeds, s)
        for i, ix in enumerate(picks):
            begin = time.perf_counter()
            with torch.no_grad():
                losses = [float(v) for v in stage_losses(net, space.decode(ix), val)]
            rows.append({"draw": s, "network": i, "score": -sum(losses),
                         "seconds": time.perf_counter() - begin, "reference": ref[i],
                         **{f"stage{k}": v for k, v in enumerate(losses)}})
    table = pd.DataFrame(rows)
    table.to_csv(Path(args.runs_dir) / args.out, index=False)
    stages = [c for c in table.columns if c.startswith("stage")]
    print(f"\n{'draw':>6} {'tau':>6} {'95% bootstrap':>16} {'ms/network':>11}  per-stage tau")
    for s, g in table.groupby("draw", sort=False):
        lo, hi = bootstrap_tau(g.score, g.reference, int(cfg.fidelity.bootstrap), int(s))
        per = " ".join(f"{tau(-g[c], g.reference):5.2f}" for c in stages)
        print(f"{s:>6} {tau(g.score, g.reference):6.2f} [{lo:5.2f}, {hi:5.2f}] "
              f"{1000 * g.seconds.mean():11.0f}  {per}")
    return table


if __name__ == "__main__":
    main()
