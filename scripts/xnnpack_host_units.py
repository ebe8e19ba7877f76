#!/usr/bin/env python
"""Time mobile units through this host's ExecuTorch + XNNPACK: the `xnnpack_host` source.

    taskset -c 1 .venv/bin/python scripts/xnnpack_host_units.py          # time (cached), write CSV
    .venv/bin/python scripts/xnnpack_host_units.py --list                # the chosen units only

Units (stem, one block, head conv, classifier: `ArchSpec.block_contexts`) of

- the published networks the phone model already prices: every float row of
  data/pixel_published_latency.csv (MobileNetV2, V3-Large, V3-Small and their minimalistic /
  h-swish variants at their multipliers and resolutions) and MnasNet-A1 1.0 at 224 px;
- random networks of the project's search spaces at 224 px (`mnasnet`: conv / ds / ir blocks,
  kernels 3 / 5, SE, pooling skips, widths x0.75-1.25; `mbv2-k357`: kernel 7),

drawn at random (seed 0) among the distinct units, after dropping every unit whose shape
(input size, input width, output size, output width) is a position of the FBNet table (the
held-out source whose transfer is scored: data/pixel3_fbnet_blocks.csv) or of ProxylessNAS-Mobile
(the positions of the reserved ProxylessNAS mobile block table, `mobile_trim`).

Each unit is built as the network builds it (`lotto.arch.build.build_block`), exported with
BatchNorm folded and the XNNPACK partitioner's fusions (`lotto.latency.xnnpack`), and timed at 1
thread (median of >= `--min-run-time` s). Its features are the phone model's own op pricing
(`phone.unit_features`, i.e. `ops.layer_ops`), so the fit never needs ExecuTorch.
Timings are cached in runs/bench/xnnpack_host_units/timings.json (delete to redo); the result
is lotto/latency/data/xnnpack_host_units.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from lotto.arch import ArchSpec, preset  # noqa: E402
from lotto.arch.build import build_block  # noqa: E402
from lotto.arch.spec import BlockContext  # noqa: E402
from lotto.latency.calibrate import HOST_FILE, data_path  # noqa: E402
from lotto.latency.checks import proxylessnas_mobile  # noqa: E402
from lotto.latency.ops import FBNET_POSITIONS, OP_FEATURES, _out  # noqa: E402
from lotto.latency.phone import unit_features  # noqa: E402
from lotto.latency.variants import calibration_spec  # noqa: E402
from lotto.search.space import load_space  # noqa: E402

torch.set_num_threads(1)
Shape = tuple[int, int, int, int]


def unit_shape(c: BlockContext) -> Shape:
    """(input size, input width, output size, output width): a table position."""
    return (c.in_shape[0], c.in_shape[2], c.out_shape[0], c.out_shape[2])


def reserved_shapes() -> set[Shape]:
    """Positions of the FBNet table (scored held out) and of ProxylessNAS-Mobile (the reserved
    mobile block table's positions): no unit at these shapes is timed."""
    fb = {(h, cin, _out(h, s), cout) for h, cin, cout, s in FBNET_POSITIONS}
    fb |= {(224, 3, 112, 16), (7, 352, 7, 1984), (7, 1984, 1, 1000)}  # stem, head, pool + FC
    return fb | {unit_shape(c) for c in proxylessnas_mobile().block_contexts()}


def published_specs() -> list[ArchSpec]:
    rows = pd.read_csv(data_path())
    rows = rows[rows.precision == "float32"].drop_duplicates(["network", "width_mult",
                                                               "resolution"])
    specs = [calibration_spec(r.network, float(r.width_mult), int(r.resolution))
             for r in rows.itertuples()]
    return [*specs, preset("mnasnet_a1")]


def space_specs(name: str, n: int, seed: int) -> list[ArchSpec]:
    return load_space(name, resolution=224).sample(n, seed=seed)


def distinct_units(specs: list[ArchSpec], origin: str,
                   skip: set[Shape]) -> dict[str, tuple[str, ArchSpec, BlockContext]]:
    out: dict[str, tuple[str, ArchSpec, BlockContext]] = {}
    for spec in specs:
        for c in spec.block_contexts():
            if c.key not in out and unit_shape(c) not in skip:
                out[c.key] = (origin, spec, c)
    return out


def choose_units(n_published: int, n_space: int, seed: int = 0
                 ) -> list[tuple[str, ArchSpec, BlockContext]]:
    """The units to time, in a random order (a prefix is a random subset of both kinds)."""
    skip = reserved_shapes()
    pub = distinct_units(published_specs(), "published", skip)
    space = distinct_units([*space_specs("mnasnet", 60, seed), *space_specs("mbv2-k357", 20, seed)],
                           "space", skip)
    space = {k: v for k, v in space.items() if k not in pub}
    rng = random.Random(seed)
    chosen = (rng.sample(sorted(pub), min(n_published, len(pub)))
              + rng.sample(sorted(space), min(n_space, len(space))))
    rng.shuffle(chosen)
    both = {**pub, **space}
    return [both[k] for k in chosen]


def time_units(units: list[tuple[str, ArchSpec, BlockContext]], cache: Path,
               min_run_time: float, budget_s: float) -> dict[str, float]:
    from lotto.latency import xnnpack

    done: dict[str, float] = json.loads(cache.read_text()) if cache.exists() else {}
    start = time.monotonic()
    for i, (_, spec, c) in enumerate(units):
        if c.key in done:
            continue
        if time.monotonic() - start > budget_s:
            print(f"time budget spent: {len(done)} of {len(units)} timed", flush=True)
            break
        torch.manual_seed(0)
        module = build_block(spec, c).eval()
        h, w, ch = c.in_shape
        try:
            timing, _ = xnnpack.measure(module, (1, ch, h, w), threads=1,
                                        min_run_time=min_run_time, warmup=5)
        except Exception as e:  # an export failure skips the unit (reported, not hidden)
            print(f"  {i + 1}/{len(units)} {c.key}: FAILED {type(e).__name__}: {e}", flush=True)
            continue
        done[c.key] = timing.median_ms
        cache.write_text(json.dumps(done, indent=0))
        print(f"  {i + 1}/{len(units)} {c.key}: {timing.median_ms:.4f} ms", flush=True)
    return done


def write_csv(units: list[tuple[str, ArchSpec, BlockContext]], timed: dict[str, float],
              path: Path) -> int:
    """key, origin, spec, host_ms, then the unit's OP_FEATURES (the phone model's pricing)."""
    lines = [",".join(["key", "origin", "spec", "host_ms", *OP_FEATURES])]
    for origin, spec, c in sorted(units, key=lambda u: u[2].key):
        if c.key not in timed:
            continue
        f = unit_features(spec)[c.name]
        lines.append(",".join([c.key, origin, spec.name, f"{timed[c.key]:.6g}",
                               *(f"{v:.10g}" for v in f)]))
    path.write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--published", type=int, default=170, help="published-network units")
    parser.add_argument("--space", type=int, default=110, help="search-space units")
    parser.add_argument("--cache", type=Path, default=Path("runs/bench/xnnpack_host_units"))
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per timing")
    parser.add_argument("--budget-min", type=float, default=60.0, help="stop timing after")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "lotto/latency/data"
                        / HOST_FILE)
    parser.add_argument("--list", action="store_true", help="print the chosen units, time none")
    args = parser.parse_args()
    units = choose_units(args.published, args.space)
    if args.list:
        for origin, _, c in units:
            print(origin, c.key)
        print(f"{len(units)} units")
        return
    from lotto.latency import xnnpack

    xnnpack.require()
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"{len(units)} units, ExecuTorch {xnnpack.version()}, 1 thread", flush=True)
    timed = time_units(units, args.cache / "timings.json", args.min_run_time,
                       args.budget_min * 60)
    n = write_csv(units, timed, args.out)
    print(f"wrote {args.out} ({n} units)")


if __name__ == "__main__":
    main()
