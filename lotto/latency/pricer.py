"""`Pricer`: the latency of a spec on a command's target device, as `search` and `netadapt`
(and whatever prices many networks of one run) ask for it: one rule, memoised.

The rule (the `latency:` section of the command's config):

- **Phones** (`pixel1`, `pixel2`, `pixel3`, a calibrated device): the phone model (`source`
  model; `latency.source` must be null or model).
- **Hosts** (`cpu`, `cuda`):
  - `latency.source: measure`: every network timed end to end (`threads`, `min_run_time`).
  - otherwise the lookup table of (device, threads): the file `latency.lut` when set, else
    `<runs_dir>/bench/lut/<device>_t<threads>_float32.json` (the table `lotto bench
    --build-lut` writes).
    - Where the command builds it in situ (`grid`: netadapt's seed scaled by
      `latency.lut_multipliers`), the grid's missing units are timed in their networks and saved,
      and the table's offset is calibrated once; a table built for another host is rebuilt.
    - Elsewhere (search) the table is used when it exists and fits this host; without one,
      `source: null` measures each network end to end and `source: lut` / `model` is refused.
  - `source: model` prices with the table's fitted fallback model instead of its entries.

Prices are memoised by the spec without its name (equal networks are priced once: a measured
one keeps its first timing) and come back as `Price(ms, source, expected_error)`; `latency(spec)`
gives the whole `Latency` (provenance in `detail`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from lotto.arch import ArchSpec, scale_width
from lotto.errors import LottoError
from lotto.latency.devices import canonical_device, is_phone
from lotto.latency.paired import host_clock

SOURCES = (None, "model", "lut", "measure")


class Price(NamedTuple):
    ms: float
    source: str  # measured | lut | model
    expected_error: float  # relative


def table_grid(seed: ArchSpec, multipliers: Sequence[float]) -> list[ArchSpec]:
    """The networks whose units a table built around `seed` holds: the seed, and the seed's
    widths scaled by each multiplier (other widths interpolate between them)."""
    return [seed] + [scale_width(seed, float(m)).replace(name=f"{seed.name}*{m:g}")
                     for m in multipliers if m != 1.0]


class Pricer:
    """Latency of specs on the target device of `cfg` (a command's config: its `latency:`
    section and `run.runs_dir`), by the rule above.

    `Pricer(cfg)` / `Pricer(cfg, device)` prices on `device` (default `latency.device`);
    `Pricer(cfg, seed)` (an ArchSpec) builds the host table in situ around `seed`, as
    `grid=table_grid(seed, latency.lut_multipliers)` does.
    """

    def __init__(self, cfg: Any, device: str | ArchSpec | None = None, *,
                 grid: Sequence[ArchSpec] | None = None,
                 say: Callable[[str], None] | None = None):
        if isinstance(device, ArchSpec):  # the seed of an in-situ table (netadapt)
            grid = table_grid(device, cfg.latency.get("lut_multipliers") or [])
            device = None
        lat = cfg.latency
        self.cfg = cfg
        self.device = canonical_device(str(device if device is not None else lat.device))
        self.threads = int(lat.threads)
        self.min_run_time = float(lat.min_run_time)
        self.clock = host_clock(str(lat.get("clock", "wall")), self.device)
        self.memo: dict[ArchSpec, Any] = {}
        self.lut = None
        src = lat.get("source")
        if src not in SOURCES:
            raise LottoError(f"config key latency.source: {src!r}: null, model, lut or measure")
        if is_phone(self.device):
            if src not in (None, "model"):
                raise LottoError(f"config key latency.source: {self.device} is a phone: its "
                                 "latency comes from the model")
            self.source = "model"
            return
        if src != "measure":
            self.lut = self._table(grid, say or (lambda m: None))
            if self.lut is None and src in ("lut", "model"):
                clock = "" if self.clock == "wall" else f" measure.clock={self.clock}"
                raise LottoError(f"latency.source {src}: no lookup table for {self.device} at "
                                 f"{self.table_path}; build one with "
                                 f"`lotto bench --device {self.device} --build-lut{clock}`")
        self.source = (src if src is not None else
                       "lut" if self.lut is not None else "measure")

    @property
    def table_path(self) -> Path:
        from lotto.latency.lut import lut_path

        file = self.cfg.latency.get("lut")
        return Path(str(file)).expanduser() if file else lut_path(
            self.cfg.run.runs_dir, self.device, self.threads, clock=self.clock)

    def _table(self, grid: Sequence[ArchSpec] | None, say: Callable[[str], None]) -> Any:
        """The host table: built in situ over `grid` when given, else the existing one (or
        None when there is none for this host)."""
        from lotto.latency.lut import Lut, build_entries, calibrate_offset, open_lut

        path = self.table_path
        if grid is None:
            if not path.exists():
                return None
            lut = Lut.load(path)
            why = lut.mismatch(self.device, self.threads, "float32", self.clock)
            if why is not None:
                say(f"lookup table {path} was built for another setup ({why}); not used")
                return None
            return lut
        lut = open_lut(path, self.device, self.threads, warn=say, clock=self.clock)
        todo = len(lut.missing(grid))
        if todo:
            say(f"lookup table {path}: timing {todo} missing units on {self.device}")
            build_entries(lut, grid, min_run_time=self.min_run_time)
        if lut.meta.get("offset_basis") is None:
            calibrate_offset(lut, list(grid), min_run_time=self.min_run_time)
        return lut

    def latency(self, spec: ArchSpec) -> Any:
        """The `Latency` of `spec` (memoised by the spec without its name)."""
        key = spec.replace(name="")
        if key not in self.memo:
            from lotto.latency import predict

            if is_phone(self.device):
                lat = predict(spec, self.device)
            elif self.source == "measure":
                lat = predict(spec, self.device, threads=self.threads,
                              min_run_time=self.min_run_time, clock=self.clock)
            else:
                lat = predict(spec, self.device, source=self.source, lut=self.lut)
            self.memo[key] = lat
        return self.memo[key]

    def __call__(self, spec: ArchSpec) -> Price:
        lat = self.latency(spec)
        return Price(float(lat.ms), lat.source, float(lat.expected_error))

    def ms(self, spec: ArchSpec) -> float:
        return float(self.latency(spec).ms)

    def measure(self, spec: ArchSpec, min_run_time: float | None = None) -> Any:
        """`spec` timed end to end on the (host) device now, whatever the rule prices with
        (netadapt checks its table against this); not memoised."""
        from lotto.latency import predict

        return predict(spec, self.device, source="measure", threads=self.threads,
                       min_run_time=self.min_run_time if min_run_time is None else min_run_time,
                       clock=self.clock)
