"""NetAdapt proposals (MobileNetV3's): what can shrink, and the widest width meeting a budget.

Two kinds, as in MobileNetV3 section 4.2: (1) one block's expansion width (`block<i>.expand`,
blocks with an expand conv); (2) the output width of a group of layers tied by residual
additions, shared by all of them (`group<g>.width`: e.g. the stem and the projections of the
blocks whose outputs are added together). Widths are multiples of `step`; the widest one whose
latency meets the budget is found by binary search, querying the latency function (never a
guess); widths that would change the topology (make an expand conv vanish, a residual appear)
are not candidates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from lotto.arch import ArchSpec
from lotto.errors import LottoError
from lotto.netadapt.truncate import _Spaces, topology


@dataclass(frozen=True)
class Knob:
    """Something a proposal shrinks: one canonical channel space of the spec."""

    name: str  # block3.expand | group2.width
    blocks: str  # the blocks it touches: "3", "stem,0", "4,5,6"
    members: tuple[str, ...]  # raw spaces (c<j>, e<i>) set to the new width together

    def width(self, spec: ArchSpec) -> int:
        return _get(spec, self.members[0])


@dataclass(frozen=True)
class Proposal:
    knob: Knob
    old_width: int
    new_width: int
    spec: ArchSpec
    latency_ms: float
    queries: int  # latency queries the search made


def _get(spec: ArchSpec, space: str) -> int:
    kind, i = space[0], int(space[1:])
    if kind == "c":
        return spec.stem.channels if i == 0 else spec.blocks[i - 1].out
    return spec.blocks[i].expansion(spec.block_inputs()[i])


def knobs(spec: ArchSpec) -> list[Knob]:
    """Expansion knobs (blocks with an expand conv) then residual-group knobs, in block order."""
    sp = _Spaces(spec)
    out = []
    for i, (b, cin) in enumerate(zip(spec.blocks, spec.block_inputs(), strict=True)):
        if b.type == "ir" and b.has_expand(cin):
            out.append(Knob(f"block{i}.expand", str(i), (f"e{i}",)))
    seen: dict[str, list[str]] = {}
    for j in range(len(spec.blocks) + 1):
        seen.setdefault(sp.find(f"c{j}"), [])
    for s in sp.width:
        root = sp.find(s)
        if root in seen and s[0] in "ce":
            seen[root].append(s)
    for g, members in enumerate(seen.values()):
        cs = sorted(int(s[1:]) for s in members if s[0] == "c")
        label = ",".join("stem" if j == 0 else str(j - 1) for j in cs)
        out.append(Knob(f"group{g}.width", label, tuple(sorted(members))))
    return out


def set_width(spec: ArchSpec, knob: Knob, width: int) -> ArchSpec:
    """`spec` with every member space of `knob` at `width` (SE widths follow the spec's rule)."""
    stem, blocks = spec.stem, list(spec.blocks)
    for space in knob.members:
        kind, i = space[0], int(space[1:])
        if kind == "c" and i == 0:
            stem = dataclasses.replace(stem, channels=width)
        elif kind == "c":
            blocks[i - 1] = dataclasses.replace(blocks[i - 1], out=width)
        elif blocks[i].type == "ir":
            blocks[i] = dataclasses.replace(blocks[i], exp=width)
    return spec.replace(stem=stem, blocks=tuple(blocks))


def candidates(spec: ArchSpec, knob: Knob, step: int) -> list[tuple[int, ArchSpec]]:
    """(width, spec) for every multiple of `step` below the knob's width that keeps the
    topology and builds, narrowest first."""
    shape = topology(spec)
    out = []
    for w in range(step, knob.width(spec), step):
        new = set_width(spec, knob, w)
        try:
            new.validate()
        except LottoError:
            continue
        if topology(new) == shape:
            out.append((w, new))
    return out


def widest_within(spec: ArchSpec, knob: Knob, budget_ms: float, step: int,
                  latency: Callable[[ArchSpec], float]) -> Proposal | None:
    """The widest candidate of `knob` whose latency is <= `budget_ms` (binary search over the
    candidates, latency assumed to grow with width); None when even the narrowest is over."""
    cands = candidates(spec, knob, step)
    if not cands:
        return None
    queries = 0
    cache: dict[int, float] = {}

    def lat(k: int) -> float:
        nonlocal queries
        if k not in cache:
            queries += 1
            cache[k] = latency(cands[k][1])
        return cache[k]

    if lat(0) > budget_ms:
        return None
    lo, hi = 0, len(cands) - 1  # invariant: lat(lo) <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if lat(mid) <= budget_ms:
            lo = mid
        else:
            hi = mid - 1
    w, new = cands[lo]
    return Proposal(knob, knob.width(spec), w, new, lat(lo), queries)


def floor_spec(spec: ArchSpec, step: int) -> ArchSpec:
    """The narrowest network proposals can reach: every knob in turn at its narrowest
    candidate (used to tell the lowest reachable latency)."""
    for _ in range(3):  # a narrower group can open narrower expansions, and back
        for knob in knobs(spec):
            cands = candidates(spec, knob, step)
            if cands:
                spec = cands[0][1]
    return spec
