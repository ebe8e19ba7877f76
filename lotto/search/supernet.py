"""A weight-sharing supernet over a factorised space: the `supernet` proxy of `lotto search`.

One set of weights holds every network of the space (SPOS, Guo et al. 2020; BigNAS, Yu et al.
2020; Once-for-All, Cai et al. 2020). Per layer position (stage s, repeat r) and block type
(ir / ds / conv) it keeps the largest tensor any network of the space needs there (largest input
width, expansion, output width, kernel, SE); a network takes its slice: the first channels of
every dimension and the centre crop of the kernel. A layer position beyond a network's repeat
count is skipped (the first r of the stage are used), as in BigNAS's depth choice.

Training is single-path: each step trains one or more networks of the space on the same batch
and updates the shared weights. Rules (`supernet.rule`):

- `sandwich` (BigNAS / US-Nets): the largest and the smallest network plus `supernet.random`
  random ones per step, gradients summed; with `supernet.distill` the others learn from the
  largest's soft predictions (in-place distillation).
- `sandwich_ops`: the sandwich on one op path per step: an op type drawn per stage, and the
  largest, the smallest and the `random` networks all take it. Why: under `sandwich` the two
  ends keep one op path each (all regular conv, all ds) and the supernet scores almost only
  networks on them (docs/search.md, *Controllers at scale*); this trains every op path with
  the sandwich's ends on it.
- `uniform` (SPOS): one network drawn uniformly per step.
- `progressive` (Once-for-All's progressive shrinking, with BigNAS's sandwich inside a phase):
  training runs in phases (`supernet.phases`, shares of the steps `supernet.phase_share`);
  phase 0 trains only the base network (every choice at its largest, op `supernet.base_op`,
  identity skips); each later phase opens more decision axes (default: kernel, then repeats,
  then width / expansion / SE, then op and skip last). A step of a phase trains the base
  network plus `supernet.random` networks that draw the opened axes uniformly (the others at
  the base's), distilled from the base's soft predictions with `supernet.distill`.
- `oneshot` (Bender et al., ICML 2018, "Understanding and Simplifying One-Shot Architecture
  Search"): one network drawn uniformly per step for every decision but the op type; each
  stage runs once per op type it offers and the stage outputs are summed, with path dropout:
  each op type is kept with a probability falling linearly from 1 to `supernet.keep_end` over
  training (at least one kept per stage; at 0 training ends single-path, as networks are
  scored). Why: single-path training over op types sits at chance (docs/search.md: each op
  type re-encodes the features with weights of its own and the next stage must read every
  encoding); summing makes every op type write into one feature space.

A network is scored by building it as a plain `MobileNet` (`lotto.arch.build`), copying in its
slice of the weights, recalibrating its BatchNorm statistics on a few training batches (the
shared running statistics fit no one network: reset, then momentum None, a cumulative average)
and evaluating it on the validation split: no gradient step, a fraction of a second.

The supernet of one (space, data, proxy, supernet section, seed) is trained once and cached
under `<runs_dir>/search/.supernet/<key>.safetensors` with its config `<key>.json`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.func import functional_call

from lotto.arch import ArchSpec
from lotto.arch.build import build_network
from lotto.data import Data
from lotto.errors import LottoError
from lotto.search.space import Space, space_config

RULES = ("sandwich", "sandwich_ops", "uniform", "progressive", "oneshot")
AXES = ("width", "repeats", "kernel", "expansion", "se", "op", "skip")  # Stage.choices() order


# ---- which supernet tensor a network parameter is a slice of --------------------------------


def layout(space: Space, indices: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """(stage, repeat) of every block of the network `space.network(indices)`."""
    return choices_layout(space.decode(indices))


def choices_layout(choices: Sequence[tuple]) -> tuple[tuple[int, int], ...]:
    """(stage, repeat) of every block of the network of decoded `choices`."""
    return tuple((s, r) for s, c in enumerate(choices) for r in range(int(c[1])))


def tensor_key(name: str, spec: ArchSpec, where: Sequence[tuple[int, int]],
               nest_ds: bool = False) -> str:
    """The supernet tensor behind parameter `name` of `spec`'s network: per block position and
    block type (an ir's depthwise conv shares nothing with a ds's); stem, head and classifier
    are shared by every network. With `nest_ds` a ds block is an ir block without its
    expansion conv: its depthwise conv, SE and projection are slices of the ir's (the first
    input-width channels), so ds and ir outputs are made by the same projection."""
    if not name.startswith("blocks."):
        return name
    _, index, rest = name.split(".", 2)
    i = int(index)
    s, r = where[i]
    kind = spec.blocks[i].type
    if nest_ds and kind == "ds":
        kind = "ir"
    return f"s{s}.r{r}.{kind}.{rest}"


def take(weight: Tensor, shape: Sequence[int]) -> Tensor:
    """The slice of `weight` of `shape`: first entries of every dimension, the centre of a
    conv kernel (dims 2, 3 of a 4-d weight). A differentiable view."""
    if len(shape) != weight.dim() or any(n > m for n, m in zip(shape, weight.shape)):
        raise LottoError(f"network tensor {tuple(shape)} does not fit the supernet's "
                         f"{tuple(weight.shape)}")
    index: list[slice] = []
    for d, (n, m) in enumerate(zip(shape, weight.shape)):
        if weight.dim() == 4 and d >= 2:
            lo = (m - n) // 2
            index.append(slice(lo, lo + n))
        else:
            index.append(slice(0, n))
    return weight[tuple(index)]


# ---- the supernet ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Adapt:
    """How a space network becomes the network that is trained (the proxy's transformation)."""

    width_mult: float
    min_output: int
    in_channels: int
    num_classes: int
    image_size: int

    def __call__(self, spec: ArchSpec) -> ArchSpec:
        from lotto.arch import adapt_to_resolution, scale_width

        if self.width_mult != 1.0:
            spec = scale_width(spec, self.width_mult)
        spec = spec.replace(in_channels=self.in_channels, num_classes=self.num_classes)
        return adapt_to_resolution(spec, self.image_size, min_output=self.min_output)


def extremes(space: Space) -> tuple[list[list[tuple]], list[tuple], list[tuple]]:
    """Per block type, the network with every choice at its largest (the supernet's shapes come
    from these), and the largest and smallest networks of the space (the sandwich's ends)."""
    ops = sorted({o for s in space.stages for o in s.ops})
    big = []
    for op in ops:
        big.append([(max(s.widths), max(s.repeats), max(s.kernels), max(s.expansions),
                     any(s.se), op if op in s.ops else s.ops[0], s.skips[0])
                    for s in space.stages])

    def end(pick: Any, op_key: Any) -> list[tuple]:
        out = []
        for s in space.stages:
            op = op_key(s.ops)
            out.append((pick(s.widths), pick(s.repeats), pick(s.kernels), pick(s.expansions),
                        pick(s.se), op, s.skips[0]))
        return out

    rank = {"conv": 2, "ir": 1, "ds": 0}  # MACs of a block type, largest first
    largest = end(max, lambda o: max(o, key=rank.get))
    smallest = end(min, lambda o: min(o, key=rank.get))
    return big, largest, smallest


def base_choices(space: Space, op: str = "ir") -> list[tuple]:
    """Progressive shrinking's first network: per stage every nested choice at its largest
    (width, repeats, kernel, expansion, SE), op `op` where the stage offers it (else its first
    op) and the identity skip where offered (else the stage's first skip)."""
    out = []
    for s in space.stages:
        out.append((max(s.widths), max(s.repeats), max(s.kernels), max(s.expansions),
                    max(s.se), op if op in s.ops else s.ops[0],
                    "identity" if "identity" in s.skips else s.skips[0]))
    return out


def phase_at(step: int, steps: int, shares: Sequence[float]) -> int:
    """The phase of training step `step` (0-based) of `steps` split by `shares` (sum 1)."""
    edge = 0.0
    for k, share in enumerate(shares):
        edge += share * steps
        if step < round(edge):
            return k
    return len(shares) - 1


def opened_axes(cfg: DictConfig, phase: int) -> frozenset[str]:
    """The decision axes drawn at random in `phase`: those of phases 0..phase."""
    return frozenset(a for group in list(cfg.phases)[:phase + 1] for a in group)


def draw_open(space: Space, base: Sequence[tuple], opened: frozenset[str],
              rng: random.Random) -> list[tuple]:
    """A network of the space with the `opened` axes drawn uniformly, the others the base's."""
    out = []
    for stage, b in zip(space.stages, base):
        c = list(b)
        for j, (axis, options) in enumerate(stage.choices()):
            if axis in opened:
                c[j] = rng.choice(options)
        out.append(tuple(c))
    return out


def arms_for_step(net: Supernet, cfg: DictConfig, step: int, rng: random.Random
                  ) -> list[list[tuple]]:
    """The networks trained at `step` (the first one is the teacher under distillation)."""
    if cfg.rule == "sandwich":
        return [net.largest, net.smallest] + [net.space.decode(net.space.sample_indices(rng))
                                              for _ in range(int(cfg.random))]
    if cfg.rule == "sandwich_ops":
        ops = [rng.choice(stage.ops) for stage in net.space.stages]

        def on_path(choices: list[tuple]) -> list[tuple]:
            return [with_op(c, op) for c, op in zip(choices, ops)]

        return [on_path(net.largest), on_path(net.smallest)] + [
            on_path(net.space.decode(net.space.sample_indices(rng)))
            for _ in range(int(cfg.random))]
    if cfg.rule in ("uniform", "oneshot"):
        return [net.space.decode(net.space.sample_indices(rng))]
    base = base_choices(net.space, str(cfg.base_op))
    opened = opened_axes(cfg, phase_at(step, int(cfg.steps), list(cfg.phase_share)))
    if not opened:
        return [base]
    return [base] + [draw_open(net.space, base, opened, rng) for _ in range(int(cfg.random))]


_OP = AXES.index("op")  # position of the op type in a stage's choices


def with_op(choice: tuple, op: str) -> tuple:
    """A stage's choices with its op type replaced."""
    return choice[:_OP] + (op,) + choice[_OP + 1:]


def _call(path: tuple[nn.Module, dict[str, Tensor], Any], name: str, x: Tensor) -> Tensor:
    """Submodule `name` of a member network on `x`, with its slice of the shared weights."""
    module, params = path[0], path[1]
    prefix = name + "."
    own = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    return functional_call(module.get_submodule(name), own, (x,))


def keep_sets(space: Space, step: int, steps: int, keep_end: float, rng: random.Random
              ) -> list[set[str]]:
    """`oneshot` path dropout at `step`: per stage the op types kept, each with probability
    falling linearly from 1 (first step) to `keep_end` (last step), at least one per stage."""
    p = 1.0 - (1.0 - keep_end) * step / max(1, steps - 1)
    out = []
    for stage in space.stages:
        kept = {op for op in stage.ops if rng.random() < p}
        out.append(kept or {rng.choice(stage.ops)})
    return out


class Supernet:
    """The shared weights of a space (as seen through `adapt`) and the sliced networks."""

    def __init__(self, space: Space, adapt: Adapt, seed: int = 0, nest_ds: bool = False):
        self.space, self.adapt, self.nest_ds = space, adapt, nest_ds
        big, self.largest, self.smallest = extremes(space)
        torch.manual_seed(seed)
        weights: dict[str, Tensor] = {}
        for choices in big:
            spec = adapt(space.build(choices, "supernet"))
            net = build_network(spec)
            where = choices_layout(choices)
            for name, p in net.named_parameters():
                key = tensor_key(name, spec, where, nest_ds)
                old = weights.get(key)
                if old is None:
                    weights[key] = p.detach().clone()
                elif tuple(old.shape) != tuple(p.shape):
                    grown = torch.zeros(torch.Size(max(a, b) for a, b in zip(old.shape, p.shape)))
                    grown[tuple(slice(0, n) for n in p.shape)] = p.detach()
                    grown[tuple(slice(0, n) for n in old.shape)] = old
                    weights[key] = grown
        self.weights = {k: nn.Parameter(v) for k, v in weights.items()}
        self._nets: dict[str, nn.Module] = {}
        self._scored: dict[tuple, nn.Module] = {}  # scoring's Block modules

    # a network of the space: its spec, module and parameter -> supernet tensor map
    def member(self, choices: Sequence[tuple]) -> tuple[ArchSpec, list[tuple[int, int]]]:
        return self.adapt(self.space.build(choices, "member")), list(choices_layout(choices))

    def _module(self, spec: ArchSpec) -> nn.Module:
        from lotto.search.evaluate import spec_key

        key = spec_key(spec)
        net = self._nets.get(key)
        if net is None:
            if len(self._nets) > 256:
                self._nets.clear()
            net = self._nets[key] = build_network(spec)
        return net

    def _scoring_module(self, spec: ArchSpec) -> nn.Module:
        """A network of `spec` for scoring, its blocks reused from earlier scored networks:
        one module per (position, block, input width, BN and SE settings), so two positions
        never share one. Apart from the training path's modules (scoring changes BN momentum
        and statistics); every parameter is overwritten and every BN statistic recalibrated
        before use."""
        from lotto.arch.build import Block, MobileNet

        inputs = spec.block_inputs()
        blocks = []
        for i, (b, cin) in enumerate(zip(spec.blocks, inputs)):
            key = (i, b, cin, spec.bn_eps, spec.bn_momentum, spec.se_rule, spec.se_gate)
            block = self._scored.get(key)
            if block is None:
                if len(self._scored) > 4096:
                    self._scored.clear()
                block = self._scored[key] = Block(spec, i)
            blocks.append(block)
        return MobileNet(spec, blocks)

    def params(self, spec: ArchSpec, where: Sequence[tuple[int, int]], net: nn.Module
               ) -> dict[str, Tensor]:
        out = {}
        for name, p in net.named_parameters():
            key = tensor_key(name, spec, where, self.nest_ds)
            if key not in self.weights:
                raise LottoError(f"the supernet has no tensor {key} (not a network of its space)")
            out[name] = take(self.weights[key], p.shape)
        return out

    def forward(self, choices: Sequence[tuple], x: Tensor) -> Tensor:
        """Logits of one network on `x`, through the shared weights (gradients reach them)."""
        spec, where = self.member(choices)
        net = self._module(spec).train()
        return functional_call(net, self.params(spec, where, net), (x,))

    def forward_summed(self, choices: Sequence[tuple], keep: Sequence[set[str]], x: Tensor
                       ) -> Tensor:
        """Logits of the one-shot model around `choices`: per stage s, the sum over the op
        types in `keep[s]` of that stage's blocks (built with that op, every other decision as
        `choices`) applied to the stage's input. With keep[s] = {choices[s]'s op} for every s
        it is `forward(choices, x)`."""
        paths = {}
        for op in sorted(set().union(*keep)):  # one member per op type: stages offering it
            member = [with_op(c, op) if op in stage.ops else c
                      for c, stage in zip(choices, self.space.stages)]
            spec, where = self.member(member)
            module = self._module(spec).train()
            paths[op] = (module, self.params(spec, where, module), where)
        first = paths[min(paths)]
        h = _call(first, "stem", x)
        for s, ops in enumerate(keep):
            outs = []
            for op in sorted(ops):
                y = h
                for i, (stage, _) in enumerate(paths[op][2]):
                    if stage == s:
                        y = _call(paths[op], f"blocks.{i}", y)
                outs.append(y)
            h = outs[0] if len(outs) == 1 else torch.stack(outs).sum(0)
        module = first[0]
        if module.head is not None:
            h = _call(first, "head", h)
        h = torch.flatten(module.pool(h), 1)
        if module.hidden is not None:
            h = _call(first, "hidden", h)
        return _call(first, "classifier", module.dropout(h))

    def network(self, spec: ArchSpec, where: Sequence[tuple[int, int]], reuse: bool = False
                ) -> nn.Module:
        """A standalone network (already adapted `spec`) holding its slice of the weights.
        With `reuse` its blocks are modules built for earlier networks (`_scoring_module`)."""
        net = self._scoring_module(spec) if reuse else build_network(spec)
        with torch.no_grad():
            for name, value in self.params(spec, where, net).items():
                net.get_parameter(name).copy_(value)
        return net

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().contiguous() for k, v in self.weights.items()}

    def load(self, tensors: dict[str, Tensor]) -> None:
        if set(tensors) != set(self.weights) or any(
                tuple(tensors[k].shape) != tuple(v.shape) for k, v in self.weights.items()):
            raise LottoError("supernet weights do not fit this space; delete them to retrain")
        with torch.no_grad():
            for k, v in self.weights.items():
                v.copy_(tensors[k])


# ---- training -------------------------------------------------------------------------------


def check_config(cfg: DictConfig) -> None:
    """The `supernet:` section, every key checked (a bad one is one line, exit 2)."""
    from lotto.config import check

    check(cfg.rule in RULES, "supernet.rule", f"{cfg.rule!r}: choose {' or '.join(RULES)}")
    check(int(cfg.steps) >= 1, "supernet.steps", "must be >= 1")
    check(int(cfg.random) >= 0, "supernet.random", "must be >= 0")
    check(int(cfg.batch_size) >= 1, "supernet.batch_size", "must be >= 1")
    check(float(cfg.lr) > 0, "supernet.lr", "must be > 0")
    check(float(cfg.get("clip", 0.0)) >= 0, "supernet.clip", "must be >= 0 (0 = off)")
    check(0.0 <= float(cfg.get("keep_end", 0.0)) <= 1.0, "supernet.keep_end",
          "must be in [0, 1]")
    check(int(cfg.recal_batches) >= 1, "supernet.recal_batches", "must be >= 1")
    check(int(cfg.recal_batch_size) >= 1, "supernet.recal_batch_size", "must be >= 1")
    check(cfg.get("score_images") is None or int(cfg.score_images) >= 1,
          "supernet.score_images", "must be >= 1 (null = the whole validation split)")
    if cfg.rule != "progressive":
        return
    from lotto.search.space import OPS

    phases = cfg.get("phases")
    check(phases is not None and len(phases) >= 1, "supernet.phases",
          "a list of phases, each a list of axes opened in it")
    named = [str(a) for group in phases for a in group]
    bad = sorted(set(named) - set(AXES))
    check(not bad, "supernet.phases", f"unknown axis {', '.join(bad)}: choose from "
          f"{', '.join(AXES)}")
    check(len(named) == len(set(named)), "supernet.phases", "an axis is opened twice")
    shares = [float(x) for x in cfg.get("phase_share") or []]
    check(len(shares) == len(phases) and all(x > 0 for x in shares)
          and abs(sum(shares) - 1) < 1e-6, "supernet.phase_share",
          f"{shares}: one share > 0 per phase ({len(phases)}), summing to 1")
    check(str(cfg.get("base_op")) in OPS, "supernet.base_op",
          f"{cfg.get('base_op')!r}: choose from {', '.join(OPS)}")


def _batches(data: Data, batch_size: int, gen: torch.Generator):
    while True:
        order = torch.randperm(len(data.train_y), generator=gen)
        yield from data.batches(order, batch_size)


def _clipped_backward(loss: Tensor, params: list[nn.Parameter], clip: float) -> None:
    """Add the gradient of one network's `loss` to `params`' .grad, its norm capped at `clip`."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    norm = sum(float(g.pow(2).sum()) for g in grads if g is not None) ** 0.5
    scale = min(1.0, clip / (norm + 1e-12))
    for p, g in zip(params, grads):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g * scale
        else:
            p.grad.add_(g, alpha=scale)


def train_supernet(net: Supernet, data: Data, cfg: DictConfig, *, seed: int,
                   device: torch.device, progress: Any = None,
                   extra_loss: Callable[[int, Tensor, Tensor], Tensor | None] | None = None
                   ) -> dict[str, Any]:
    """Train the shared weights for `cfg.steps` steps (Adam, cosine decay); returns stats.

    `extra_loss(step, x, y)`: a term added to each step after its networks (clipped like
    each of them), e.g. the landmark ranking term of `scripts/landmark_supernet.py`."""
    for w in net.weights.values():
        w.data = w.data.to(device)
    opt = torch.optim.Adam(list(net.weights.values()), lr=float(cfg.lr),
                           weight_decay=float(cfg.get("weight_decay", 0.0)))
    steps = int(cfg.steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: 0.5 * (1 + math.cos(math.pi * it / steps)))
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    batches = _batches(data, int(cfg.batch_size), gen)
    start, losses = time.perf_counter(), []
    bar = progress.add_task("supernet", total=steps) if progress is not None else None
    distill = cfg.rule in ("sandwich", "sandwich_ops", "progressive") and bool(cfg.distill)
    params = list(net.weights.values())
    clip = float(cfg.get("clip", 0.0))

    def backward(loss: Tensor) -> None:
        if clip > 0:
            _clipped_backward(loss, params, clip)
        else:
            loss.backward()

    for step in range(steps):
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        opt.zero_grad(set_to_none=True)
        arms = arms_for_step(net, cfg, step, rng)
        soft = None
        total = 0.0
        for k, choices in enumerate(arms):
            if cfg.rule == "oneshot":
                keep = keep_sets(net.space, step, steps, float(cfg.keep_end), rng)
                out = net.forward_summed(choices, keep, x)
            else:
                out = net.forward(choices, x)
            if k > 0 and soft is not None:
                loss = F.kl_div(F.log_softmax(out, 1), soft, reduction="batchmean")
            else:
                loss = F.cross_entropy(out, y)
                if distill:
                    soft = F.softmax(out.detach(), 1)
            if not torch.isfinite(loss):
                raise LottoError("supernet training diverged (NaN/inf loss); lower supernet.lr")
            backward(loss)
            total += float(loss.detach())
        extra = extra_loss(step, x, y) if extra_loss is not None else None
        if extra is not None and extra.requires_grad:
            backward(extra)
        opt.step()
        sched.step()
        losses.append(total / len(arms))
        if bar is not None:
            progress.advance(bar)
    if bar is not None:
        progress.remove_task(bar)
    for w in net.weights.values():
        w.data = w.data.to("cpu")
    return {"seconds": time.perf_counter() - start, "steps": steps,
            "final_loss": float(sum(losses[-20:]) / len(losses[-20:]))}


# ---- scoring one network ----------------------------------------------------------------------


@torch.no_grad()
def recalibrate(model: nn.Module, data: Data, batches: int, batch_size: int, seed: int,
                device: torch.device) -> None:
    """BN running statistics of `model` from `batches` training batches: reset, then a
    cumulative average (momentum None), as BigNAS / Once-for-All do before scoring."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data.train_y), generator=gen)
    for x, _ in data.batches(order, batch_size, count=batches):
        model(x.to(device))


def score(net: Supernet, spec: ArchSpec, where: Sequence[tuple[int, int]], data: Data,
          cfg: DictConfig, *, seed: int, device: torch.device, reuse: bool = True
          ) -> dict[str, float]:
    """Validation accuracy / loss of one network with inherited weights, BN recalibrated
    (`reuse`: assembled from block modules built for earlier networks, `Supernet.network`)."""
    from lotto.train import evaluate

    start = time.perf_counter()
    model = net.network(spec, where, reuse=reuse).to(device)
    recalibrate(model, data, int(cfg.recal_batches), int(cfg.recal_batch_size), seed, device)
    val_x, val_y = data.val_x, data.val_y
    n = cfg.get("score_images")
    if n is not None:  # the first n validation images only
        if not isinstance(val_x, Tensor):
            raise LottoError("supernet.score_images needs the validation split in memory "
                             "(data.stream=false)")
        val_x, val_y = val_x[:int(n)], val_y[:int(n)]
    loss, acc = evaluate(model, val_x.to(device) if isinstance(val_x, Tensor) else val_x,
                         val_y.to(device))
    return {"val_accuracy": float(acc), "val_loss": float(loss),
            "train_seconds": time.perf_counter() - start,
            "proxy_params": spec.params(), "proxy_macs": spec.macs()}


# ---- the cache: one trained supernet per (space, data, proxy, supernet section, seed) ------


def supernet_key(cfg: DictConfig, seed: int) -> str:
    payload = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "supernet")}
    payload["space"] = space_config(cfg.space)  # a named space hashes as its definition
    payload["proxy"] = {k: OmegaConf.to_object(cfg.proxy)[k] for k in ("width_mult", "min_output")}
    payload["data"].pop("workers", None)
    for k in ("recal_batches", "recal_batch_size", "score_images"):  # scoring: same weights
        payload["supernet"].pop(k, None)
    if payload["supernet"].get("rule") != "oneshot":  # supernets cached before it existed
        payload["supernet"].pop("keep_end", None)
    payload["seed"] = seed
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def supernet_path(cfg: DictConfig, seed: int) -> Path:
    return (Path(cfg.run.runs_dir).expanduser() / "search" / ".supernet"
            / f"{supernet_key(cfg, seed)}.safetensors")


def make_adapt(cfg: DictConfig, data: Data) -> Adapt:
    return Adapt(float(cfg.proxy.width_mult), int(cfg.proxy.min_output), data.in_channels,
                 data.num_classes, data.image_size)


def ensure_supernet(cfg: DictConfig, space: Space, data: Data, *, seed: int,
                    device: torch.device, progress: Any = None) -> tuple[Path, dict[str, Any]]:
    """The trained supernet's weights file: from the cache, or trained now and cached (weights
    first, then the config JSON that marks it complete)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from lotto.files import replace_atomically

    path = supernet_path(cfg, seed)
    meta_path = path.with_suffix(".json")
    net = Supernet(space, make_adapt(cfg, data), seed, bool(cfg.supernet.get("nest_ds", False)))
    if path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            net.load(load_file(str(path)))
            return path, {**meta, "cached": True}
        except (ValueError, OSError, SafetensorError, LottoError):
            pass  # a corrupt or foreign cache entry: trained again below, then replaced
    stats = train_supernet(net, data, cfg.supernet, seed=seed, device=device, progress=progress)
    state = net.state_dict()
    replace_atomically(path, lambda tmp: save_file(state, str(tmp)))
    meta = {"key": path.stem, **stats,
            "config": {"space": space_config(cfg.space),
                       **{k: OmegaConf.to_container(cfg[k], resolve=True)
                          for k in ("data", "supernet")}}}
    replace_atomically(meta_path, lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
    return path, {**meta, "cached": False}


# ---- the task: score one sample in a worker ---------------------------------------------------


@dataclass
class SupernetJob:
    """One network scored with inherited weights: picklable, for a worker."""

    spec: ArchSpec  # the space network (full widths, as priced)
    where: tuple[tuple[int, int], ...]  # (stage, repeat) of each block
    space: dict  # the space section (the worker rebuilds the supernet's shapes)
    data: DictConfig
    proxy: DictConfig
    supernet: DictConfig
    weights: str  # the trained supernet's file
    seed: int
    device: str
    label: str
    fault: str | None = None  # tests only (LOTTO_TEST_FAULT)


_LOADED: dict[str, Supernet] = {}  # per process: the last supernet read (by file and mtime)


def load_supernet(job: SupernetJob, data: Data) -> Supernet:
    from safetensors.torch import load_file

    from lotto.search.space import parse_space

    stamp = f"{job.weights}:{Path(job.weights).stat().st_mtime_ns}"
    if stamp not in _LOADED:
        _LOADED.clear()
        space = parse_space(job.space, "config key space")
        adapt = Adapt(float(job.proxy.width_mult), int(job.proxy.min_output), data.in_channels,
                      data.num_classes, data.image_size)
        net = Supernet(space, adapt, job.seed, bool(job.supernet.get("nest_ds", False)))
        net.load(load_file(job.weights))
        _LOADED[stamp] = net
    return _LOADED[stamp]


def evaluate_supernet(job: SupernetJob, progress: Any = None) -> dict[str, Any]:
    """The task function of the supernet proxy (same result keys as the train proxy's)."""
    from lotto.tasks import inject, shared_data
    from lotto.train import resolve_device

    inject(job.fault)
    device = resolve_device(job.device)
    data = shared_data(job.data, device)
    net = load_supernet(job, data)
    try:
        result = score(net, net.adapt(job.spec), job.where, data, job.supernet, seed=job.seed,
                       device=device)
    except LottoError as e:  # one sample's problem, not the run's: a failed task
        raise RuntimeError(str(e)) from None
    if result["val_accuracy"] != result["val_accuracy"]:
        raise RuntimeError("validation accuracy is NaN")
    return result
