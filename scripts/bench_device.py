#!/usr/bin/env python
"""Host paths vs a phone: PyTorch eager and ExecuTorch + XNNPACK, 1 thread (`make bench`).

    .venv/bin/python scripts/bench_device.py              # everything (~15-25 min on 2 busy cores)
    .venv/bin/python scripts/bench_device.py --quick      # 6 networks, shorter timing

1. Side by side: host PyTorch eager (BN folded, channels_last, 1 thread) and host ExecuTorch +
   XNNPACK (1-thread pool) for the presets at 224 and a selection of the published Pixel-1
   float settings (network, width, resolution) of data/pixel_published_latency.csv.
2. Agreement with the phone: for each host path, Spearman rank correlation with the Pixel-1
   labels (harmonised onto the MobileNetV3 paper's scale, mean per setting) and RMSPE after
   one scale factor (the s minimising sum(((s * host - phone) / phone)^2)).
3. Busy machine: the same networks timed on xnnpack with the wall clock and the thread CPU-time
   clock, without and with one extra busy-looping background process, interleaved (A B A B ...)
   repeats; reported as the spread of repeated medians.
Exported programs are cached under runs/bench/xnnpack/ (a rerun skips the export).
Needs the device extra: pip install -e '.[device]'.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

SETTINGS = [  # (network, width, resolution) with Pixel-1 float labels
    ("mobilenet_v2", 1.0, 224), ("mobilenet_v2", 0.75, 224), ("mobilenet_v2", 0.5, 224),
    ("mobilenet_v2", 0.35, 224), ("mobilenet_v2", 1.0, 160), ("mobilenet_v2", 1.0, 128),
    ("mobilenet_v3_large", 1.0, 224), ("mobilenet_v3_large", 0.75, 224),
    ("mobilenet_v3_large", 0.5, 224), ("mobilenet_v3_large", 1.0, 160),
    ("mobilenet_v3_small", 1.0, 224), ("mobilenet_v3_small", 0.75, 224),
    ("mobilenet_v3_small", 0.5, 224), ("mobilenet_v3_small", 1.0, 160),
]
QUICK = [SETTINGS[i] for i in (0, 2, 6, 8, 10, 12)]
EXTRA_PRESETS = ["mnasnet_a1", "mnasnet_b1"]  # presets at 224 without a published label
CACHE = Path("runs/bench/xnnpack")


def spin(stop: mp.Event) -> None:  # one busy background core
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def labels() -> dict[tuple[str, float, int], float]:
    from lotto.latency.calibrate import harmonisation_factors, harmonised, load_calibration

    cal = load_calibration()
    rows = cal.rows
    y = harmonised(rows, harmonisation_factors(rows))
    out: dict[tuple[str, float, int], list[float]] = {}
    for r, v in zip(rows.itertuples(), y):
        if r.device == "pixel1":
            out.setdefault((r.network, float(r.width_mult), int(r.resolution)), []).append(v)
    return {k: float(np.mean(v)) for k, v in out.items()}


def host_times(spec, min_run_time: float, clock: str = "wall") -> tuple[float, float, float]:
    """(eager ms, xnnpack ms, xnnpack IQR/median)."""
    from lotto.latency import predict
    from lotto.latency.xnnpack import cache_key

    eager = predict(spec, "cpu", min_run_time=min_run_time, clock=clock)
    shape = (1, spec.in_channels, spec.resolution, spec.resolution)
    key = cache_key(spec.to_dict(), shape, "float32")
    xnn = predict(spec, "xnnpack", min_run_time=min_run_time, clock=clock, cache_dir=CACHE,
                  cache_key=key)
    return eager.ms, xnn.ms, xnn.expected_error


def agreement(host: np.ndarray, phone: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    from lotto.latency.calibrate import fit_scale

    s = fit_scale(host, phone)
    rel = (s * host - phone) / phone
    return {"spearman": float(spearmanr(host, phone).statistic),
            "rmspe": float(np.sqrt(np.mean(rel**2))), "max_abs": float(np.max(np.abs(rel))),
            "scale": s}


def busy_section(specs, min_run_time: float, rounds: int) -> dict[str, dict[str, float]]:
    """Interleaved repeats of xnnpack timings, wall vs thread clock, quiet vs +1 busy core."""
    from lotto.latency import predict

    out = {}
    for busy in (False, True):
        stop = mp.Event()
        proc = mp.Process(target=spin, args=(stop,), daemon=True) if busy else None
        if proc:
            proc.start()
        try:
            for clock in ("wall", "thread"):
                med: dict[str, list[float]] = {s.name: [] for s in specs}
                for _ in range(rounds):  # A B C A B C ...: drift hits all networks alike
                    for s in specs:
                        med[s.name].append(predict(s, "xnnpack", min_run_time=min_run_time,
                                                   clock=clock, cache_dir=CACHE).ms)
                for name, v in med.items():
                    spread = (max(v) - min(v)) / statistics.median(v)
                    out[f"{name}|{clock}|{'busy' if busy else 'as is'}"] = {
                        "median_ms": statistics.median(v), "spread": spread}
        finally:
            if proc:
                stop.set()
                proc.join(5)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--min-run-time", type=float, default=None)
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="thread: CPU time of the timing thread (robust on a shared machine)")
    parser.add_argument("--out", default=None, help="default runs/bench/device_report_<clock>.json")
    parser.add_argument("--skip-busy", action="store_true")
    args = parser.parse_args()
    from lotto.latency.xnnpack import available

    if not available():
        print("bench_device: ExecuTorch is not installed (pip install -e '.[device]'); skipped")
        return 0
    from lotto.arch import preset
    from lotto.latency.variants import calibration_spec

    mrt = args.min_run_time or (0.5 if args.quick else 1.0)
    settings = QUICK if args.quick else SETTINGS
    truth = labels()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; 1 thread everywhere; "
          f"clock {args.clock}")
    print(f"{'network':32s} {'MMACs':>7s} {'eager ms':>9s} {'xnnpack ms':>10s} {'x/e':>5s} "
          f"{'IQR%':>5s} {'pixel1 ms':>9s}")
    rows = []
    extra = [(n, 1.0, 224) for n in EXTRA_PRESETS] if not args.quick else []
    for net, w, r in settings + extra:
        spec = (calibration_spec(net, w, r) if (net, w, r) in truth else preset(net, w, r))
        t0 = time.perf_counter()
        e, x, iqr = host_times(spec, mrt, args.clock)
        rows.append({"network": net, "width": w, "resolution": r, "mmacs": spec.macs() / 1e6,
                     "eager_ms": e, "xnnpack_ms": x, "xnnpack_iqr": iqr,
                     "pixel1_ms": truth.get((net, w, r)), "seconds": time.perf_counter() - t0})
        p = truth.get((net, w, r))
        print(f"{f'{net} {w:g} @{r}':32s} {spec.macs() / 1e6:7.0f} {e:9.2f} {x:10.2f} "
              f"{x / e:5.2f} {iqr * 100:5.1f} {p if p is not None else float('nan'):9.1f}",
              flush=True)
    labelled = [r for r in rows if r["pixel1_ms"] is not None]
    phone = np.array([r["pixel1_ms"] for r in labelled])
    report = {"rows": rows, "load_average": os.getloadavg()[0], "min_run_time": mrt,
              "clock": args.clock}
    print(f"\nAgreement with Pixel-1 float labels over {len(labelled)} settings "
          "(harmonised to the MobileNetV3 paper's scale; one scale factor per host path):")
    for path in ("eager", "xnnpack"):
        a = agreement(np.array([r[f"{path}_ms"] for r in labelled]), phone)
        macs = agreement(np.array([r["mmacs"] for r in labelled]), phone)
        report[f"agreement_{path}"] = a
        print(f"  {path:8s} Spearman {a['spearman']:.3f}  RMSPE {a['rmspe'] * 100:5.1f}%  "
              f"max {a['max_abs'] * 100:5.1f}%  scale x{a['scale']:.2f}")
    report["agreement_macs"] = macs
    print(f"  {'MACs':8s} Spearman {macs['spearman']:.3f}  RMSPE {macs['rmspe'] * 100:5.1f}%  "
          f"max {macs['max_abs'] * 100:5.1f}%  (for reference: MACs times one rate)")
    out = Path(args.out or f"runs/bench/device_report_{args.clock}.json")
    if args.skip_busy:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"\nwritten: {out}")
        return 0
    small = [calibration_spec(n, w, r) for n, w, r in
             [("mobilenet_v3_small", 0.5, 224), ("mobilenet_v2", 0.5, 224)]]
    busy = busy_section(small, mrt / 2, 3 if args.quick else 5)
    report["busy"] = busy
    print("\nBusy machine (xnnpack, 1 thread; spread = (max - min) / median of repeated medians, "
          "interleaved):")
    for k, v in busy.items():
        print(f"  {k:48s} median {v['median_ms']:8.3f} ms  spread {v['spread'] * 100:5.1f}%")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
