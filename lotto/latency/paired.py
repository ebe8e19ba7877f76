"""The `paired` host clock: each timed call right after a call of one fixed reference network,
reported as (its time / the reference's time) x the reference's time when the scale was set.

Why: on shared or virtual cores the machine's speed drifts by 10-40% over seconds to minutes
(other tenants, frequency), far more than a network's own repeatability. Measured 2026-12-06 on
this project's idle 2-core virtual machine (1 thread, pinned, six MnasNet-space networks timed
in six processes one after another): medians moved by 4-16% (coefficient of variation) between
processes, wall clock, with whole processes 20% slow; the time of each call divided by the
reference's just before it moved by 0.4-2.5%. Both networks see the same drift, so the ratio
keeps what the network costs relative to the reference and drops the machine's state. A table
keeps its reference time (`reference_ms` in its meta), so its units and a later end-to-end check
share one scale; elsewhere the scale is set once per process.

The reference is MobileNetV2 1.0 at 96 px, 1,000 classes (about 7 ms at one thread here),
prepared like every host measurement: its mix of pointwise, depthwise and full convolutions
follows the networks lotto times. cpu only, float32.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

REFERENCE = ("mobilenet_v2", 1.0, 96)  # preset, width multiplier, resolution
_CALLS: dict[int, Callable[[], Any]] = {}  # threads -> the prepared reference network
_MS: dict[int, float] = {}  # threads -> the reference's time that sets the scale (ms)


def host_clock(clock: str, device: str) -> str:
    """The clock a configured `clock` means on `device`: paired is the cpu's (its reference
    network runs there), so elsewhere it falls back to wall; other clocks are kept."""
    return "wall" if clock == "paired" and device != "cpu" else clock


def reference_call(threads: int) -> Callable[[], Any]:
    """The prepared reference network (built once per process and thread count)."""
    if threads not in _CALLS:
        from lotto.arch.build import build_network
        from lotto.arch.presets import preset
        from lotto.latency.measure import prepare

        name, mult, res = REFERENCE
        spec = preset(name, mult, res, 1000)
        _CALLS[threads] = prepare(build_network(spec), (1, 3, res, res), "cpu")
    return _CALLS[threads]


def reference_ms(threads: int, core: int | None = None) -> float:
    """The reference's time that sets the scale: pinned by a table (`use_reference_ms`), or
    measured once in this process (median over 2 s, wall clock)."""
    if threads not in _MS:
        from lotto.latency.measure import time_callable

        t = time_callable(reference_call(threads), "cpu", threads=threads, min_run_time=2.0,
                          core=core, clock="wall")
        _MS[threads] = t.median_ms
    return _MS[threads]


def use_reference_ms(threads: int, ms: float) -> None:
    """Set the scale to a stored reference time (a table's), for the rest of this process."""
    _MS[threads] = float(ms)


def reference_seconds(ref: Callable[[], Any]) -> float:
    """One call of the reference, wall time (s)."""
    t0 = time.perf_counter()
    ref()
    return time.perf_counter() - t0


def paired_seconds(fn: Callable[[], Any], ref: Callable[[], Any], number: int,
                   scale_s: float) -> float:
    """One paired sample: the reference once, then `fn` `number` times; `fn`'s time per call in
    the reference's units, times `scale_s` (seconds)."""
    ref_s = reference_seconds(ref)
    t1 = time.perf_counter()
    for _ in range(number):
        fn()
    t2 = time.perf_counter()
    return (t2 - t1) / number / ref_s * scale_s
