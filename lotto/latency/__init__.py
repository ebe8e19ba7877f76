"""Latency with provenance: the one interface `bench`, `build-v3`, `search` and `netadapt` use.

    from lotto.latency import predict
    lat = predict(spec, "pixel1")        # Latency(ms=51.3, source='model', expected_error=0.081..)
    lat = predict(spec, "cpu")           # measured on this host (1 thread, BN folded, NHWC)
    lat = predict(spec, "cpu", source="lut", lut=table)   # sum of a lookup table

Devices: `cpu`, `cuda[:i]` (hosts: measured, or priced from a table built on this machine),
`xnnpack` (ExecuTorch + XNNPACK on this host: measured), `adb` / `adb:SERIAL` (the same program
on an Android phone over adb: measured), `pixel1`, `pixel2`, `pixel3` (`pixel` = `pixel1`: a
model calibrated on published numbers), and devices calibrated from a user's own measurements
(`lotto bench --calibrate RUN --as NAME`: the same model form fitted to them).
Every result says where it came from (`source`: measured | lut | model) and how wrong it is
expected to be (`expected_error`, relative: 0.08 = 8%).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lotto.arch import ArchSpec, load_spec
from lotto.errors import LottoError
from lotto.latency.devices import (
    ALIASES,
    DEVICES,
    PHONES,
    canonical_device,
    is_phone,
    is_runtime_device,
    outside_range,
    range_warnings,
    widen,
)
from lotto.latency.lut import Lut
from lotto.latency.measure import Timing, check_host_device, measure_module
from lotto.latency.phone import FEATURES, load_phone_model, module_features

SOURCES = ("measure", "lut", "model")
_SOURCE_NAME = {"measure": "measured", "lut": "lut", "model": "model"}


@dataclass(frozen=True)
class Latency:
    """A latency in milliseconds with its provenance.

    source: measured (timed on this host) | lut (sum of a host lookup table) | model (a fitted
    cost model: the phone models, or a host table's fallback model).
    expected_error: relative; measured = IQR/median of the timing, lut = the table's validation
    RMSPE (plus misses, at their leave-one-out error over table entries), model = the phones'
    expected raw error (strict cross-validation; `detail["rel_error"]` is the relative/rank
    part, `detail["scale_error"]` the runtime-scale part) or the host model's leave-one-out
    error. Outside the
    calibration range it is widened and `detail["warnings"]` says so; `detail
    ["expected_error_basis"]` is `guess` where nothing measured it yet.
    detail: measured -> p25_ms, p75_ms, mean_ms, std_ms, n, threads, fingerprint, ...;
    lut -> hits, interpolated, modelled, offset_ms, ...; model -> model version, n_rows, ...
    """

    ms: float
    source: str
    expected_error: float
    device: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def provenance(self) -> str:
        """One line that keeps a prediction from being mistaken for a measurement."""
        d = self.detail
        if self.source == "measured":
            per = d.get("number_per_run") or 1
            runs = f"{d.get('n')} runs" if per == 1 else f"{d.get('n')} blocks of {per} runs"
            return (f"source=measured({self.device}, median of {runs}, "
                    f"threads={d.get('threads')}, clock={d.get('clock', 'wall')}, "
                    f"IQR/median={self.expected_error * 100:.1f}%)")
        guess = " (a guess: not measured yet)" if d.get("expected_error_basis") == "guess" else ""
        if self.source == "lut":
            return (f"source=lut({self.device}, {d.get('hits')} hits, {d.get('interpolated')} "
                    f"interpolated, {d.get('modelled')} modelled, offset "
                    f"{d.get('offset_ms', 0):.3f} ms, expected RMSPE ~ "
                    f"{self.expected_error * 100:.0f}%{guess})")
        if d.get("expected_error_basis") in ("guess", "measured"):  # the host model
            return f"source={d['provenance']}, expected error ~ " \
                   f"{self.expected_error * 100:.0f}%{guess}"
        return f"source={d.get('provenance', f'model({self.device})')}"


def _as_spec(arch: ArchSpec | nn.Module | str) -> tuple[ArchSpec | None, nn.Module | None]:
    if isinstance(arch, ArchSpec):
        return arch, None
    if isinstance(arch, str):
        return load_spec(arch), None
    if isinstance(arch, nn.Module):
        spec = getattr(arch, "spec", None)  # networks built by lotto.arch carry their spec
        return (spec if isinstance(spec, ArchSpec) else None), arch
    raise LottoError(f"cannot price a {type(arch).__name__}: give an ArchSpec or an nn.Module")


def predict(
    arch: ArchSpec | nn.Module | str,
    device: str = "pixel1",
    *,
    source: str | None = None,
    threads: int = 1,
    lut: Lut | None = None,
    input_shape: tuple[int, ...] | None = None,
    min_run_time: float = 1.0,
    warmup: int = 10,
    dtype: str = "float32",
    core: int | None = None,
    clock: str = "wall",
    cache_dir: str | Path | None = None,
    cache_key: str | None = None,
    adb: dict[str, Any] | None = None,
    calibration: Callable[[], list[Any]] | None = None,
) -> Latency:
    """Latency of `arch` (spec, module, preset name or spec file) on `device`.

    source: None = `measure` on hosts, `model` on phones; `lut` (hosts) sums `lut`; `model`
    on a host uses `lut`'s fitted fallback model. Phones accept only `model`.
    input_shape: for a module without a spec (default (1, 3, 224, 224)).
    clock: wall (default), thread (CPU time of the timing thread; cpu at 1 thread, for
    machines shared with other work) or paired (cpu: relative to a reference network run
    before each call, `lotto.latency.paired`, for machines whose speed drifts).
    Fast path: a phone model or table prices a spec from per-unit caches (> 10^4 per second
    when units repeat, as in search loops).
    Mobile runtimes (`xnnpack`, `adb`, `adb:SERIAL`) are measured: the network is exported to
    ExecuTorch + XNNPACK (`dtype` float32 or int8; programs cached in `cache_dir` under
    `cache_key`, by default a hash of the spec) and timed here or on the phone (`adb`: runner,
    repeats, ... as in `lotto.latency.adb.AdbSettings`). Calibrated user devices (`lotto bench
    --calibrate RUN --as NAME`) are priced like phones, by their own fitted model.
    """
    dev = canonical_device(device)
    phone = is_phone(dev)
    if is_runtime_device(dev):
        if (source or "measure") != "measure":
            raise LottoError(f"{dev} is measured through a mobile runtime: --source measure "
                             f"(lookup tables and models for it: calibrate a device with "
                             f"`lotto bench --calibrate`)")
        spec, module = _as_spec(arch)
        return _measure_runtime(spec, module, dev, threads, input_shape, min_run_time, warmup,
                                dtype, core, clock, cache_dir, cache_key, adb, calibration)
    src = source or ("model" if phone else "measure")
    if src not in SOURCES:
        raise LottoError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    spec, module = _as_spec(arch)
    if phone:
        if src != "model":
            raise LottoError(f"{dev} is a phone: its latency can only come from the model "
                             f"(--source model), not {src}")
        return _predict_phone(spec, module, dev, input_shape)
    check_host_device(dev)
    if src == "measure":
        return _measure(spec, module, dev, threads, input_shape, min_run_time, warmup, dtype, core,
                        clock)
    if spec is None:
        raise LottoError("a lookup table prices architecture specs, not arbitrary modules; "
                         "use --source measure")
    if lut is None:
        raise LottoError(f"no lookup table for {dev}: build one with "
                         f"`lotto bench --device {dev} --build-lut`")
    if src == "lut":
        ms, detail = lut.predict_spec(spec)
        err = (lut.expected_error**2 + detail["miss_error"] ** 2) ** 0.5
        detail = {**detail, "lut": str(lut.path) if lut.path else None,
                  "threads": lut.meta.get("threads")}
        misses = bool(detail["interpolated"] or detail["modelled"])
        return _host_error(Latency(ms, "lut", err, dev, detail), lut, spec, misses)
    # host "model": the table's additive fallback model over every unit; its unit error
    # (leave-one-out over entries) on top of the table's validation error
    ms = lut.model_spec(spec)
    err = (lut.expected_error**2 + lut.unit_errors()["model"]["rmspe"] ** 2) ** 0.5
    detail = {"provenance": f"model(host additive model fitted on {len(lut.entries)} "
                            f"{dev} table entries)", "lut": str(lut.path) if lut.path else None}
    return _host_error(Latency(ms, "model", err, dev, detail), lut, spec, True)


def _host_error(lat: Latency, lut: Lut, spec: ArchSpec, misses: bool) -> Latency:
    """Say what the host error bar rests on, and widen it outside the table's range."""
    basis = {"network": lut.expected_error_basis}
    if misses:
        basis.update({k: v["basis"] for k, v in lut.unit_errors().items()})
    guessed = sorted(k for k, v in basis.items() if v == "guess")
    detail = {**lat.detail, "expected_error_basis": "guess" if guessed else "measured",
              "expected_error_parts": basis}
    warnings = []
    if guessed:
        warnings.append(f"expected error for {', '.join(guessed)} is a guess: nothing measured "
                        "it yet (run `lotto bench --validate` on this table)")
    where = {"resolution": spec.resolution, "width_mult": spec.width_mult, "macs": spec.macs()}
    ranges = lut.meta.get("range") or {}
    distance = outside_range(where, ranges)
    err = lat.expected_error
    if distance:
        err = widen(err, distance)
        warnings += range_warnings("lookup table", where, ranges, distance)
    if warnings:
        detail["warnings"] = warnings
    return Latency(lat.ms, lat.source, err, lat.device, detail)


def _predict_phone(spec: ArchSpec | None, module: nn.Module | None, dev: str,
                   input_shape: tuple[int, ...] | None) -> Latency:
    model = load_phone_model(dev)
    if spec is not None:
        ms = model.predict_spec(spec)
        where = {"resolution": spec.resolution, "width_mult": spec.width_mult,
                 "macs": spec.macs()}
    else:
        assert module is not None
        shape = input_shape or (1, 3, 224, 224)
        features = module_features(module, shape)
        ms = model.predict_features(features)
        macs = sum(features[FEATURES.index(f)] for f in ("conv_macs", "dw_macs", "fc_macs"))
        where = {"resolution": shape[-1], "macs": macs}
    ranges = model.info.get("calibration_range", {})
    distance = outside_range(where, ranges)
    detail = {"provenance": model.provenance(), "model": model.version, "n_rows": model.n_rows,
              "scale": model.scale, "expected_error_basis": "cross-validation"}
    if model.info.get("rel_error") is not None:  # relative/rank vs runtime-scale parts
        detail.update(rel_error=model.info["rel_error"], scale_error=model.info["scale_error"])
    error = model.expected_error
    if distance:
        error = widen(error, distance)
        detail.update(expected_error_basis="cross-validation, widened outside the calibration "
                      "range (a guess)", warnings=range_warnings("phone model", where, ranges,
                                                                 distance))
    return Latency(ms, "model", error, dev, detail)


def _module_and_shape(spec: ArchSpec | None, module: nn.Module | None,
                      input_shape: tuple[int, ...] | None) -> tuple[nn.Module, tuple[int, ...]]:
    """The module to time (built from the spec when not given) and its input shape."""
    if module is None:
        from lotto.arch.build import build_network

        assert spec is not None
        module = build_network(spec)
    if input_shape is None:
        input_shape = ((1, spec.in_channels, spec.resolution, spec.resolution)
                       if spec is not None else (1, 3, 224, 224))
    return module, input_shape


def _measure(spec: ArchSpec | None, module: nn.Module | None, dev: str, threads: int,
             input_shape: tuple[int, ...] | None, min_run_time: float, warmup: int,
             dtype: str, core: int | None, clock: str) -> Latency:
    from lotto.latency.measure import fingerprint

    module, input_shape = _module_and_shape(spec, module, input_shape)
    timing, info = measure_module(module, input_shape, dev, threads=threads,
                                  min_run_time=min_run_time, warmup=warmup, dtype=dtype,
                                  core=core, clock=clock)
    detail = {**timing.summary(), **info, "fingerprint": fingerprint(dev, threads)}
    return Latency(timing.median_ms, "measured", timing.iqr_rel, dev, detail)


def _measure_runtime(spec: ArchSpec | None, module: nn.Module | None, dev: str, threads: int,
                     input_shape: tuple[int, ...] | None, min_run_time: float, warmup: int,
                     dtype: str, core: int | None, clock: str, cache_dir: str | Path | None,
                     cache_key: str | None, adb: dict[str, Any] | None,
                     calibration: Callable[[], list[Any]] | None) -> Latency:
    """xnnpack (this host) or adb (a phone): export once, then time through the runtime."""
    from lotto.latency import xnnpack

    xnnpack.require(dev)
    module, input_shape = _module_and_shape(spec, module, input_shape)
    if cache_key is None and spec is not None:
        extra = {"calibration": "data" if calibration is not None else "noise"} \
            if dtype == "int8" else None
        cache_key = xnnpack.cache_key(spec.to_dict(), tuple(input_shape), dtype, extra)
    folder = Path(cache_dir) if cache_dir is not None else None
    if dev == "xnnpack":
        timing, info = xnnpack.measure(module, tuple(input_shape), threads=threads,
                                       min_run_time=min_run_time, warmup=warmup, dtype=dtype,
                                       core=core, clock=clock, cache_dir=folder, key=cache_key,
                                       calibration=calibration)
        detail = {**timing.summary(), **info, "fingerprint": xnnpack.fingerprint(threads)}
        return Latency(timing.median_ms, "measured", timing.iqr_rel, dev, detail)
    from lotto.latency import adb as adb_mod

    settings = adb_mod.AdbSettings.from_dict(adb or {})
    session = adb_mod.connect(dev, settings)  # fails fast: no adb, no device, no runner
    exported = xnnpack.exported_for(module, tuple(input_shape), dtype=dtype,
                                    calibration=calibration, cache_dir=folder, key=cache_key)
    timing, info = session.measure(exported, threads=threads, warmup=warmup)
    detail = {**timing.summary(), **exported.summary(), **info, "dtype": dtype, "clock": "runner",
              "batch": int(input_shape[0]), "input_shape": list(input_shape)}
    return Latency(timing.median_ms, "measured", timing.iqr_rel, session.device, detail)


__all__ = [
    "ALIASES",
    "DEVICES",
    "PHONES",
    "SOURCES",
    "Latency",
    "Lut",
    "Timing",
    "canonical_device",
    "is_phone",
    "predict",
]
