#!/usr/bin/env python
"""Does this host's mobile runtime rank phone costs? ExecuTorch + XNNPACK here vs the phones.

    .venv/bin/python scripts/xnnpack_transfer.py        # ~50 min on one busy core; cached

Times, through ExecuTorch + XNNPACK on this host (1 thread, BN folded), (1) the 225 FBNet-space
blocks of data/pixel3_fbnet_blocks.csv (HW-NAS-Bench, Pixel 3), each built as its README says,
and (2) the float networks of data/pixel_published_latency.csv. It then scores "host time x one
scale" against the phones, beside the shipped phone model and multiply-adds x one scale:
FBNet's 300 sampled networks (sums of blocks, `calibrate.fbnet_networks`) and each published
source per phone. No phone figure enters the host timings; the one scale is the only fit. The
ProxylessNAS mobile table (reserved for independent checks) is not used.
Timings are cached under runs/bench/xnnpack_transfer/ (a rerun reuses them; delete to redo).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from lotto.arch.build import build_network  # noqa: E402
from lotto.latency import xnnpack  # noqa: E402
from lotto.latency.calibrate import (  # noqa: E402
    blocks_path,
    calibration_spec,
    fbnet_network_sums,
    load_calibration,
    scaled_metrics,
)
from lotto.latency.ops import _KEY, _fields  # noqa: E402

torch.set_num_threads(1)


def _cbr(cin: int, cout: int, k: int = 1, s: int = 1, g: int = 1, relu: bool = True) -> nn.Module:
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class FBNetBlock(nn.Module):
    """ConvBlock(e, k, g): grouped 1x1 expand, channel shuffle, kxk depthwise, grouped 1x1."""

    def __init__(self, cin: int, cout: int, e: int, k: int, s: int, g: int):
        super().__init__()
        mid = e * cin
        self.body = nn.Sequential(_cbr(cin, mid, 1, 1, g),
                                  nn.ChannelShuffle(g) if g > 1 else nn.Identity(),
                                  _cbr(mid, mid, k, s, mid), _cbr(mid, cout, 1, 1, g, relu=False))
        self.residual = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class Copy(nn.Module):
    """The identity skip as timed alone: one elementwise kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def fbnet_module(key: str) -> tuple[nn.Module, tuple[int, ...]]:
    m = _KEY.match(key)
    if not m:
        raise ValueError(key)
    kind, f = m.group("kind"), _fields(m.group("rest"))
    if kind == "FC":
        return nn.Linear(f["Cin"], f["Cout"]), (1, f["Cin"])
    h, cin, cout, s = f["H"], f["Cin"], f["Cout"], f.get("stride", 1)
    shape = (1, cin, h, f["W"])
    if kind == "AvgP":
        return nn.AdaptiveAvgPool2d(1), shape
    if kind == "ConvNorm":
        return _cbr(cin, cout, f["kernel"], s, f.get("group", 1)), shape
    if kind == "Skip":
        return (Copy() if s == 1 and cin == cout else _cbr(cin, cout, 1, s, relu=False)), shape
    return FBNetBlock(cin, cout, f["exp"], f["kernel"], s, f["group"]), shape


def timed(cache: Path, items: dict[str, tuple[nn.Module, tuple[int, ...]] | None],
          build: object, min_run_time: float) -> dict[str, float]:
    done = json.loads(cache.read_text()) if cache.exists() else {}
    for i, name in enumerate(items):
        if name not in done:
            torch.manual_seed(0)
            module, shape = build(name)  # type: ignore[operator]
            timing, _ = xnnpack.measure(module.eval(), shape, threads=1,
                                        min_run_time=min_run_time, warmup=5)
            done[name] = timing.median_ms
            cache.write_text(json.dumps(done, indent=0))
            print(f"  {i + 1}/{len(items)} {name}: {timing.median_ms:.3f} ms", flush=True)
    return done


def line(label: str, pred: np.ndarray, truth: np.ndarray) -> str:
    m = scaled_metrics(np.asarray(pred, float), np.asarray(truth, float))
    return (f"{label:<34s} n={m['n']:3d}  after one scale {m['rmspe_after_scale'] * 100:5.1f}%  "
            f"Spearman {m['spearman']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("runs/bench/xnnpack_transfer"))
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per timing")
    args = parser.parse_args()
    xnnpack.require()
    args.cache.mkdir(parents=True, exist_ok=True)
    cal = load_calibration()
    blocks = pd.read_csv(blocks_path())
    print(f"FBNet blocks ({len(blocks)}), ExecuTorch {xnnpack.version()}, 1 thread:")
    host_b = timed(args.cache / "fbnet_blocks.json", dict.fromkeys(blocks.key), fbnet_module,
                   args.min_run_time)
    rows = cal.rows
    names = {f"{r.network}|{float(r.width_mult)}|{int(r.resolution)}" for r in rows.itertuples()}

    def network(name: str) -> tuple[nn.Module, tuple[int, ...]]:
        net, width, res = name.split("|")
        return build_network(calibration_spec(net, float(width), int(res))), (1, 3, int(res),
                                                                                 int(res))

    print(f"published networks ({len(names)}):")
    host_n = timed(args.cache / "published.json", dict.fromkeys(sorted(names)), network,
                   max(1.0, args.min_run_time))

    from lotto.latency.calibrate import fbnet_macs_baseline, leave_one_source_out
    truth = dict(zip(blocks.key, blocks.pixel3_ms))
    print("\nFBNet, 300 networks on a Pixel 3 (sums of blocks); no FBNet figure is fitted:")
    print(line("host xnnpack x one scale", fbnet_network_sums(host_b), fbnet_network_sums(truth)))
    loso = leave_one_source_out(cal)["hwnas"]["networks"]
    print(f"{'phone model, FBNet source held out':<34s} n={loso['n']:3d}  after one scale "
          f"{loso['rmspe_after_scale'] * 100:5.1f}%  Spearman {loso['spearman']:.3f}")
    macs = fbnet_macs_baseline(cal)
    print(f"{'multiply-adds x one scale':<34s} n={macs['n']:3d}  after one scale "
          f"{macs['rmspe_after_scale'] * 100:5.1f}%  Spearman {macs['spearman']:.3f}")
    print("\npublished networks, one scale per (source, phone); the phone model with the source "
          "held out (its phones pooled):")
    for group, entry in leave_one_source_out(cal).items():
        if "published" in entry:
            m = entry["published"]
            print(f"{group + ': phone model, held out':<34s} n={m['n']:3d}  after one scale "
                  f"{m['rmspe_after_scale'] * 100:5.1f}%  Spearman {m['spearman']:.3f}")
    host = np.array([host_n[f"{r.network}|{float(r.width_mult)}|{int(r.resolution)}"]
                     for r in rows.itertuples()])
    for (group, device), part in rows.groupby(["group", "device"]):
        if len(part) >= 3:
            i = part.index.to_numpy()
            print(line(f"{group} {device}: host xnnpack", host[i], part.latency_ms))
            print(line(f"{group} {device}: multiply-adds", part.counted_mmacs, part.latency_ms))
    blend(cal, host, host_b)


def blend(cal: object, host: np.ndarray, host_blocks: dict[str, float]) -> None:
    """model^(1-a) x host^a, a chosen on the published sources only (each predicted by the
    model fitted without it; after one scale per source and phone), then scored on FBNet, whose
    figures choose nothing."""
    from lotto.latency.calibrate import leave_one_source_out

    loso = leave_one_source_out(cal)  # type: ignore[arg-type]
    rows = cal.rows  # type: ignore[attr-defined]

    def published(a: float) -> float:
        sq, n = 0.0, 0
        for g, e in loso.items():
            if "published" not in e:
                continue
            test = (rows.group == g).to_numpy()
            mixed = np.exp((1 - a) * np.log(e["predictions"]) + a * np.log(host[test]))
            phones = np.array(e["devices_of_rows"])
            for phone in set(phones):
                m = phones == phone
                if m.sum() >= 3:
                    err = scaled_metrics(mixed[m], e["truth"][m])["rmspe_after_scale"]
                    sq, n = sq + m.sum() * err**2, n + m.sum()
        return math.sqrt(sq / n)

    grid = [round(0.1 * k, 1) for k in range(11)]
    scores = {a: published(a) for a in grid}
    best = min(scores, key=scores.__getitem__)
    print("\nblend model^(1-a) x host^a, a chosen on the published sources only:")
    print("  published (pooled, after one scale per source and phone): " + ", ".join(
        f"a={a}: {v * 100:.2f}%" for a, v in scores.items()))
    e = loso["hwnas"]
    hosts = fbnet_network_sums(host_blocks)
    for a in sorted({0.0, best, 1.0}):
        mixed = np.exp((1 - a) * np.log(e["network_predictions"]) + a * np.log(hosts))
        chosen = " (chosen)" if a == best else ""
        print(line(f"FBNet held out, a={a}{chosen}", mixed, e["network_truth"]))


if __name__ == "__main__":
    main()
