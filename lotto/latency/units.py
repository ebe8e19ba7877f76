"""Cheap per-unit keys of a spec, and a cache of per-unit costs keyed by them.

A network's latency is a sum over its units (stem, each block, head conv, classifier: the
`BlockContext`s of lotto.arch). Search and NetAdapt price thousands of specs that share most
units, so every predictor caches a unit's cost under a hashable key that is computed without
building the layer table (`ArchSpec.layers()` costs ~0.2 ms; a key costs ~1 us). The key holds
everything that changes a unit's computation and nothing else, like `BlockContext.key`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from lotto.arch import ArchSpec

T = TypeVar("T")


def _out(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def unit_keys(spec: ArchSpec) -> list[tuple[str, Hashable]]:
    """(unit name, key) for every unit of `spec`, in execution order (no validation)."""
    st = spec.stem
    out: list[tuple[str, Hashable]] = [
        ("stem", ("stem", st, spec.resolution, spec.in_channels))
    ]
    hw, c = _out(spec.resolution, st.stride), st.channels
    for i, b in enumerate(spec.blocks):
        se = (spec.se_rule, spec.se_gate) if b.se else None
        out.append((f"blocks.{i}", ("block", b, c, hw, se)))
        hw, c = _out(hw, b.stride), b.out
    h = spec.head
    if h.conv:
        out.append(("head", ("head", h.conv, h.act, c, hw)))
        c = h.conv
    hidden = (h.hidden, h.act) if h.hidden else None
    out.append(("classifier", ("classifier", hidden, c, spec.num_classes, hw)))
    return out


class UnitCache(Generic[T]):
    """Per-unit values filled a whole spec at a time on a miss.

    `fill(spec)` returns {unit name: value} for every unit of `spec` (one layer-table build);
    later specs that share units are priced from the cache alone.
    """

    def __init__(self, fill: Callable[[ArchSpec], dict[str, T]], max_size: int = 200_000):
        self._fill = fill
        self._values: dict[Hashable, T] = {}
        self._max = max_size
        self.hits = 0
        self.misses = 0

    def units(self, spec: ArchSpec) -> list[tuple[str, T]]:
        keys = unit_keys(spec)
        values = self._values
        try:
            out = [(name, values[key]) for name, key in keys]
            self.hits += len(keys)
            return out
        except KeyError:
            pass
        filled = self._fill(spec)
        if len(values) > self._max:  # unbounded search loops: start over rather than grow
            values.clear()
        for name, key in keys:
            if key not in values:
                self.misses += 1
                values[key] = filled[name]
        return [(name, values[key]) for name, key in keys]

    def __len__(self) -> int:
        return len(self._values)
