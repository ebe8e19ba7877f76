#!/usr/bin/env python
"""Latency targets, measured side by side (`make bench` runs this; not a unit test).

    .venv/bin/python scripts/bench_latency.py                  # phones + speed + cpu table
    .venv/bin/python scripts/bench_latency.py --device cuda    # the table on a GPU instead
    .venv/bin/python scripts/bench_latency.py --skip-host      # phones and speed only (seconds)

Targets (docs/latency.md; printed with PASS/MISS, whatever the numbers are):
- phones: Pixel 1 leave-one-family-out RMSPE <= 10% and Spearman >= 0.95 per held-out family,
  better than the multiply-adds + constant baseline; Pixel 2 and 3 RMSPE <= 15%;
- speed: >= 10,000 predictions per second from a phone model or a table (search-loop use);
- host table (1 thread): table sum vs measured end to end over >= 10 networks of the space:
  RMSPE <= 5%, none above 10%; repeatability IQR/median <= 3%. Both timed with `--clock`
  (default paired, the clock search and netadapt price cpu with; `--clock wall` for the
  plain wall clock).
Host timings depend on what else runs on the machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np


def _mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def phones() -> None:
    from lotto.latency.calibrate import cross_validate, load_calibration

    cal = load_calibration()
    cv = cross_validate(cal, "family2")
    base = cross_validate(cal, "family2", baseline=True)
    leaky = cross_validate(cal, "family2", strict=False)
    cv3 = cross_validate(cal, "family")
    print("== Phone models: strict leave-one-family-out CV (published float latencies)")
    print(f"{'device':7s} {'held out':20s} {'n':>3s} {'RMSPE':>7s} {'<=10%':>6s} {'Spearman':>8s} "
          f"{'MAC+c RMSPE':>11s} {'MAC+c rho':>9s} {'shared':>7s}")
    for phone in ("pixel1", "pixel2", "pixel3"):
        d, b, s = cv["devices"][phone], base["devices"][phone], leaky["devices"][phone]
        for fam in [*d["families"], "(pooled)"]:
            pick = (lambda x: x["pooled"]) if fam == "(pooled)" else (lambda x: x["families"][fam])  # noqa: B023
            m, mb, ms = pick(d), pick(b), pick(s)
            rho = f"{m['spearman']:.3f}" if "spearman" in m else "-"
            rho_b = f"{mb['spearman']:.3f}" if "spearman" in mb else "-"
            print(f"{phone:7s} {fam:20s} {m['n']:3d} {m['rmspe'] * 100:6.1f}% "
                  f"{m['within10'] * 100:5.0f}% {rho:>8s} {mb['rmspe'] * 100:10.1f}% "
                  f"{rho_b:>9s} {ms['rmspe'] * 100:6.1f}%")
    p1 = cv["devices"]["pixel1"]
    p1b = base["devices"]["pixel1"]
    fams = p1["families"].values()
    ok1 = all(m["rmspe"] <= 0.10 for m in fams) and all(m["spearman"] >= 0.95 for m in fams)
    better = p1["pooled"]["rmspe"] < p1b["pooled"]["rmspe"]
    print(f"target Pixel 1 per family RMSPE <= 10% and Spearman >= 0.95: {_mark(ok1)}; "
          f"beats MAC+constant (pooled {p1['pooled']['rmspe'] * 100:.1f}% vs "
          f"{p1b['pooled']['rmspe'] * 100:.1f}%): {_mark(better)}")
    for phone in ("pixel2", "pixel3"):
        r = cv["devices"][phone]["pooled"]["rmspe"]
        print(f"target {phone} RMSPE <= 15%: {r * 100:.1f}% {_mark(r <= 0.15)}")
    # error bars: strict coverage (each source scored by bars calibrated without it), from the
    # shipped model file (`scripts/fit_phone_model.py --check` proves it is the current fit);
    # "about 2/3" = within 1/6: with 4 sources, one source alone moves the pooled share 1/4
    import json

    from lotto.latency.phone import model_path

    errors = json.loads(open(model_path()).read())["errors"]
    shares = {"pooled": errors["coverage"],
              **{p: e["coverage"] for p, e in errors["devices"].items()}}
    ok = all(abs(v - 2 / 3) <= 1 / 6 for v in shares.values())
    print("target quoted expected error covers about 2/3 of held-out raw errors, strictly: " +
          ", ".join(f"{k} {v * 100:.0f}%" for k, v in shares.items()) + f" {_mark(ok)} "
          "(pixel2: its two sources run 1.02-1.05x apart: a bar covers both or neither)")
    mn = json.loads(open(model_path()).read())["cv"]["mnasnet_a1_pixel1"]
    print(f"independent source, in no fit (MnasNet-A1, 25 Pixel-1 settings): "
          f"{mn['within_expected'] * 100:.0f}% within the quoted {mn['expected_error'] * 100:.1f}%")
    three = cv3["devices"]["pixel1"]
    print("three-family LOFO (v2 / v3-large / v3-small held out in turn): " + ", ".join(
        f"{f} {m['rmspe'] * 100:.1f}%" for f, m in three["families"].items()))
    print("strict = everything (source factors included) from training rows only: held-out V2 "
          "README rows keep their own (older TFLite) scale, which no model fitted on V3 alone "
          "can know; 'shared' = factors from all label pairs (leaky, for comparison).")


def speed() -> None:
    from lotto.latency import predict
    from lotto.latency.phone import load_phone_model
    from lotto.search.space import load_space

    space = load_space(Path(__file__).resolve().parents[1] / "lotto" / "configs" / "search.yaml")
    specs = space.sample(2000, seed=7)
    model = load_phone_model("pixel1")
    start = time.perf_counter()
    for spec in specs[:200]:  # cold: every spec brings new units (layer tables are built)
        predict(spec, "pixel1")
    cold = 200 / (time.perf_counter() - start)
    for spec in specs:
        model.predict_spec(spec)  # warm the unit cache over the whole sample
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        for spec in specs[:500]:
            predict(spec, "pixel1")
        n += 500
    warm = n / (time.perf_counter() - start)
    print("\n== Prediction speed (one core, Python; random networks of configs/search.yaml)")
    print(f"phone model via predict(): {warm:,.0f} per second once units are cached "
          f"(target >= 10,000: {_mark(warm >= 1e4)}); {cold:,.0f} per second "
          "while the cache fills (first 200 networks, layer tables built)")


def lut_speed(lut, specs) -> None:
    from lotto.latency import predict

    for spec in specs:
        lut.predict_spec(spec)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        for spec in specs:
            predict(spec, lut.meta["device"], source="lut", lut=lut)
        n += len(specs)
    rate = n / (time.perf_counter() - start)
    print(f"lookup table via predict(): {rate:,.0f} per second (target >= 10,000: "
          f"{_mark(rate >= 1e4)})")


def host(device: str, space_arg: str | None, runs_dir: Path, networks: int, threads: int,
         core: int | None, unit_time: float, net_time: float, clock: str, method: str) -> None:
    from lotto.config import defaults_path
    from lotto.latency.lut import build_entries, calibrate_offset, lut_path, open_lut, validate
    from lotto.search.space import load_space

    space = load_space(space_arg or defaults_path("search"))
    path = lut_path(runs_dir, device, threads, clock=clock, method=method)
    lut = open_lut(path, device, threads, warn=lambda m: print("warning:", m), clock=clock,
                   method=method)
    print(f"\n== Host lookup table: {device}, {threads} thread(s), {clock} clock, {method} units, "
          f"space {space.source} "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
          f"{'' if core is None else f', pinned to CPU {core}'})")
    start = time.perf_counter()
    carriers = list(space.carriers())
    n = build_entries(lut, carriers, min_run_time=unit_time, core=core)
    print(f"table {path}: {len(lut.entries)} entries, {n} measured now "
          f"({time.perf_counter() - start:.0f} s)")
    if n or lut.meta.get("offset_basis") is None:
        calibrate_offset(lut, space.sample(3, seed=1000), min_run_time=net_time, core=core)
    specs = space.sample(networks, seed=0)
    result = validate(lut, specs, min_run_time=net_time, core=core)
    print(f"{'network':14s} {'MMACs':>6s} {'measured':>9s} {'IQR/med':>7s} {'table':>8s} "
          f"{'error':>7s} {'no offset':>9s}")
    for r in result["rows"]:
        print(f"{r.network:14s} {r.macs / 1e6:6.0f} {r.measured_ms:9.3f} {r.iqr_rel * 100:6.1f}% "
              f"{r.lut_ms:8.3f} {r.error * 100:+6.1f}% {r.raw_error * 100:+8.1f}%")
    s = result["summary"]
    print(f"RMSPE {s['rmspe'] * 100:.1f}% (target <= 5%: {_mark(s['rmspe'] <= 0.05)}); max "
          f"|error| {s['max_abs_error'] * 100:.1f}% (target <= 10%: "
          f"{_mark(s['max_abs_error'] <= 0.10)}); IQR/median median "
          f"{s['iqr_rel_median'] * 100:.1f}%, max {s['iqr_rel_max'] * 100:.1f}% (target <= 3%: "
          f"{_mark(s['iqr_rel_max'] <= 0.03)})")
    print(f"offset {s['offset_ms']:.3f} ms = median(measured - table sum), applied leave-one-out; "
          f"without it RMSPE {s['rmspe_no_offset'] * 100:.1f}% "
          f"(bias {s['bias_no_offset'] * 100:+.1f}%)")
    netadapt_check(lut, specs[:6], net_time, core)
    lut_speed(lut, space.sample(500, seed=11))


def netadapt_check(lut, specs, net_time: float, core: int | None) -> None:
    """Channel counts the table never measured: NetAdapt-style shrinks of expansion widths."""
    import dataclasses
    import random

    from lotto.latency.lut import validate

    rng = random.Random(5)
    shrunk = []
    for spec in specs:
        blocks = list(spec.blocks)
        for i in rng.sample(range(1, len(blocks)), 3):
            b = blocks[i]
            if b.exp and b.exp > 16:
                exp = max(8, int(b.exp * rng.uniform(0.6, 0.95)) // 8 * 8)
                blocks[i] = dataclasses.replace(b, exp=exp)
        shrunk.append(spec.replace(name=f"{spec.name}_na", blocks=tuple(blocks)).validate())
    res = validate(lut, shrunk, min_run_time=net_time, core=core,
                   offset=float(lut.meta["offset_ms"]), record=False)
    s = res["summary"]
    misses = sum(r.misses for r in res["rows"])
    print(f"NetAdapt-style check: {len(shrunk)} networks with 3 expansion widths shrunk to "
          f"unmeasured values ({misses} interpolated units): RMSPE {s['rmspe'] * 100:.1f}%, "
          f"max |error| {s['max_abs_error'] * 100:.1f}% (table offset applied)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="host device of the table: cpu or cuda")
    parser.add_argument("--space", default=None,
                        help="space YAML or presets (default: configs/search.yaml)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--networks", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pin-core", type=int, default=None)
    parser.add_argument("--unit-time", type=float, default=0.3,
                        help="seconds of timed runs per table network (insitu) or unit")
    parser.add_argument("--net-time", type=float, default=1.0, help="seconds per network")
    parser.add_argument("--clock", default="paired", choices=("wall", "thread", "paired"),
                        help="thread: CPU time of the timing thread (cpu, 1 thread; shared hosts); "
                        "paired: relative to a reference network before each call (cpu)")
    parser.add_argument("--method", default="insitu", choices=("insitu", "isolated"),
                        help="units timed inside networks (insitu) or alone (isolated)")
    parser.add_argument("--skip-phones", action="store_true", help="host table only")
    parser.add_argument("--skip-host", action="store_true", help="phones and speed only")
    args = parser.parse_args(argv)
    np.set_printoptions(precision=3)
    if not args.skip_phones:
        phones()
        speed()
    if not args.skip_host:
        from lotto.latency.paired import host_clock

        host(args.device, args.space, args.runs_dir, args.networks, args.threads, args.pin_core,
             args.unit_time, args.net_time, host_clock(args.clock, args.device), args.method)
    return 0


if __name__ == "__main__":
    sys.exit(main())
