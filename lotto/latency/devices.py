"""The project's one device list: host devices (measured), mobile runtimes (`xnnpack` on this
host, `adb` / `adb:SERIAL` on a phone: measured), phones (modelled: the published pixel1-3 and
devices users calibrated from their own measurements), with aliases.

Everything that accepts a device name (`bench`, `build-v3`, `search`, `netadapt`, the latency
interface) checks and canonicalises it here, so an alias such as `pixel` works everywhere.
No torch import: configs are validated before anything heavy loads.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from lotto.errors import LottoError

HOST_DEVICES = ("cpu", "cuda")
PHONES = ("pixel1", "pixel2", "pixel3", "pixel4")  # pixel4: a scale from 4-thread figures
ALIASES = {"pixel": "pixel1"}
# measured through a mobile runtime: ExecuTorch + XNNPACK on this host, or on a phone over adb
RUNTIME_DEVICES = ("xnnpack", "adb")
DEVICES = (*HOST_DEVICES, *RUNTIME_DEVICES, *ALIASES, *PHONES)
RESERVED = (*DEVICES, "auto", "cuda", "adb")
_USER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_runs_dirs: list[Path] = []


# ---------------------------------------------------------------------------------------------
# Calibrated user devices (`lotto bench --calibrate RUN --as mypixel`): a phone model fitted to
# measurements from a device run, stored as <runs_dir>/devices/<name>.json. Looked up in the
# runs directories a command registered (`add_runs_dir`), then $LOTTO_RUNS_DIR, then ./runs.


def add_runs_dir(path: str | Path) -> None:
    """Make the calibrated devices under `path`/devices known (commands call it with their
    run.runs_dir before resolving a device name)."""
    p = Path(path).expanduser()
    if p not in _runs_dirs:
        _runs_dirs.insert(0, p)


def runs_dirs() -> list[Path]:
    extra = [Path(os.environ["LOTTO_RUNS_DIR"]).expanduser()] if os.environ.get(
        "LOTTO_RUNS_DIR") else []
    out: list[Path] = []
    for p in [*_runs_dirs, *extra, Path("runs")]:
        if p not in out:
            out.append(p)
    return out


def check_user_name(name: str) -> str:
    """A name for a calibrated device: lower-case letters, digits, - and _; not a built-in."""
    n = str(name).strip()
    if not _USER_NAME.match(n):
        raise LottoError(f"--as {name!r}: a device name is 1-40 lower-case letters, digits, "
                         "'-' or '_', starting with a letter")
    if n in RESERVED or n.startswith(("cuda", "adb")):
        raise LottoError(f"--as {name!r}: that name is a built-in device; choose another")
    return n


def user_device_file(name: str) -> Path | None:
    """The calibration file of user device `name`, or None."""
    if not _USER_NAME.match(name) or name in RESERVED:
        return None
    for d in runs_dirs():
        f = d / "devices" / f"{name}.json"
        if f.is_file():
            return f
    return None


def user_devices() -> list[str]:
    names: set[str] = set()
    for d in runs_dirs():
        if (d / "devices").is_dir():
            names.update(f.stem for f in (d / "devices").glob("*.json"))
    return sorted(names)


def is_calibrated(device: str) -> bool:
    """True for a user device calibrated with `lotto bench --calibrate`."""
    name = str(device).strip().lower()
    return name not in PHONES and name not in ALIASES and user_device_file(name) is not None


def phone_name(device: str) -> str | None:
    """Canonical name of a modelled device (published phones and calibrated user devices), or
    None."""
    name = str(device).strip().lower()
    name = ALIASES.get(name, name)
    if name in PHONES:
        return name
    if name not in DEVICES and user_device_file(name) is not None:
        return name
    return None


def adb_serial(device: str) -> str | None:
    """`adb:SERIAL` -> SERIAL (case kept), `adb` -> None."""
    return device.split(":", 1)[1] if ":" in device else None


def is_runtime_device(device: str) -> bool:
    """xnnpack, adb or adb:SERIAL: measured through a mobile runtime."""
    name = str(device).strip()
    return name.lower() == "xnnpack" or name.lower() == "adb" or name.lower().startswith("adb:")


def canonical_device(device: str) -> str:
    """`pixel` -> `pixel1`; `cuda:0` and `adb:SERIAL` kept (the serial's case too); calibrated
    user devices by name; LottoError for an unknown device."""
    raw = str(device).strip()
    name = raw.lower()
    if name.startswith("adb:"):
        serial = raw.split(":", 1)[1]
        if not serial:
            raise LottoError("--device adb:SERIAL: the serial is empty (see `adb devices`)")
        return f"adb:{serial}"
    phone = phone_name(name)
    if phone is not None:
        return phone
    if name in HOST_DEVICES or name.startswith("cuda:") or name in RUNTIME_DEVICES:
        return name
    users = user_devices()
    known = ", ".join([*DEVICES, "adb:SERIAL", *users])
    raise LottoError(f"unknown device {device!r}; choose one of {known}")


def is_phone(device: str) -> bool:
    """Modelled devices: the published phones and calibrated user devices."""
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
