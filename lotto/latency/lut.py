"""Host lookup tables: per-unit latencies measured on this machine, summed per network.

Schema (ProxylessNAS / OFA style; docs/latency.md, host lookup tables). One JSON file per host
device, thread count and dtype, cached under the runs directory
(`runs/bench/lut/cpu_t1_float32.json`):

    {"meta": {schema, device, fingerprint (cpu model, torch, threads, ...), threads, dtype,
              clock, method, channels_last, bn_folded, batch, created, updated,
              offset_ms, offset_basis, validation},
     "entries": {key: {median, p25, p75, mean, std, n, macs, params, part, sig, features}}}

Keys are one per unit (stem, block, head conv, classifier), e.g.
``ir_k5_s1_e960_c160_se0.25_hs|in=7x7x160|out=7x7x160|skip=1|se_exp_hsigmoid``: op, kernel,
stride, expansion width, output width, SE, activation, input and output HxWxC and the residual.
Units are timed BN folded, channels_last, at the table's thread count, so intra-unit fusion
and per-op overhead are inside the entry. Method `insitu` (default) times every unit inside a
whole network of the space with forward hooks (the cache state of real inference, like
TFLite's op profiling); `isolated` builds each unit alone (`lotto.arch.build.build_block`) and
times it in a loop, where its weights stay in cache and it runs faster than in a network.

Error bars come from measurement where one exists: the table's validation RMSPE (table sum vs
end-to-end timings, kept in the header) for a network of hits; for a miss, the RMS relative error
of the same rule on the table's own entries, each left out in turn (interpolation from its
siblings; the additive model refitted without it), also kept in the header (`unit_errors`).
Where nothing was measured yet the figure is a guess and says so (`expected_error_basis`).

Misses (NetAdapt's arbitrary channel counts, unseen widths) are priced, in order, by
1. linear interpolation in MACs between the nearest measured "siblings" below and above: units
   that differ only in channel counts (same op, kernel, stride, SE, activation, skip, input
   HxW); extrapolation along the two nearest when all siblings lie on one side;
2. an additive host model fitted (NNLS on relative error) to all entries, with the same
   features as the phone model.
The network sum then adds `offset_ms`: the per-call cost outside all units (the network's own
forward, flatten), calibrated as the median of (measured end to end - table sum) over a few
reference networks drawn from the space, and re-estimated by validation.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import nnls

from lotto.arch import ArchSpec, BlockContext, BlockSpec
from lotto.errors import LottoError
from lotto.latency.measure import (
    REMEASURES,
    fingerprint,
    is_noisy,
    measure_module,
    prepare,
    time_callable,
)
from lotto.latency.phone import LAYER_FEATURES, unit_features
from lotto.latency.units import UnitCache
from lotto.runs import write_text

# A unit whose IQR/median stays above this after re-measuring is not stored (table meta
# `max_iqr` overrides it): one noisy unit would bias every network that contains it.
UNIT_MAX_IQR = 0.5

SCHEMA = 2  # 2: the unit features are named in the table (meta `features`)
# fingerprint fields that must match for a table to be reused (cores and governor may vary)
MATCH_FIELDS = ("device", "cpu", "torch", "threads", "gpu", "cuda", "allocator")
# Guesses, quoted (and labelled `expected_error_basis: guess`) only until a measurement exists:
UNVALIDATED_ERROR = 0.10  # a table sum before `--validate` has compared it with end-to-end runs
INTERP_ERROR = 0.10  # an interpolated unit, before leave-one-out over entries could measure it
MODEL_ERROR = 0.25  # a unit priced by the fallback model, likewise
MIN_LOO = 3  # leave-one-out predictions needed before a measured unit error replaces a guess
METHODS = ("insitu", "isolated")


def lut_key(ctx: BlockContext) -> str:
    """Table key of a unit: its arch key rewritten with input and output shapes and skip."""
    base, _, rest = ctx.key.partition("@")
    shape, *extra = rest.split("+")
    ho, wo, co = ctx.out_shape
    key = f"{base}|in={shape}|out={ho}x{wo}x{co}"
    if ctx.block is not None:
        key += f"|skip={_skip(ctx.block, ctx.in_shape[2])}"
    return key + "".join(f"|{e}" for e in extra)


def _skip(block: BlockSpec, in_channels: int) -> str:
    """1 / 0 for an identity residual or none (as in older tables), "pool" for a pooling one."""
    kind = block.shortcut(in_channels)
    return "pool" if kind == "pool" else str(int(kind == "identity"))


def sibling_signature(ctx: BlockContext) -> str:
    """The key with every channel count removed: units that differ only in width."""
    h, w, _ = ctx.in_shape
    if ctx.block is not None:
        b = ctx.block
        skip = _skip(b, ctx.in_shape[2])
        extra = ctx.key.partition("+")[2]
        return f"{b.type}_k{b.kernel}_s{b.stride}_se{b.se:g}_{b.act}|in={h}x{w}|skip={skip}|{extra}"
    base = ctx.key.partition("@")[0]
    if ctx.part == "stem":  # stem_k3_s2_c16_hs: drop the width, keep the input channels
        return f"{re.sub(r'_c[0-9]+', '', base)}|in={h}x{w}x{ctx.in_shape[2]}"
    if ctx.part == "head":
        return f"head_{base.rsplit('_', 1)[-1]}|in={h}x{w}"
    return f"classifier|hidden={int('_h' in base)}|in={h}x{w}"


@dataclass(frozen=True)
class UnitInfo:
    """What a table needs of one unit (static: computed once per unit key)."""

    name: str
    part: str
    key: str
    sig: str
    macs: int
    params: int
    features: tuple[float, ...]
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]


def unit_infos(spec: ArchSpec) -> dict[str, UnitInfo]:
    feats = unit_features(spec)
    out = {}
    for ctx in spec.block_contexts():
        out[ctx.name] = UnitInfo(
            ctx.name, ctx.part, lut_key(ctx), sibling_signature(ctx), ctx.macs, ctx.params,
            tuple(float(x) for x in feats.get(ctx.name, np.zeros(len(LAYER_FEATURES)))),
            ctx.in_shape, ctx.out_shape,
        )
    return out


class Lut:
    """A lookup table in memory; `path` is where `save` writes it."""

    def __init__(self, meta: dict[str, Any], entries: dict[str, dict[str, Any]],
                 path: Path | None = None):
        self.meta = meta
        self.entries = entries
        self.path = path
        self._infos: UnitCache[UnitInfo] = UnitCache(unit_infos)
        self._reindex()

    # ---- creation, files ----------------------------------------------------------------

    @classmethod
    def empty(cls, device: str, threads: int, dtype: str = "float32",
              path: Path | None = None, clock: str = "wall", method: str = "insitu") -> Lut:
        if method not in METHODS:
            raise LottoError(f"unknown table method {method!r}; choose one of {METHODS}")
        now = _now()
        meta = {
            "schema": SCHEMA,
            # the host model and interpolation are fitted on these per-unit features: a table
            # of other features (an older lotto) cannot be reused
            "features": list(LAYER_FEATURES),
            "device": device,
            "fingerprint": fingerprint(device, threads),
            "threads": threads,
            "dtype": dtype,
            "clock": clock,
            "method": method,
            "channels_last": True,
            "bn_folded": True,
            "batch": 1,
            "created": now,
            "updated": now,
            "offset_ms": 0.0,
            "offset_basis": None,
            "validation": None,
        }
        return cls(meta, {}, path)

    @classmethod
    def load(cls, path: Path) -> Lut:
        try:
            data = json.loads(Path(path).read_text())
            meta, entries = data["meta"], data["entries"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise LottoError(f"lookup table {path} is unreadable ({e}); delete it") from None
        return cls(meta, entries, Path(path))

    def save(self, path: Path | None = None) -> None:
        """Write atomically to `path` (a copy) or, by default, to the table's own path."""
        if path is None and self.path is None:
            raise LottoError("this lookup table has no file path; give one")
        path = Path(path or self.path)  # type: ignore[arg-type]
        self.meta["updated"] = _now()
        write_text(path, json.dumps({"meta": self.meta, "entries": self.entries}, indent=1,
                                    sort_keys=True) + "\n")

    def mismatch(self, device: str, threads: int, dtype: str, clock: str = "wall",
                 method: str = "insitu") -> str | None:
        """Why this table cannot serve (device, threads, dtype, clock, method) here, or None."""
        if self.meta.get("method", "insitu") != method:
            return f"method {self.meta.get('method')} != {method}"
        if self.meta.get("schema") != SCHEMA:
            return f"schema {self.meta.get('schema')} != {SCHEMA}"
        if self.meta.get("features") != list(LAYER_FEATURES):
            return "unit features of another lotto version"
        if self.meta.get("dtype") != dtype:
            return f"dtype {self.meta.get('dtype')} != {dtype}"
        if self.meta.get("clock", "wall") != clock:
            return f"clock {self.meta.get('clock', 'wall')} != {clock}"
        now = fingerprint(device, threads)
        old = self.meta.get("fingerprint", {})
        for field in MATCH_FIELDS:
            if old.get(field) != now.get(field):
                return f"{field} {old.get(field)!r} != {now.get(field)!r}"
        return None

    # ---- lookup -------------------------------------------------------------------------

    def _reindex(self) -> None:
        self._siblings: dict[str, list[tuple[int, float, str]]] = {}
        for key, e in self.entries.items():
            entry = (int(e["macs"]), float(e["median"]), key)
            self._siblings.setdefault(e["sig"], []).append(entry)
        for v in self._siblings.values():
            v.sort()
        self._memo: dict[str, tuple[float, str]] = {}
        self._host_coef: np.ndarray | None = None
        self._unit_errors: dict[str, dict[str, Any]] | None = None

    def add(self, key: str, info: UnitInfo, timing: dict[str, Any]) -> None:
        self.entries[key] = {
            **timing, "macs": info.macs, "params": info.params, "part": info.part,
            "sig": info.sig, "features": list(info.features),
        }
        self._reindex()

    def host_model(self) -> np.ndarray:
        """Coefficients of the additive fallback model (LAYER_FEATURES + per-unit constant)."""
        if self._host_coef is None:
            if len(self.entries) < 3:
                raise LottoError("lookup table too small to price a missing unit; build it first")
            self._host_coef = _fit_host(*self._design())
        return self._host_coef

    def _model_features_ms(self, features: Iterable[float]) -> float:
        return float(np.array([*features, 1.0]) @ self.host_model())

    def _model_ms(self, info: UnitInfo) -> float:
        return self._model_features_ms(info.features)

    def unit_ms(self, info: UnitInfo) -> tuple[float, str]:
        """(ms, status) of one unit; status is hit, interp or model."""
        memo = self._memo.get(info.key)
        if memo is not None:
            return memo
        entry = self.entries.get(info.key)
        if entry is not None:
            out = (float(entry["median"]), "hit")
        else:
            out = self._interpolate(info)
        self._memo[info.key] = out
        return out

    def _interpolate(self, info: UnitInfo) -> tuple[float, str]:
        sib = self._siblings.get(info.sig, [])
        ms = _linear(sib, info.macs)
        if ms is not None:
            return ms, "interp"
        if len(sib) == 1:
            # one sibling: keep its measured level, scale by the fallback model's ratio
            _, y0, key = sib[0]
            ref = self._model_features_ms(self.entries[key]["features"])
            if ref > 0:
                return y0 * self._model_ms(info) / ref, "interp"
        return self._model_ms(info), "model"

    def unit_errors(self) -> dict[str, dict[str, Any]]:
        """Relative error of a missed unit, per pricing rule, measured by leave-one-out over the
        table's entries: {interp|model: {rmspe, n, basis}}; basis `guess` (the constants above)
        while fewer than MIN_LOO entries could be left out."""
        if self._unit_errors is None:
            interp, model = [], []
            for sib in self._siblings.values():
                for i, (x, y, _) in enumerate(sib):
                    ms = _linear(sib[:i] + sib[i + 1:], x)
                    if ms is not None and y > 0:
                        interp.append((ms - y) / y)
            X, y = self._design()
            if len(y) > X.shape[1]:  # enough entries that one left out still leaves a fit
                for i in range(len(y)):
                    keep = np.arange(len(y)) != i
                    model.append((X[i] @ _fit_host(X[keep], y[keep]) - y[i]) / y[i])
            self._unit_errors = {
                name: ({"rmspe": float(np.sqrt(np.mean(np.square(errs)))), "n": len(errs),
                        "basis": "leave-one-out over table entries"} if len(errs) >= MIN_LOO
                       else {"rmspe": guess, "n": len(errs), "basis": "guess"})
                for name, errs, guess in (("interp", interp, INTERP_ERROR),
                                          ("model", model, MODEL_ERROR))
            }
        return self._unit_errors

    def predict_spec(self, spec: ArchSpec) -> tuple[float, dict[str, Any]]:
        """(ms, detail) for a network: sum of units + offset; detail counts hits and misses."""
        total, counts = 0.0, {"hit": 0, "interp": 0, "model": 0}
        err2 = 0.0
        for _, info in self._infos.units(spec):
            ms, status = self.unit_ms(info)
            total += ms
            counts[status] += 1
            if status != "hit":  # independent unit errors add in quadrature
                err2 += (ms * self.unit_errors()[status]["rmspe"]) ** 2
        offset = float(self.meta.get("offset_ms") or 0.0)
        ms = total + offset
        detail = {"hits": counts["hit"], "interpolated": counts["interp"],
                  "modelled": counts["model"], "offset_ms": offset, "units_ms": total,
                  "miss_error": (err2**0.5) / ms if ms > 0 else 0.0}
        return ms, detail

    def model_spec(self, spec: ArchSpec) -> float:
        """The fallback additive model over every unit of `spec`, plus the offset (ms)."""
        units = sum(self._model_ms(info) for _, info in self._infos.units(spec))
        return units + float(self.meta.get("offset_ms") or 0.0)

    def unit_rows(self, spec: ArchSpec) -> list[dict[str, Any]]:
        """One row per unit: name, key, part, shapes, MACs, ms and status."""
        rows = []
        for name, info in self._infos.units(spec):
            ms, status = self.unit_ms(info)
            rows.append({"layer": name, "op": info.part, "key": info.key, "macs": info.macs,
                         "in_shape": info.in_shape, "out_shape": info.out_shape, "ms": ms,
                         "status": status})
        return rows

    def missing(self, specs: Iterable[ArchSpec]) -> dict[str, tuple[ArchSpec, UnitInfo]]:
        """Units of `specs` without an entry: key -> (a spec containing it, its info)."""
        out: dict[str, tuple[ArchSpec, UnitInfo]] = {}
        for spec in specs:
            for _, info in self._infos.units(spec):
                if info.key not in self.entries and info.key not in out:
                    out[info.key] = (spec, info)
        return out

    @property
    def expected_error(self) -> float:
        """The validation RMSPE (table sum vs end to end), or the UNVALIDATED_ERROR guess."""
        v = self.meta.get("validation") or {}
        return float(v.get("rmspe", UNVALIDATED_ERROR))

    @property
    def expected_error_basis(self) -> str:
        return "validation" if (self.meta.get("validation") or {}).get("rmspe") is not None \
            else "guess"

    def record_range(self, specs: Iterable[ArchSpec]) -> None:
        """Widen the header's calibration range (resolution, width, network MACs) to `specs`."""
        rng = self.meta.setdefault("range", {})
        for spec in specs:
            for axis, v in (("resolution", spec.resolution), ("width_mult", spec.width_mult),
                            ("macs", spec.macs())):
                low, high = rng.get(axis, [v, v])
                rng[axis] = [min(low, v), max(high, v)]

    def _design(self) -> tuple[np.ndarray, np.ndarray]:
        X = np.array([[*e["features"], 1.0] for e in self.entries.values()]).reshape(
            len(self.entries), len(LAYER_FEATURES) + 1)
        return X, np.array([float(e["median"]) for e in self.entries.values()])


def _fit_host(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """NNLS on relative error with unit-range columns (the host model's fit)."""
    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls((X / scale) / y[:, None], np.ones(len(y)), maxiter=50 * X.shape[1])
    return coef / scale


def _linear(sib: list[tuple[int, float, str]], x: int) -> float | None:
    """Linear interpolation in MACs between the nearest siblings below and above `x`, or along
    the two nearest when all lie on one side; None without two siblings or for ms <= 0."""
    lower = [s for s in sib if s[0] <= x]
    upper = [s for s in sib if s[0] >= x]
    if lower and upper:
        pair = (lower[-1], upper[0])
    elif len(sib) >= 2:
        pair = (sib[0], sib[1]) if upper else (sib[-2], sib[-1])
    else:
        return None
    (x0, y0, _), (x1, y1, _) = pair
    ms = y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ms if ms > 0 else None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Building, caching, calibrating


def lut_path(runs_dir: str | Path, device: str, threads: int, dtype: str = "float32",
             clock: str = "wall", method: str = "insitu") -> Path:
    suffix = ("" if clock == "wall" else f"_{clock}") + ("" if method == "insitu" else f"_{method}")
    return (Path(runs_dir).expanduser() / "bench" / "lut"
            / f"{device}_t{threads}_{dtype}{suffix}.json")


def open_lut(path: Path, device: str, threads: int, dtype: str = "float32",
             warn: Callable[[str], None] | None = None, clock: str = "wall",
             method: str = "insitu") -> Lut:
    """The cached table at `path`, or an empty one; a foreign table is warned about and dropped."""
    if path.exists():
        lut = Lut.load(path)
        why = lut.mismatch(device, threads, dtype, clock, method)
        if why is None:
            return lut
        message = f"lookup table {path} was built for another setup ({why}); rebuilding it"
        (warn or (lambda m: warnings.warn(m, stacklevel=2)))(message)
    return Lut.empty(device, threads, dtype, path, clock, method)


def _setup(lut: Lut, core: int | None = None) -> tuple[str, int, str, str]:
    """The table's (device, threads, dtype, clock). Clock paired: the scale is the table's own
    reference time (measured and stored when the table is first used)."""
    m = lut.meta
    clock = m.get("clock", "wall")
    if clock == "paired":
        from lotto.latency.paired import reference_ms, use_reference_ms

        if m.get("reference_ms") is None:
            m["reference_ms"] = reference_ms(int(m["threads"]), core)
        use_reference_ms(int(m["threads"]), m["reference_ms"])
    return m["device"], int(m["threads"]), m["dtype"], clock


def time_unit(spec: ArchSpec, info: UnitInfo, device: str, threads: int, min_run_time: float,
              dtype: str = "float32", core: int | None = None,
              clock: str = "wall") -> dict[str, Any]:
    """Build one unit alone and time it (same preparation as a whole network)."""
    from lotto.arch.build import build_block

    module = build_block(spec, info.name)
    h, w, c = info.in_shape
    prepared = prepare(module, (1, c, h, w), device, dtype=dtype)
    t = time_callable(prepared, device, threads=threads, min_run_time=min_run_time, warmup=5,
                      core=core, clock=clock)
    return {"median": t.median_ms, "p25": t.p25_ms, "p75": t.p75_ms, "mean": t.mean_ms,
            "std": t.std_ms, "n": t.n, "number_per_run": t.number_per_run}


def time_units_in_situ(spec: ArchSpec, device: str, threads: int, min_run_time: float,
                       dtype: str = "float32", core: int | None = None,
                       clock: str = "wall") -> dict[str, dict[str, Any]]:
    """Time every unit of `spec` inside the whole network (forward hooks on the unit modules).

    In situ, a unit sees the cache state it has in real inference (its input just written by
    the previous unit, its weights evicted by the other units since the last call), which a
    unit timed alone in a loop does not: alone, its weights stay in L1/L2 and it runs faster.
    Same preparation as a whole-network measurement; per-unit median over the runs.
    """
    from lotto.arch.build import build_network
    from lotto.latency.measure import check_host_device, clock_fn, pinned_threads, steady_allocator

    dev = check_host_device(device)
    steady_allocator()
    now = clock_fn(clock, dev, threads)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    shape = (1, spec.in_channels, spec.resolution, spec.resolution)
    prepared = prepare(build_network(spec), shape, device, dtype=dtype)
    modules = dict(prepared.module.named_modules())
    units: dict[str, list[str]] = {}
    for ctx in spec.block_contexts():
        if ctx.name == "classifier":  # pool -> flatten -> [hidden] -> dropout -> FC
            units[ctx.name] = [n for n in ("pool", "hidden", "dropout", "classifier")
                               if modules.get(n) is not None]
        else:
            units[ctx.name] = [ctx.name]
    current: dict[str, float] = {}
    starts: dict[int, float] = {}

    def hooks(unit: str) -> tuple[Callable, Callable]:
        def pre(mod: Any, args: Any) -> None:
            sync()
            starts[id(mod)] = now()

        def post(mod: Any, args: Any, out: Any) -> None:
            sync()
            current[unit] = current.get(unit, 0.0) + now() - starts.pop(id(mod))

        return pre, post

    handles = []
    for unit, names in units.items():
        pre, post = hooks(unit)
        for name in names:
            handles.append(modules[name].register_forward_pre_hook(pre))
            handles.append(modules[name].register_forward_hook(post))
    runs: list[dict[str, float]] = []
    ref, scale = (lambda: None), None  # clock paired: the reference network before each pass
    if clock == "paired":
        from lotto.latency import paired

        ref, scale = paired.reference_call(threads), paired.reference_ms(threads, core) / 1e3
    try:
        with pinned_threads(threads, core), torch.inference_mode():
            for _ in range(5):
                ref()
                prepared()
            begin = time.perf_counter()
            while time.perf_counter() - begin < min_run_time or len(runs) < 10:
                ref_s = paired.reference_seconds(ref) if scale else 1.0
                current.clear()
                prepared()
                runs.append(dict(current) if scale is None
                            else {u: v / ref_s * scale for u, v in current.items()})
    finally:
        for h in handles:
            h.remove()
    out = {}
    for unit in units:
        ms = sorted(r[unit] * 1e3 for r in runs)
        q = statistics.quantiles(ms, n=4, method="inclusive")
        out[unit] = {"median": statistics.median(ms), "p25": q[0], "p75": q[2],
                     "mean": statistics.fmean(ms), "std": statistics.stdev(ms), "n": len(ms),
                     "number_per_run": 1, "context": spec.name}
    return out


def build_entries(
    lut: Lut,
    specs: Iterable[ArchSpec],
    *,
    min_run_time: float = 0.3,
    core: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    save_every: int = 20,
) -> int:
    """Measure every missing unit of `specs` into `lut` (saved as it goes); returns the count.

    Method `lut.meta["method"]`: insitu (default) times all units of a network that has any
    missing unit inside that network, keeping the first measurement of each key; isolated
    builds and times each missing unit alone (`build_block`).
    """
    device, threads, dtype, clock = _setup(lut, core)
    specs = list(specs)
    todo = lut.missing(specs)
    limit = float(lut.meta.get("max_iqr", UNIT_MAX_IQR))
    refused: dict[str, float] = {}  # key -> IQR/median of a unit too noisy to store
    if lut.meta.get("method", "insitu") == "isolated":
        for i, (key, (spec, info)) in enumerate(todo.items()):
            if progress:
                progress(i, len(todo), key)
            timing = time_unit(spec, info, device, threads, min_run_time, dtype, core, clock)
            for _ in range(REMEASURES):  # noisy: measured again, the least noisy one kept
                if not is_noisy(_iqr(timing)):
                    break
                again = time_unit(spec, info, device, threads, min_run_time, dtype, core, clock)
                timing = again if _iqr(again) < _iqr(timing) else timing
            if is_noisy(_iqr(timing), limit):
                refused[key] = _iqr(timing)
                continue
            lut.add(key, info, timing)
            if lut.path is not None and (i + 1) % save_every == 0:
                lut.save()  # a killed build keeps what it measured
    else:
        networks: dict[str, ArchSpec] = {}
        for spec, _ in todo.values():  # the networks that first brought each missing unit
            networks.setdefault(id(spec), spec)  # type: ignore[call-overload]
        for i, spec in enumerate(networks.values()):
            if progress:
                progress(i, len(networks), spec.name)
            infos = dict(lut._infos.units(spec))
            new = [n for n, info in infos.items() if info.key not in lut.entries]
            timings = time_units_in_situ(spec, device, threads, min_run_time, dtype, core,
                                         clock)
            for _ in range(REMEASURES):  # noisy units: the network again, least noisy kept
                if not any(is_noisy(_iqr(timings[n])) for n in new):
                    break
                again = time_units_in_situ(spec, device, threads, min_run_time, dtype, core,
                                           clock)
                for n in new:
                    if _iqr(again[n]) < _iqr(timings[n]):
                        timings[n] = again[n]
            for name in new:
                info = infos[name]
                if info.key in lut.entries:
                    continue
                if is_noisy(_iqr(timings[name]), limit):
                    refused[info.key] = _iqr(timings[name])
                    continue
                lut.add(info.key, info, timings[name])
            if lut.path is not None and (i + 1) % save_every == 0:
                lut.save()
        if progress:
            progress(len(networks), len(networks), "")
    if progress and lut.meta.get("method", "insitu") == "isolated":
        progress(len(todo), len(todo), "")
    lut.record_range(specs)
    if len(lut.entries) >= 3:
        lut.meta["unit_errors"] = lut.unit_errors()  # kept with the table, next to validation
    if lut.path is not None:
        lut.save()
    if refused:
        key, worst = max(refused.items(), key=lambda kv: kv[1])
        many = len(refused) > 1
        raise LottoError(
            f"{len(refused)} lookup-table unit{'s' if many else ''} stayed noisy after "
            f"{1 + REMEASURES} measurement{'s' if REMEASURES else ''} (IQR/median up to "
            f"{100 * worst:.0f}% > {100 * limit:.0f}%, e.g. {key}) and "
            f"{'were' if many else 'was'} not stored: the machine is busy. The table keeps "
            f"the {len(todo) - len(refused)} units measured cleanly; re-run on an idle "
            "machine to complete it")
    return len(todo)


def _iqr(t: dict[str, Any]) -> float:
    return (t["p75"] - t["p25"]) / t["median"] if t["median"] > 0 else 0.0


def measure_spec(spec: ArchSpec, device: str, threads: int, min_run_time: float,
                 dtype: str = "float32", core: int | None = None, clock: str = "wall") -> Any:
    from lotto.arch.build import build_network

    shape = (1, spec.in_channels, spec.resolution, spec.resolution)
    timing, _ = measure_module(build_network(spec), shape, device, threads=threads,
                               min_run_time=min_run_time, dtype=dtype, core=core, clock=clock)
    return timing


def calibrate_offset(lut: Lut, specs: list[ArchSpec], *, min_run_time: float = 0.5,
                     core: int | None = None) -> float:
    """Set `offset_ms` = median(measured - table sum) over reference networks (never < 0)."""
    device, threads, dtype, clock = _setup(lut, core)
    gaps = []
    for spec in specs:
        t = measure_spec(spec, device, threads, min_run_time, dtype, core, clock)
        units = lut.predict_spec(spec)[1]["units_ms"]
        gaps.append(t.median_ms - units)
    offset = max(0.0, statistics.median(gaps)) if gaps else 0.0
    lut.meta["offset_ms"] = offset
    lut.meta["offset_basis"] = {"networks": [s.name for s in specs], "gaps_ms": gaps,
                                "rule": "median(measured - sum of units), at least 0"}
    if lut.path is not None:
        lut.save()
    return offset


@dataclass(frozen=True)
class ValidationRow:
    network: str
    macs: int
    params: int
    measured_ms: float
    p25_ms: float
    p75_ms: float
    iqr_rel: float
    n: int
    units_ms: float
    lut_ms: float  # units + leave-one-out offset
    error: float  # (lut - measured) / measured
    raw_error: float  # without any offset
    hits: int
    misses: int


def validate(lut: Lut, specs: list[ArchSpec], *, min_run_time: float = 1.0,
             core: int | None = None,
             progress: Callable[[int, int, str], None] | None = None,
             offset: float | None = None, record: bool = True) -> dict[str, Any]:
    """Table sum vs measured end to end over `specs`.

    The offset applied to each network is the median gap of the *other* networks (leave one
    out), so no network is priced with its own measurement; or `offset` when given (e.g. the
    table's own, to check networks the table misses units of). With `record`, the table keeps
    the median gap over all of them as its offset and the RMSPE as its expected error.
    """
    device, threads, dtype, clock = _setup(lut, core)
    measured, sums, details = [], [], []
    for i, spec in enumerate(specs):
        if progress:
            progress(i, len(specs), spec.name)
        measured.append(measure_spec(spec, device, threads, min_run_time, dtype, core, clock))
        ms, detail = lut.predict_spec(spec)
        sums.append(detail["units_ms"])
        details.append(detail)
    if progress:
        progress(len(specs), len(specs), "")
    gaps = [t.median_ms - s for t, s in zip(measured, sums)]
    rows = []
    for i, (spec, t, s, d) in enumerate(zip(specs, measured, sums, details)):
        others = gaps[:i] + gaps[i + 1:]
        applied = offset if offset is not None else (
            max(0.0, statistics.median(others)) if others else 0.0)
        pred = s + applied
        rows.append(ValidationRow(
            spec.name, spec.macs(), spec.params(), t.median_ms, t.p25_ms, t.p75_ms, t.iqr_rel,
            t.n, s, pred, (pred - t.median_ms) / t.median_ms, (s - t.median_ms) / t.median_ms,
            d["hits"], d["interpolated"] + d["modelled"],
        ))
    errors = np.array([r.error for r in rows])
    raw = np.array([r.raw_error for r in rows])
    iqr = np.array([r.iqr_rel for r in rows])
    summary = {
        "n_networks": len(rows),
        "rmspe": float(np.sqrt(np.mean(errors**2))),
        "max_abs_error": float(np.max(np.abs(errors))),
        "rmspe_no_offset": float(np.sqrt(np.mean(raw**2))),
        "bias_no_offset": float(np.mean(raw)),
        "iqr_rel_median": float(np.median(iqr)),
        "iqr_rel_max": float(np.max(iqr)),
        "offset_ms": max(0.0, statistics.median(gaps)),
        "min_run_time": min_run_time,
        "date": _now(),
    }
    if record:
        lut.meta["offset_ms"] = summary["offset_ms"]
        lut.meta["offset_basis"] = {"networks": [s.name for s in specs], "gaps_ms": gaps,
                                    "rule": "median(measured - sum of units) over validation nets"}
        lut.meta["validation"] = summary
        if lut.path is not None:
            lut.save()
    return {"summary": summary, "rows": rows}
