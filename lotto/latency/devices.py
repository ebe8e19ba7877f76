"""The project's one device list: host devices (measured) and phones (modelled), with aliases.

Everything that accepts a device name (`bench`, `build-v3`, `search`, `netadapt`, the latency
interface) checks and canonicalises it here, so an alias such as `pixel` works everywhere.
No torch import: configs are validated before anything heavy loads.
"""

from __future__ import annotations

import math

from lotto.errors import LottoError

HOST_DEVICES = ("cpu", "cuda")
PHONES = ("pixel1", "pixel2", "pixel3")
ALIASES = {"pixel": "pixel1"}
DEVICES = (*HOST_DEVICES, *ALIASES, *PHONES)


def phone_name(device: str) -> str | None:
    """Canonical phone name, or None if `device` is not a phone."""
    name = str(device).strip().lower()
    name = ALIASES.get(name, name)
    return name if name in PHONES else None


def canonical_device(device: str) -> str:
    """`pixel` -> `pixel1`; `cuda:0` kept; LottoError for an unknown device."""
    name = str(device).strip().lower()
    phone = phone_name(name)
    if phone is not None:
        return phone
    if name in HOST_DEVICES or name.startswith("cuda:"):
        return name
    raise LottoError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")


def is_phone(device: str) -> bool:
    return phone_name(device) is not None


# ---------------------------------------------------------------------------------------------
# Calibration ranges: a prediction far outside the data a model or table was calibrated on gets
# a warning and a wider error bar.

RANGE_AXES = ("resolution", "width_mult", "macs")


def outside_range(values: dict[str, float], ranges: dict[str, list[float]]) -> dict[str, float]:
    """Per axis, how far `values` lie outside `ranges` ({axis: [low, high]}), as |log(value /
    nearest bound)| (0 inside); axes missing from either side are skipped."""
    out = {}
    for axis in RANGE_AXES:
        if axis not in ranges or axis not in values or values[axis] <= 0:
            continue
        low, high = ranges[axis]
        v = float(values[axis])
        if v < low or v > high:
            out[axis] = abs(math.log(v / (low if v < low else high)))
    return out


def widen(expected_error: float, distance: dict[str, float]) -> float:
    """Expected error outside the calibration range: the in-range figure plus the largest
    log-distance outside it (2x beyond the range adds 69 points). Nothing was measured out
    there, so this is a stated guess, chosen to grow fast rather than to be tight."""
    return expected_error + max(distance.values(), default=0.0)


def range_warnings(what: str, values: dict[str, float], ranges: dict[str, list[float]],
                   distance: dict[str, float]) -> list[str]:
    return [f"{axis} {values[axis]:g} is outside the {what}'s calibration range "
            f"[{ranges[axis][0]:g}, {ranges[axis][1]:g}]; expected error widened"
            for axis in distance]
