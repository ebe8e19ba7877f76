"""The width-multiplier baseline at a latency: the largest uniform multiplier of a spec whose
latency is at most a target (NetAdapt's and MobileNetV3's comparison "at equal latency")."""

from __future__ import annotations

from collections.abc import Callable

from lotto.arch import ArchSpec, scale_width


def multiplier_for(spec: ArchSpec, ms: float, price: Callable[[ArchSpec], float],
                   low: float = 0.01, high: float = 1.0, step: float = 0.01) -> float:
    """The largest multiplier in [low, high] (a multiple of `step`) of `spec` priced at <= `ms`
    by `price`, found by binary search (latency assumed to grow with the multiplier); `low` when
    even that is over `ms`."""
    def at(k: int) -> float:
        return round(k * step, 6)

    lo, hi = round(low / step), round(high / step)
    if price(scale_width(spec, at(lo))) > ms:
        return at(lo)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if price(scale_width(spec, at(mid))) <= ms:
            lo = mid
        else:
            hi = mid - 1
    return at(lo)
