#!/usr/bin/env python
"""GPU check of the latency package (a few minutes on one GPU; prints, asserts little).

    python scripts/cuda_check.py [--quick]

1. End-to-end latency of the presets at batch 1 (fp32 and fp16, channels_last, BN folded)
   through `lotto.latency.predict`, next to CUDA-event timing of the same prepared module:
   the two must agree (a missing synchronisation shows up as a far too small number).
2. Per-layer hooks on CUDA (synchronised per layer): sum of layers vs end to end.
3. A small lookup table on CUDA and its validation: at batch 1 a GPU is launch-bound, so the
   additive table is expected to do worse than on a CPU (docs/latency.md, additivity and
   fusion); the number is printed.
4. `lotto bench --device cuda --json` through the CLI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def events_ms(prepared, runs: int = 50) -> float:
    """Median GPU time per call from CUDA events (independent of the Timer path)."""
    times = []
    with torch.inference_mode():
        for _ in range(10):
            prepared()
        torch.cuda.synchronize()
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            prepared()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to check")
        return 1
    from lotto.arch import preset
    from lotto.arch.build import build_network
    from lotto.latency import predict
    from lotto.latency.lut import Lut, build_entries, calibrate_offset, validate
    from lotto.latency.measure import fingerprint, prepare, profile_layers
    from lotto.search.space import load_space

    t0 = time.time()
    print("fingerprint:", json.dumps(fingerprint("cuda", 1)))
    names = ["mobilenet_v3_small", "mobilenet_v3_large"]
    if not args.quick:
        names += ["mobilenet_v2", "mnasnet_a1"]
    print("\n== 1. end to end, batch 1 (ms): Timer path vs CUDA events")
    print(f"{'network':20s} {'dtype':8s} {'predict':>8s} {'IQR/med':>7s} {'events':>8s} "
          f"{'ratio':>6s}")
    ok = True
    for name in names:
        spec = preset(name)
        for dtype in ("float32", "float16"):
            lat = predict(spec, "cuda", dtype=dtype, min_run_time=0.5)
            prepared = prepare(build_network(spec), (1, 3, 224, 224), "cuda", dtype=dtype)
            ev = events_ms(prepared)
            ratio = lat.ms / ev
            ok &= 0.5 < ratio < 2.0
            print(f"{name:20s} {dtype:8s} {lat.ms:8.3f} {lat.expected_error * 100:6.1f}% "
                  f"{ev:8.3f} {ratio:6.2f}")
    print("Timer vs events agree within 2x:", ok)

    print("\n== 2. per-layer hooks on CUDA (mobilenet_v3_large)")
    spec = preset("mobilenet_v3_large")
    prepared = prepare(build_network(spec), (1, 3, 224, 224), "cuda")
    rows = profile_layers(prepared, "cuda", runs=10, warmup=3)
    e2e = predict(spec, "cuda", min_run_time=0.5).ms
    print(f"{len(rows)} leaf calls, sum {sum(r.ms for r in rows):.3f} ms (hooks synchronise per "
          f"layer, so the sum exceeds the pipelined end to end {e2e:.3f} ms)")

    print("\n== 3. lookup table on CUDA (mobilenet_v3_small-based space at 224)")
    space = load_space("mobilenet_v3_small,mobilenet_v3_large,mobilenet_v2"
                       if not args.quick else "mobilenet_v3_small,mobilenet_v3_large")
    with tempfile.TemporaryDirectory() as tmp:
        lut = Lut.empty("cuda", 1, path=Path(tmp) / "lut.json")
        n = build_entries(lut, space.specs, min_run_time=0.1)
        calibrate_offset(lut, space.specs[:1], min_run_time=0.3)
        res = validate(lut, space.specs, min_run_time=0.3)
        s = res["summary"]
        for r in res["rows"]:
            print(f"  {r.network:20s} measured {r.measured_ms:7.3f}  table {r.lut_ms:7.3f}  "
                  f"no offset {r.raw_error * 100:+6.1f}%")
        print(f"{n} units; RMSPE {s['rmspe'] * 100:.1f}%, without offset "
              f"{s['rmspe_no_offset'] * 100:.1f}% (bias {s['bias_no_offset'] * 100:+.1f}%): "
              "on a GPU at batch 1 the end-to-end measurement is the number to trust")

        print("\n== 4. CLI")
        from typer.testing import CliRunner

        from lotto.cli import app

        out = CliRunner().invoke(app, ["bench", "--device", "cuda", "--model",
                                       "mobilenet_v3_large", "--json", "--runs-dir", tmp,
                                       "measure.min_run_time=0.3"])
        print("exit", out.exit_code, out.output.strip().splitlines()[-1][:400])
    print(f"\ncuda_check done in {time.time() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
