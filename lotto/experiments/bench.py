"""`lotto bench`: price one network, build a host lookup table, or validate a latency source.

Three modes, one run directory (`runs/bench/<name>/`):

- price (default): one network on one device through `lotto.latency.predict`; optionally a
  per-layer table (measured with forward hooks on hosts, table units with `--source lut`,
  model terms on phones).
- `--build-lut`: measure every unit of a search space missing from the host's cached table,
  then calibrate the table's per-call offset on a few reference networks from the space.
- `--validate`: hosts: table sum vs measured end to end over networks drawn from the space;
  phones: the leave-one-family-out cross-validation of the shipped model (and its baseline).

Rows go to `metrics.csv/.parquet` (one per network priced; columns in METRIC_COLUMNS),
`layers.csv/.parquet` (per layer) and `lut_entries.csv/.parquet` (units measured); headline
numbers to `summary.json`. A network whose row exists is not priced again (resume).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from lotto.arch import ArchSpec, load_spec, preset, scale_width
from lotto.config import check
from lotto.errors import LottoError
from lotto.latency import DEVICES, SOURCES, Latency, canonical_device, is_phone, predict
from lotto.latency.devices import is_runtime_device
from lotto.latency.lut import (
    Lut,
    build_entries,
    calibrate_offset,
    lut_path,
    open_lut,
)
from lotto.latency.lut import validate as validate_lut
from lotto.latency.measure import DTYPES, fingerprint, prepare, profile_layers
from lotto.runs import MetricsLog, RunDir
from lotto.search.space import Space, load_space

# metrics.csv: one row per network priced; every row has every column (empty = n/a)
METRIC_COLUMNS = (
    "kind", "network", "device", "source", "latency_ms", "expected_error", "p25_ms", "p75_ms",
    "mean_ms", "std_ms", "n", "number_per_run", "threads", "dtype", "macs", "params",
    "resolution", "width_mult", "lut_hits", "lut_interpolated", "lut_modelled", "offset_ms",
    "measured_ms", "units_ms", "error", "raw_error", "held_out", "source_group",
    "baseline_ms", "seconds",
)
LAYER_COLUMNS = (
    "network", "device", "source", "index", "layer", "op", "in_shape", "out_shape", "macs",
    "ms", "pct", "cdf_pct", "status",
)
Progress = Callable[[int, int, str], None]
# metric columns that a resumed row gives back to Latency.detail
_DETAIL_COLUMNS = ("p25_ms", "p75_ms", "mean_ms", "std_ms", "n", "number_per_run", "threads",
                   "dtype", "lut_hits", "lut_interpolated", "lut_modelled", "offset_ms",
                   "units_ms")
_RENAME = {"lut_hits": "hits", "lut_interpolated": "interpolated", "lut_modelled": "modelled"}


@dataclass
class BenchResult:
    mode: str  # price | build_lut | validate
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    run: RunDir | None = None


# ---------------------------------------------------------------------------------------------
# Config -> device, spec, space


def resolve_bench_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return canonical_device(name)


RUNTIME_DTYPES = ("float32", "int8")


def resolve_spec(cfg: DictConfig) -> ArchSpec:
    """The network to price: `arch` file or `model` preset, then width, resolution, classes."""
    check(cfg.width_mult is not None and cfg.width_mult > 0, "width_mult", "must be > 0")
    if cfg.resolution is not None:
        check(cfg.resolution > 0, "resolution", "must be > 0")
    if cfg.arch:
        spec = load_spec(Path(str(cfg.arch)))
        if cfg.width_mult != 1.0:
            spec = scale_width(spec, float(cfg.width_mult))
        changes: dict[str, Any] = {}
        if cfg.resolution:
            changes["resolution"] = int(cfg.resolution)
        if cfg.num_classes:
            changes["num_classes"] = int(cfg.num_classes)
        return spec.replace(**changes).validate() if changes else spec.validate()
    return preset(str(cfg.model), float(cfg.width_mult), int(cfg.resolution or 224),
                  int(cfg.num_classes or 1000), rule=str(cfg.width_rule))


def resolve_space(cfg: DictConfig) -> Space:
    if cfg.lut.space:
        return load_space(str(cfg.lut.space), int(cfg.resolution) if cfg.resolution else None)
    from lotto.config import defaults_path

    return load_space(defaults_path("search"), int(cfg.resolution) if cfg.resolution else None)


def check_bench_config(cfg: DictConfig, device: str) -> None:
    check(cfg.threads >= 1, "threads", "must be >= 1")
    if is_runtime_device(device):
        check(cfg.dtype in RUNTIME_DTYPES, "dtype",
              f"{device} runs {', '.join(RUNTIME_DTYPES)} programs")
        check(cfg.source in (None, "measure"), "source",
              f"{device} is measured through a mobile runtime (source measure)")
        check(not cfg.build_lut and not cfg.validate, "build_lut",
              f"lookup tables are not built on {device} yet; measure networks and calibrate "
              "a device model with --calibrate instead")
        check(not cfg.per_layer, "per_layer", f"per-layer tables are not available on {device}")
        check(cfg.adb.runs >= 1 and cfg.adb.repeats >= 1, "adb", "runs and repeats must be >= 1")
        check(cfg.xnnpack.calibration.batches >= 1, "xnnpack.calibration.batches", "must be >= 1")
        return
    check(cfg.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")
    check(cfg.source is None or cfg.source in SOURCES, "source",
          f"must be one of {', '.join(SOURCES)}")
    check(cfg.measure.min_run_time > 0, "measure.min_run_time", "must be > 0")
    from lotto.latency.measure import CLOCKS

    check(cfg.measure.clock in CLOCKS, "measure.clock", f"must be one of {', '.join(CLOCKS)}")
    check(cfg.lut.min_run_time > 0, "lut.min_run_time", "must be > 0")
    from lotto.latency.lut import METHODS

    check(cfg.lut.method in METHODS, "lut.method", f"must be one of {', '.join(METHODS)}")
    check(cfg.validation.networks >= 2, "validation.networks", "must be >= 2")
    if is_phone(device):
        check(cfg.source in (None, "model"), "source",
              f"{device} is a phone: its latency comes from the model only")
        from lotto.latency.devices import is_calibrated

        check(not (cfg.validate and is_calibrated(device)), "validate",
              f"{device} is a calibrated device: its cross-validation is in its --calibrate "
              "run (calibration_cv rows) and <runs_dir>/devices file")
        check(not cfg.build_lut, "build_lut", "lookup tables are built on host devices only")
    if device not in DEVICES and not device.startswith("cuda:") and not is_phone(device):
        raise LottoError(f"unknown device {device!r}")


# ---------------------------------------------------------------------------------------------
# Entry point


def check_modes(cfg: DictConfig) -> None:
    """Devices calibrated under runs_dir known by name; --as only with --calibrate."""
    from lotto.latency.devices import add_runs_dir

    add_runs_dir(cfg.run.runs_dir)  # calibrated devices stored there are known by name
    if cfg.calibrate_as and not cfg.calibrate:
        raise LottoError("--as NAME names the device a --calibrate fit registers: give "
                         "--calibrate RUN[,RUN...] too (bench runs measured on the device)")


def prepare_bench(cfg: DictConfig) -> tuple[str, ArchSpec | None, Space | None]:
    """The checks of a price / --build-lut / --validate run before a run directory exists (also
    `--dry-run`'s): (device, the network priced or None, the space of host tables or None)."""
    device = resolve_bench_device(str(cfg.device))
    check_bench_config(cfg, device)
    if is_runtime_device(device):  # checks that need no export: before a run dir exists
        from lotto.latency import xnnpack

        xnnpack.require(device)
        if device.startswith("adb"):
            from lotto.latency.adb import AdbSettings, connect

            connect(device, AdbSettings.from_dict(_plain(cfg.adb)))
    elif not is_phone(device):
        from lotto.latency.measure import check_host_device

        check_host_device(device)  # `--device cuda` without a GPU fails before a run dir exists
    spec = None if (cfg.build_lut or cfg.validate) else resolve_spec(cfg)
    host_tables = not is_phone(device) and (cfg.build_lut or cfg.validate)
    space = resolve_space(cfg) if host_tables else None
    return device, spec, space


def run_bench(cfg: DictConfig, *, force: bool = False, progress: Progress | None = None,
              warn: Callable[[str], None] | None = None) -> BenchResult:
    check_modes(cfg)
    if cfg.calibrate:
        return run_calibrate(cfg, force=force)
    device, spec, space = prepare_bench(cfg)
    run = RunDir.open(cfg, "bench", force=force)
    if cfg.build_lut or (cfg.validate and not is_phone(device)):
        lut = _table(cfg, device, warn)
        result = BenchResult("build_lut", {})
        if cfg.build_lut:
            result = _build(cfg, run, lut, space, progress)  # type: ignore[arg-type]
        if cfg.validate:
            result = _validate_host(cfg, run, lut, space, progress, result)  # type: ignore[arg-type]
    elif cfg.validate:
        result = _validate_phone(run, device)
    else:
        assert spec is not None
        result = _price(cfg, run, device, spec, warn, progress)
    result.run = run
    run.write_json("summary.json", result.summary)
    if len(result.rows) >= 2:  # validation: predicted vs measured, latency vs MACs
        import pandas as pd

        from lotto.report.plots import save_run_figure
        from lotto.runs import atomic_write

        save_run_figure("bench", pd.DataFrame(result.rows), run.file("bench.png"),
                        write=atomic_write)
    return result


# ---------------------------------------------------------------------------------------------
# Price one network


def _table(cfg: DictConfig, device: str, warn: Callable[[str], None] | None) -> Lut:
    clock, method = str(cfg.measure.clock), str(cfg.lut.method)
    path = Path(str(cfg.lut.file)) if cfg.lut.file else lut_path(
        cfg.run.runs_dir, device, int(cfg.threads), str(cfg.dtype), clock, method)
    return open_lut(path, device, int(cfg.threads), str(cfg.dtype), warn, clock, method)


def _row(kind: str, spec: ArchSpec, lat: Latency, cfg: DictConfig, seconds: float,
         **extra: Any) -> dict[str, Any]:
    d = lat.detail
    row: dict[str, Any] = dict.fromkeys(METRIC_COLUMNS)
    row.update(
        kind=kind, network=spec.name, device=lat.device, source=lat.source, latency_ms=lat.ms,
        expected_error=lat.expected_error, macs=spec.macs(), params=spec.params(),
        resolution=spec.resolution, width_mult=spec.width_mult, seconds=seconds,
    )
    if lat.source == "measured":
        row.update(p25_ms=d["p25_ms"], p75_ms=d["p75_ms"], mean_ms=d["mean_ms"],
                   std_ms=d["std_ms"], n=d["n"], number_per_run=d["number_per_run"],
                   threads=d["threads"], dtype=d["dtype"])
    elif lat.source == "lut":
        row.update(lut_hits=d["hits"], lut_interpolated=d["interpolated"],
                   lut_modelled=d["modelled"], offset_ms=d["offset_ms"],
                   units_ms=d["units_ms"], threads=d.get("threads"), dtype=cfg.dtype)
    row.update(extra)
    return row


def _price(cfg: DictConfig, run: RunDir, device: str, spec: ArchSpec,
           warn: Callable[[str], None] | None, progress: Progress | None) -> BenchResult:
    log = MetricsLog(run)
    layers_log = MetricsLog(run, "layers")
    phone = is_phone(device)
    source = cfg.source or ("model" if phone else "measure")
    lut = None
    if not phone and source in ("lut", "model"):
        lut = _table(cfg, device, warn)
        missing = lut.missing([spec])
        if missing:  # built on demand: time the units this network needs
            build_entries(lut, [spec], min_run_time=float(cfg.lut.min_run_time),
                          core=cfg.pin_core, progress=progress)
        if lut.meta.get("offset_basis") is None and warn:
            warn(f"lookup table {lut.path} has no calibrated offset yet: its sums under-predict "
                 "by the per-call overhead; run `lotto bench --build-lut` or `--validate`")
    done = log.find(kind="bench", network=spec.name, device=device)
    if done:
        row = done[-1]
        kept = {_RENAME.get(k, k): v for k, v in row.items()
                if k in _DETAIL_COLUMNS and v == v and v is not None}
        lat = Latency(float(row["latency_ms"]), str(row["source"]),
                      float(row["expected_error"]), device, {**kept, "resumed": True})
    else:
        start = time.perf_counter()
        runtime = {}
        if is_runtime_device(device):
            runtime = {"cache_dir": Path(str(cfg.run.runs_dir)).expanduser() / "bench" / "xnnpack",
                       "adb": _plain(cfg.adb), "calibration": _calibration_batches(cfg, spec)}
        lat = predict(spec, device, source=source, threads=int(cfg.threads), lut=lut,
                      min_run_time=float(cfg.measure.min_run_time),
                      warmup=int(cfg.measure.warmup), dtype=str(cfg.dtype), core=cfg.pin_core,
                      clock=str(cfg.measure.clock), **runtime)
        log.append(_row("bench", spec, lat, cfg, time.perf_counter() - start))
        row = log.rows[-1]
    for message in lat.detail.get("warnings", []):  # e.g. far outside the calibration range
        if warn:
            warn(message)
    layers: list[dict[str, Any]] = []
    if cfg.per_layer:
        layers = [r for r in layers_log.rows if r.get("network") == spec.name]
        if not layers:
            layers = _per_layer(cfg, device, spec, lat, lut)
            layers_log.append(layers)
    summary = {
        "mode": "price",
        "device": device,
        "network": spec.name,
        "latency_ms": lat.ms,
        "source": lat.source,
        "expected_error": lat.expected_error,
        "provenance": lat.provenance(),
        "params": spec.params(),
        "macs": spec.macs(),
        "resolution": spec.resolution,
        "width_mult": spec.width_mult,
        "blocks": spec.block_strings(),
        "detail": {k: v for k, v in lat.detail.items() if k != "fingerprint"},
        "resumed": bool(done),
    }
    if not phone:
        summary["fingerprint"] = lat.detail.get("fingerprint") or fingerprint(device, cfg.threads)
        summary["threads"] = int(cfg.threads)
    if lut is not None:
        summary["lut"] = str(lut.path)
    return BenchResult("price", summary, [row], layers)


def _with_shares(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    total = sum(r["ms"] for r in rows) or 1.0
    cdf = 0.0
    for i, r in enumerate(rows):
        cdf += r["ms"]
        r.update(index=i, pct=100 * r["ms"] / total, cdf_pct=100 * cdf / total)
    return rows


def _per_layer(cfg: DictConfig, device: str, spec: ArchSpec, lat: Latency,
               lut: Lut | None) -> list[dict[str, Any]]:
    base = {"network": spec.name, "device": device, "source": lat.source}
    rows: list[dict[str, Any]] = []
    if lat.source == "measured":
        from lotto.arch.build import build_network

        prepared = prepare(build_network(spec),
                           (1, spec.in_channels, spec.resolution, spec.resolution), device,
                           dtype=str(cfg.dtype))
        for t in profile_layers(prepared, device, threads=int(cfg.threads),
                                runs=int(cfg.measure.per_layer_runs)):
            if t.op in ("identity", "dropout", "flatten"):
                continue
            rows.append({**base, "layer": t.layer, "op": t.op, "in_shape": _shape(t.in_shape),
                         "out_shape": _shape(t.out_shape), "macs": t.macs, "ms": t.ms,
                         "status": "hook"})
    elif lat.source == "lut":
        assert lut is not None
        for r in lut.unit_rows(spec):
            rows.append({**base, **r, "in_shape": _hwc(r["in_shape"]),
                         "out_shape": _hwc(r["out_shape"])})
    else:
        from lotto.latency.phone import load_phone_model

        if not is_phone(device):
            raise LottoError("--per-layer with --source model is for phones; use lut or measure")
        model = load_phone_model(device)
        for layer, ms in model.predict_layers(spec):
            rows.append({**base, "layer": layer.name, "op": layer.op,
                         "in_shape": f"{layer.in_h}x{layer.in_w}x{layer.in_c}",
                         "out_shape": f"{layer.out_h}x{layer.out_w}x{layer.out_c}",
                         "macs": layer.macs, "ms": ms, "status": "model"})
        rows.append({**base, "layer": "(fixed per inference)", "op": "fixed", "in_shape": "",
                     "out_shape": "", "macs": 0, "ms": model.fixed_ms, "status": "model"})
    return [{c: r.get(c) for c in LAYER_COLUMNS} for r in _with_shares(rows)]


def _shape(shape: tuple[int, ...]) -> str:
    # NCHW from hooks -> HxWxC like the spec's layer table (batch dropped)
    if len(shape) == 4:
        return f"{shape[2]}x{shape[3]}x{shape[1]}"
    return "x".join(str(s) for s in shape[1:])


def _hwc(shape: Any) -> str:
    return "x".join(str(int(s)) for s in shape)


# ---------------------------------------------------------------------------------------------
# Lookup tables


def _build(cfg: DictConfig, run: RunDir, lut: Lut, space: Space,
           progress: Progress | None) -> BenchResult:
    entries_log = MetricsLog(run, "lut_entries")
    before = set(lut.entries)
    start = time.perf_counter()
    carriers = list(space.carriers())
    measured = build_entries(lut, carriers, min_run_time=float(cfg.lut.min_run_time),
                             core=cfg.pin_core, progress=progress)
    new = [k for k in lut.entries if k not in before]
    if new:
        entries_log.append([_entry_row(k, lut.entries[k]) for k in new])
    refs = space.sample(int(cfg.lut.reference_networks), int(cfg.seed) + 1000)
    offset = float(lut.meta.get("offset_ms") or 0.0)
    if measured or lut.meta.get("offset_basis") is None:
        offset = calibrate_offset(lut, refs, min_run_time=float(cfg.validation.min_run_time),
                                  core=cfg.pin_core)
    needed = len(lut.missing(carriers)) == 0
    summary = {
        "mode": "build_lut",
        "device": lut.meta["device"],
        "lut": str(lut.path),
        "space": space.source,
        "space_networks": space.size(),
        "entries": len(lut.entries),
        "measured_now": measured,
        "complete": needed,
        "offset_ms": offset,
        "threads": lut.meta["threads"],
        "fingerprint": lut.meta["fingerprint"],
        "seconds": time.perf_counter() - start,
    }
    return BenchResult("build_lut", summary)


def _entry_row(key: str, e: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "part": e["part"], "macs": e["macs"], "params": e["params"],
            "median_ms": e["median"], "p25_ms": e["p25"], "p75_ms": e["p75"],
            "mean_ms": e["mean"], "std_ms": e["std"], "n": e["n"]}


def _validate_host(cfg: DictConfig, run: RunDir, lut: Lut, space: Space,
                   progress: Progress | None, built: BenchResult) -> BenchResult:
    log = MetricsLog(run)
    specs = space.sample(int(cfg.validation.networks), int(cfg.seed))
    done = log.find(kind="validation")
    if len(done) == len(specs) and (lut.meta.get("validation") or {}).get("n_networks"):
        summary = {**built.summary, "mode": "validate", "device": lut.meta["device"],
                   "lut": str(lut.path), "space": space.source, "resumed": True,
                   "validation": lut.meta["validation"], "fingerprint": lut.meta["fingerprint"],
                   "threads": lut.meta["threads"]}
        return BenchResult("validate", summary, done)
    if lut.missing(specs):
        build_entries(lut, specs, min_run_time=float(cfg.lut.min_run_time), core=cfg.pin_core,
                      progress=progress)
    result = validate_lut(lut, specs, min_run_time=float(cfg.validation.min_run_time),
                          core=cfg.pin_core, progress=progress)
    rows = []
    for spec, v in zip(specs, result["rows"]):
        row: dict[str, Any] = dict.fromkeys(METRIC_COLUMNS)
        row.update(
            kind="validation", network=v.network, device=lut.meta["device"], source="lut",
            latency_ms=v.lut_ms, expected_error=result["summary"]["rmspe"], p25_ms=v.p25_ms,
            p75_ms=v.p75_ms, n=v.n, threads=lut.meta["threads"], dtype=lut.meta["dtype"],
            macs=v.macs, params=v.params, resolution=spec.resolution,
            width_mult=spec.width_mult, lut_hits=v.hits, lut_interpolated=v.misses,
            offset_ms=v.lut_ms - v.units_ms, measured_ms=v.measured_ms, units_ms=v.units_ms,
            error=v.error, raw_error=v.raw_error,
        )
        rows.append(row)
    log.append(rows)
    summary = {**built.summary, "mode": "validate", "device": lut.meta["device"],
               "lut": str(lut.path), "space": space.source,
               "validation": result["summary"],
               "fingerprint": lut.meta["fingerprint"], "threads": lut.meta["threads"]}
    return BenchResult("validate", summary, rows)


# ---------------------------------------------------------------------------------------------
# Phone cross-validation


def _validate_phone(run: RunDir, device: str) -> BenchResult:
    from lotto.latency.calibrate import SHARED_SHAPE_NOTE, _plain, load_calibration, validation

    cal = load_calibration()
    if device == "pixel4":
        return _validate_pixel4(run, cal)
    v = validation(cal)  # strict: the shipped errors come from it
    cv, base, leaky, cv3 = v["cv"], v["cv_base"], v["cv_leaky"], v["cv3"]
    sel = (cal.rows.device == device).to_numpy()
    rows = []
    for i in np.where(sel)[0]:
        r = cal.rows.iloc[i]
        row: dict[str, Any] = dict.fromkeys(METRIC_COLUMNS)
        row.update(
            kind="phone_cv", network=r.network, device=device, source="model",
            latency_ms=float(cv["predictions"][i]),
            expected_error=cv["devices"][device]["pooled"]["rmspe"],
            resolution=int(r.resolution), width_mult=float(r.width_mult),
            macs=int(round(r.counted_mmacs * 1e6)), measured_ms=float(cv["truth"][i]),
            error=float(cv["predictions"][i] / cv["truth"][i] - 1), held_out=r.family2,
            source_group=r.group, baseline_ms=float(base["predictions"][i]),
        )
        rows.append(row)
    log = MetricsLog(run)
    if not log.find(kind="phone_cv", device=device):  # deterministic: a resumed run keeps it
        log.append(rows)

    def pick(c: dict[str, Any]) -> dict[str, Any]:
        return c["devices"][device]

    summary = {
        "mode": "validate",
        "device": device,
        "cv_lofo_v2_v3": pick(cv),
        "cv_lofo_v2_v3large_v3small": pick(cv3),
        "cv_lofo_v2_v3_shared_factors": pick(leaky),
        "baseline_lofo_v2_v3": pick(base),
        "leave_one_source_out": _plain(v["loso"]),
        "fbnet_leave_one_shape_out": _plain(v["shape"]),
        "fbnet_macs_one_scale": v["fbnet_macs"],
        **_independent_checks(cal, v, device),
        # per-phone error bars; coverage: strict (each source scored by error bars calibrated
        # without it); `note` when the phone has too few rows for its own relative error
        "errors": {**_plain(v["quoted"])["devices"][device],
                   "coverage_pooled": v["quoted"]["coverage"],
                   "coverage_in_sample_pooled": v["quoted"]["coverage_in_sample"],
                   "level": v["quoted"]["level"], "calibrated_on": v["quoted"]["calibrated_on"],
                   "folds": v["quoted"]["folds"]},
        "relative_costs": ("own" if device == "pixel1" else SHARED_SHAPE_NOTE),
        "data_sha256": cal.sha256,
        "float_rows": int(len(cal.rows)),
        "excluded": cal.excluded,
    }
    return BenchResult("validate", summary, rows)


def _independent_checks(cal: Any, v: dict[str, Any], device: str) -> dict[str, Any]:
    """Pixel 1 only: the published networks in no fit (ProxylessNAS-Mobile, MnasNet-A1)."""
    if device != "pixel1":
        return {"proxylessnas_mobile": None, "mnasnet_a1": None}
    from lotto.latency.calibrate import fit_devices, mnasnet_check, proxyless_check

    fit, quoted = fit_devices(cal), v["quoted"]["devices"]["pixel1"]["expected_error"]
    return {"proxylessnas_mobile": proxyless_check(fit, quoted),
            "mnasnet_a1": mnasnet_check(fit["coef"], quoted)}


def _validate_pixel4(run: RunDir, cal: Any) -> BenchResult:
    """Pixel 4: no single-thread calibration rows; one scale on the shared operator costs from
    EfficientNet-Lite0..4 (4 threads), validated leave-one-network-out."""
    from lotto.latency.calibrate import fit_devices, pixel4_check
    from lotto.latency.checks import EFFICIENTNET_LITE_SOURCE

    check = pixel4_check(fit_devices(cal)["coef"])
    rows = []
    for i, name in enumerate(check["networks"]):
        row: dict[str, Any] = dict.fromkeys(METRIC_COLUMNS)
        row.update(kind="phone_cv", network=name, device="pixel4", source="model",
                   latency_ms=check["model"]["predictions"][i],
                   measured_ms=check["measured_ms"][i],
                   error=check["model"]["predictions"][i] / check["measured_ms"][i] - 1,
                   baseline_ms=check["macs"]["predictions"][i])
        rows.append(row)
    log = MetricsLog(run)
    if not log.find(kind="phone_cv", device="pixel4"):
        log.append(rows)
    summary = {"mode": "validate", "device": "pixel4", "pixel4": check,
               "source": EFFICIENTNET_LITE_SOURCE, "data_sha256": cal.sha256}
    return BenchResult("validate", summary, rows)


# ---------------------------------------------------------------------------------------------
# Mobile runtimes: int8 calibration batches


def _plain(node: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _calibration_batches(cfg: DictConfig,
                         spec: ArchSpec) -> Callable[[], list[torch.Tensor]] | None:
    """int8 post-training quantisation inputs: `xnnpack.calibration.batches` batches of the
    configured data set (resized to the spec's input), or None = standard-normal noise."""
    c = cfg.xnnpack.calibration
    if cfg.dtype != "int8" or not c.data:
        return None

    def batches() -> list[torch.Tensor]:
        import torch.nn.functional as F

        from lotto.config import load_config
        from lotto.data import eval_batches, load_data

        data_cfg = load_config("build-v3", None, [], {}).data
        data_cfg.name = str(c.data)
        data = load_data(data_cfg)
        out = []
        for x, _ in eval_batches(data.val_x, data.val_y, int(c.batch_size)):
            if x.shape[1] != spec.in_channels:
                x = x.mean(1, keepdim=True).expand(-1, spec.in_channels, -1, -1)
            x = F.interpolate(x, size=(spec.resolution, spec.resolution), mode="bilinear",
                              align_corners=False)
            out.extend(x[i : i + 1] for i in range(len(x)))  # the program's batch is 1
            if len(out) >= int(c.batches) * int(c.batch_size):
                break
        return out

    return batches


# ---------------------------------------------------------------------------------------------
# Calibrating a device model from measurements (`--calibrate RUN[,RUN...] --as NAME`)


def _run_dirs(text: str) -> list[Path]:
    """The bench run directories `--calibrate` names: runs, or folders of them (their bench runs).

    A run of another command (lottery, search...) is a one-line error, not a KeyError on its
    metrics columns.
    """
    from lotto.report.discover import is_run, open_run

    out: list[Path] = []
    for part in [p.strip() for p in str(text).split(",") if p.strip()]:
        path = Path(part).expanduser()
        if is_run(path):
            command = open_run(path).command
            if command != "bench":
                raise LottoError(f"--calibrate {part}: a {command} run, not a bench run "
                                 "(measure networks with lotto bench --device ... first)")
            out.append(path)
        elif path.is_dir():
            found = sorted(p.parent for p in path.glob("*/metrics.csv") if is_run(p.parent)
                           and open_run(p.parent).command == "bench")
            if not found:
                raise LottoError(f"--calibrate {part}: neither a bench run directory nor a "
                                 "folder of them (no bench run with a metrics.csv)")
            out.extend(found)
        else:
            raise LottoError(f"--calibrate {part}: no such run directory")
    return out


def collect_measurements(text: str) -> tuple[list[ArchSpec], list[dict[str, Any]]]:
    """Measured rows (kind bench, source measured) of the run(s) and their specs."""
    import io

    import pandas as pd
    from omegaconf import OmegaConf

    from lotto.report.discover import committed_text

    specs, rows = [], []
    for run in _run_dirs(text):
        # the committed rows only: a row past .metrics.csv.length was never finished
        committed = committed_text(run / "metrics.csv")
        try:
            frame = pd.read_csv(io.StringIO(committed)) if committed.strip() else pd.DataFrame()
        except (ValueError, pd.errors.ParserError):
            raise LottoError(f"--calibrate: {run / 'metrics.csv'} is corrupt") from None
        if frame.empty or not {"kind", "source", "latency_ms"} <= set(frame.columns):
            continue
        frame = frame[(frame["kind"] == "bench") & (frame["source"] == "measured")]
        if frame.empty:
            continue
        try:
            run_cfg = OmegaConf.load(run / "config.yaml")
        except OSError:
            raise LottoError(f"--calibrate: {run} has no config.yaml") from None
        spec = resolve_spec(run_cfg)
        for r in frame.to_dict("records"):
            if r["network"] != spec.name or int(r["macs"]) != spec.macs():
                raise LottoError(f"--calibrate: {run}: row {r['network']} does not match the "
                                 "run's own network; was the run directory edited?")
            specs.append(spec)
            rows.append({**r, "run": str(run)})
    if not rows:
        raise LottoError(f"--calibrate {text}: no measured rows (a device run: lotto bench "
                         "--device xnnpack|adb|cpu ...; predictions cannot calibrate a device)")
    devices = sorted({str(r["device"]) for r in rows})
    if len(devices) > 1:
        raise LottoError(f"--calibrate: the runs were measured on several devices "
                         f"({', '.join(devices)}); calibrate one device at a time")
    seen: dict[tuple, int] = {}
    keep_specs, keep_rows = [], []
    for spec, r in zip(specs, rows):  # the same network measured twice: keep the latest
        key = (spec.name, spec.resolution, spec.width_mult, spec.macs())
        if key in seen:
            keep_rows[seen[key]] = r
            continue
        seen[key] = len(keep_rows)
        keep_specs.append(spec)
        keep_rows.append(r)
    return keep_specs, keep_rows


def fit_calibration(cfg: DictConfig) -> tuple[str, list[ArchSpec], list[dict[str, Any]], dict]:
    """--calibrate's checks and fit, before a run directory exists (also `--dry-run`'s):
    (device name, the measured specs, their rows, the fit)."""
    from lotto.latency.calibrate import fit_user_device
    from lotto.latency.devices import check_user_name
    from lotto.latency.phone import baseline_features, spec_features

    if not cfg.calibrate_as:
        raise LottoError("--calibrate needs --as NAME: the device name to register")
    name = check_user_name(str(cfg.calibrate_as))
    specs, rows = collect_measurements(str(cfg.calibrate))
    X = np.array([spec_features(s) for s in specs])
    B = np.array([baseline_features(s) for s in specs])
    y = np.array([float(r["latency_ms"]) for r in rows])
    return name, specs, rows, fit_user_device(X, y, B)


def run_calibrate(cfg: DictConfig, *, force: bool = False) -> BenchResult:
    import datetime as dt
    import json

    from lotto.latency.calibrate import USER_VERSION
    from lotto.latency.phone import FEATURES
    from lotto.runs import write_text

    name, specs, rows, fit = fit_calibration(cfg)
    y = np.array([float(r["latency_ms"]) for r in rows])
    source_device = str(rows[0]["device"])
    run = RunDir.open(cfg, "bench", force=force)
    log = MetricsLog(run)
    out_rows = []
    for i, spec in enumerate(specs):
        row: dict[str, Any] = dict.fromkeys(METRIC_COLUMNS)
        pred = float(fit["cv_predictions"][i])
        row.update(kind="calibration_cv", network=spec.name, device=name, source="model",
                   latency_ms=pred, expected_error=fit["expected_error"], macs=spec.macs(),
                   params=spec.params(), resolution=spec.resolution,
                   width_mult=spec.width_mult, measured_ms=float(y[i]),
                   error=pred / float(y[i]) - 1, held_out=spec.name, source_group=source_device,
                   baseline_ms=float(fit["baseline_cv_predictions"][i]))
        out_rows.append(row)
    if not log.find(kind="calibration_cv", device=name):
        log.append(out_rows)
    macs = [s.macs() for s in specs]
    model = {
        "schema": 1, "device": name, "version": USER_VERSION,
        "calibrated_from": source_device, "cv_rule": fit["cv_rule"],
        "coef": {f: float(c) for f, c in zip(FEATURES, fit["coef"])},
        "expected_error": fit["expected_error"], "n_rows": fit["n"],
        "cv": fit["cv"], "baseline_cv": fit["baseline_cv"],
        "calibration_range": {
            "resolution": [min(s.resolution for s in specs), max(s.resolution for s in specs)],
            "width_mult": [min(s.width_mult for s in specs), max(s.width_mult for s in specs)],
            "macs": [float(min(macs)), float(max(macs))]},
        "networks": [{"network": s.name, "resolution": s.resolution, "macs": s.macs(),
                      "measured_ms": float(v), "run": r["run"]}
                     for s, v, r in zip(specs, y, rows)],
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = Path(str(cfg.run.runs_dir)).expanduser() / "devices" / f"{name}.json"
    replaced = path.exists()
    write_text(path, json.dumps(model, indent=1, sort_keys=True) + "\n")
    summary = {"mode": "calibrate", "device": name, "calibrated_from": source_device,
               "file": str(path), "replaced": replaced, "n_networks": fit["n"],
               "expected_error": fit["expected_error"], "cv_rule": fit["cv_rule"],
               "cv": fit["cv"], "baseline_cv": fit["baseline_cv"],
               "coef": model["coef"]}
    result = BenchResult("calibrate", summary, out_rows, run=run)
    run.write_json("summary.json", summary)
    return result
