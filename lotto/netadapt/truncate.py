"""Weight truncation for NetAdapt: a parent network's weights cut down to a narrower child spec.

Every tensor of a network built by `lotto.arch.build` is indexed by *channel spaces*: the
stem's output, each block's output, each expansion (depthwise) width, each SE squeeze width,
the head conv and the hidden FC. Spaces tied by a residual addition (block i residual: its input
and output are the same space) or by a block without an expand conv (its depthwise runs on the
input channels) are one space. When a space is narrower in the child, the kept channels are the
ones with the largest L2 norm of the filters that *write* them (the full convs: expand,
projection, stem, head; all writers of a tied space together, e.g. the stem and the
projections of a residual group; depthwise filters map a channel to itself and do not
rank), and the same kept indices select that space in every tensor that reads or writes it:
expand conv + BN, depthwise + BN, SE convs, projection + BN, the next block's input, head
conv, classifier. New widths must not be wider
and the topology (expand convs, residuals, SE) must be the parent's.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lotto.arch import ArchSpec
from lotto.errors import LottoError


def topology(spec: ArchSpec) -> list[tuple[str, bool, bool, bool]]:
    """What truncation must keep: per block (type, has expand conv, shortcut, has SE)."""
    return [(b.type, b.has_expand(c), b.shortcut(c), bool(b.se))
            for b, c in zip(spec.blocks, spec.block_inputs(), strict=True)]


class _Spaces:
    """Channel spaces of a spec: canonical name per space, widths, and tensor dims."""

    def __init__(self, spec: ArchSpec):
        self.spec = spec
        self.parent: dict[str, str] = {}
        self.width: dict[str, int] = {}
        self.dims: dict[str, tuple[str | None, ...]] = {}  # state key -> space per dim
        self.writers: dict[str, list[str]] = {}  # raw space -> weight keys whose rows write it
        self._build()

    def find(self, s: str) -> str:
        while self.parent.get(s, s) != s:
            s = self.parent[s]
        return s

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def _conv_bn(self, prefix: str, out: str, inp: str | None, writes: bool = True) -> None:
        self.dims[f"{prefix}.0.weight"] = (out, inp)
        for k in ("weight", "bias", "running_mean", "running_var"):
            self.dims[f"{prefix}.1.{k}"] = (out,)
        self.dims[f"{prefix}.1.num_batches_tracked"] = ()
        if writes:  # a depthwise conv maps channel c to c: it does not rank them
            self.writers.setdefault(out, []).append(f"{prefix}.0.weight")

    def _build(self) -> None:
        spec = self.spec
        self.width["c0"] = spec.stem.channels
        self._conv_bn("stem", "c0", None)
        for i, (b, cin) in enumerate(zip(spec.blocks, spec.block_inputs(), strict=True)):
            p, cin_s, out_s = f"blocks.{i}", f"c{i}", f"c{i + 1}"
            self.width[out_s] = b.out
            if b.type == "conv":
                self._conv_bn(f"{p}.conv", out_s, cin_s)
                se_s = out_s
            else:
                e_s = f"e{i}"
                self.width[e_s] = b.expansion(cin)
                if b.has_expand(cin):
                    self._conv_bn(f"{p}.expand", e_s, cin_s)
                else:
                    self.union(cin_s, e_s)  # the depthwise runs on the block's input channels
                self._conv_bn(f"{p}.dw", e_s, None, writes=False)
                self._conv_bn(f"{p}.project", out_s, e_s)
                se_s = e_s
            if b.se:
                m_s = f"m{i}"
                self.width[m_s] = spec.se_width(b, cin)
                self.dims[f"{p}.se.fc1.weight"] = (m_s, se_s)
                self.dims[f"{p}.se.fc1.bias"] = (m_s,)
                self.dims[f"{p}.se.fc2.weight"] = (se_s, m_s)
                self.dims[f"{p}.se.fc2.bias"] = (se_s,)
                self.writers.setdefault(m_s, []).append(f"{p}.se.fc1.weight")
            if b.shortcut(cin) != "none":  # identity or pooled input: added to the output
                self.union(cin_s, out_s)
        last = f"c{len(spec.blocks)}"
        feat = last
        if spec.head.conv:
            self.width["head"] = spec.head.conv
            self._conv_bn("head", "head", last)
            feat = "head"
        fc_in = feat
        if spec.head.hidden:
            self.width["hidden"] = spec.head.hidden
            self.dims["hidden.0.weight"] = ("hidden", feat)
            self.dims["hidden.0.bias"] = ("hidden",)
            self.writers.setdefault("hidden", []).append("hidden.0.weight")
            fc_in = "hidden"
        self.dims["classifier.weight"] = (None, fc_in)
        self.dims["classifier.bias"] = (None,)

    def canonical_widths(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s, w in self.width.items():
            root = self.find(s)
            if out.setdefault(root, w) != w:
                raise LottoError(f"spec {self.spec.name!r}: tied channels {s} disagree in width")
        return out

    def members(self, root: str) -> list[str]:
        return [s for s in self.width if self.find(s) == root]


def channel_norms(spec: ArchSpec, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Per canonical channel space: the L2 norm of the filters writing each channel (all
    writers of a tied space together)."""
    sp = _Spaces(spec)
    out = {}
    for root in sp.canonical_widths():
        sq = None
        for s in sp.members(root):
            for key in sp.writers.get(s, []):
                w = state[key].detach().float()
                rows = w.reshape(w.shape[0], -1).pow(2).sum(1)
                sq = rows if sq is None else sq + rows
        if sq is not None:
            out[root] = sq.sqrt()
    return out


def kept_channels(old: ArchSpec, new: ArchSpec, state: Mapping[str, Tensor]
                  ) -> dict[str, Tensor]:
    """Per canonical space of `old` that is narrower in `new`: the indices kept (ascending),
    the largest-norm channels."""
    if topology(old) != topology(new):
        raise LottoError(f"cannot truncate {old.name!r} into {new.name!r}: the topology differs "
                         "(expand convs, residuals or SE)")
    a, b = _Spaces(old), _Spaces(new)
    wa, wb = a.canonical_widths(), b.canonical_widths()
    if set(wa) != set(wb):
        raise LottoError(f"cannot truncate {old.name!r} into {new.name!r}: the channel ties differ")
    norms = channel_norms(old, state)
    kept = {}
    for root, w_old in wa.items():
        w_new = wb[root]
        if w_new > w_old:
            raise LottoError(f"truncation cannot widen {root} from {w_old} to {w_new} channels")
        if w_new < w_old:
            if root not in norms:
                raise LottoError(f"channels {root} have no filters to rank")
            top = torch.topk(norms[root], w_new).indices
            kept[root] = torch.sort(top).values
    return kept


def truncate_state(old: ArchSpec, new: ArchSpec, state: Mapping[str, Tensor]
                   ) -> dict[str, Tensor]:
    """`state` (weights of `build_network(old)`) cut to fit `build_network(new)`.

    Specs are the ones the weights belong to (e.g. both proxies: widths are what matters).
    """
    sp = _Spaces(old)
    missing = sorted(set(sp.dims) - set(state))
    if missing:
        raise LottoError(f"weights do not fit spec {old.name!r}: missing {missing[:3]}")
    kept = kept_channels(old, new, state)
    out = {}
    for key, dims in sp.dims.items():
        t = state[key]
        for d, space in enumerate(dims):
            if space is None:
                continue
            idx = kept.get(sp.find(space))
            if idx is not None:
                t = t.index_select(d, idx.to(t.device))
        out[key] = t.clone()
    return out
