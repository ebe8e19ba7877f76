#!/usr/bin/env python
"""Fit the phone latency models and write lotto/latency/data/phone_model.json.

    .venv/bin/python scripts/fit_phone_model.py            # refit, print the report, write JSON
    .venv/bin/python scripts/fit_phone_model.py --check    # refit and compare with the shipped file
    .venv/bin/python scripts/fit_phone_model.py --host-weight 0     # without the host units (v3)

Input: lotto/latency/data/pixel_published_latency.csv and pixel3_fbnet_blocks.csv (copies of
shared/data, sources in lotto/latency/data/SOURCES.md) and xnnpack_host_units.csv (units timed
on this host, scripts/xnnpack_host_units.py).
Deterministic: the same data gives the same file.
See lotto/latency/calibrate.py for the protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from lotto.latency.calibrate import (
    SHARED_TRAFFIC,
    block_weight_sweep,
    fit_all,
    load_calibration,
    nested_block_weight,
)
from lotto.latency.phone import FEATURES, model_path


def _close(a: object, b: object, rtol: float = 1e-6) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rtol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rtol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=rtol, abs_tol=1e-15)  # type: ignore[arg-type]
    return a == b


def _m(m: dict) -> str:
    rho = f"{m['spearman']:.3f}" if "spearman" in m else "-"
    extra = (f"  after one scale {m['rmspe_after_scale'] * 100:5.1f}% (scale {m['scale']:.3f})"
             if "rmspe_after_scale" in m else "")
    return (f"n={m['n']:3d} RMSPE {m['rmspe'] * 100:6.1f}%  <=10% {m['within10'] * 100:4.0f}%  "
            f"max {m['max_abs_error'] * 100:5.1f}%  bias {m['bias'] * 100:+5.1f}%  rho {rho}"
            f"{extra}")


def report(result: dict) -> str:
    data = result["data"]
    lines = [f"phone model {result['version']}  data sha256 {data['sha256'][:12]} "
             f"({data['float_rows']} float rows, excluded {data['excluded']}), blocks sha256 "
             f"{data['blocks_sha256'][:12]} ({data['block_rows']} rows, weight "
             f"{data['block_weight']})"]
    if data.get("host_rows"):
        lines.append(f"host XNNPACK units sha256 {data['host_sha256'][:12]} "
                     f"({data['host_rows']} rows, weight {data['host_weight']})")
    lines.append(f"source factors (runtime scale vs v3_paper): {result['factors']}")
    p1 = result["devices"]["pixel1"]
    lines.append("coefficients: " + ", ".join(f"{f}={p1['coef'][f]:.4g}" for f in FEATURES))
    for phone, e in result["devices"].items():
        if "coverage" not in e:
            lines.append(f"{phone}: scale {e['scale']:.4f}  rel_error {e['rel_error'] * 100:.1f}%"
                         f"  expected_error {e['expected_error'] * 100:.1f}%  "
                         f"({e['relative_costs']})")
            continue
        lines.append(f"{phone}: scale {e['scale']:.4f}  rel_error {e['rel_error'] * 100:.1f}% "
                     f"({e['error_basis']})  scale_error {e['scale_error'] * 100:.1f}%  "
                     f"expected_error {e['expected_error'] * 100:.1f}% (strict coverage "
                     f"{e['coverage'] * 100:.0f}% of held-out raw errors)  MAC+c LOFO "
                     f"{e['baseline']['expected_error'] * 100:.1f}%")
    p4 = result["cv"]["pixel4_leave_one_network_out"]
    lines.append(f"pixel4 (EfficientNet-Lite, 4 threads), leave one network out: model "
                 f"{_m(p4['model'])}; MACs x scale {_m(p4['macs'])}")
    err = result["errors"]
    lines.append(f"scale_error covers {err['level'] * 100:.0f}% of the held-out raw errors of "
                 f"{len(err['calibrated_on'])} sources, each weighing the same")
    lines.append(f"strict coverage pooled {err['coverage'] * 100:.0f}% (each source scored by "
                 f"error bars calibrated without it; in-sample "
                 f"{err['coverage_in_sample'] * 100:.0f}%)")
    for g, f in err["folds"].items():
        lines.append(f"  {g:10s} held out (bars from {len(f['calibrated_on'])} sources, level "
                     f"{f['level'] * 100:.0f}%, scale part {f['scale_error'] * 100:.1f}%): "
                     + ", ".join(
            f"{p} bar {f['expected_error'][p] * 100:.1f}% ({f['basis'][p]}) covers "
            f"{f['coverage'][p] * 100:.0f}% of {f['n'][p]}" for p in f["coverage"]))
    lines += [f"  note: {n}" for n in err["notes"]]
    lines.append(result["pixel2_pixel3"])
    for name in ("lofo_v2_v3", "lofo_v2_v3large_v3small", "baseline_lofo_v2_v3",
                 "lofo_v2_v3_shared_factors"):
        lines.append(f"\n{name}")
        for phone, entry in result["cv"][name]["devices"].items():
            extra = [("(seen sources)", entry["seen_sources"])] if "seen_sources" in entry else []
            for fam, m in [*entry["families"].items(), ("(pooled)", entry["pooled"]), *extra]:
                lines.append(f"  {phone:7s} {fam:20s} {_m(m)}")
    lines.append("\nleave one source out (raw = fold's reference scale)")
    for g, e in result["cv"]["leave_one_source_out"].items():
        for k in ("published", "blocks", "networks", "host"):
            if k in e:
                lines.append(f"  {g:10s} {k:9s} {_m(e[k])}")
    sh = result["cv"]["fbnet_leave_one_shape_out"]
    lines.append(f"\nFBNet leave one block shape out ({sh['folds']} folds)")
    lines.append(f"  blocks    {_m(sh['blocks'])}")
    lines.append(f"  networks  {_m(sh['networks'])}")
    lines.append(f"  MACs x one scale on the networks: {_m(result['cv']['fbnet_macs_one_scale'])}")
    px = result["cv"]["proxylessnas_mobile_pixel1"]
    lines.append(f"\nProxylessNAS-Mobile, Pixel 1 (in no fit): {px['predicted_ms']:.1f} ms vs "
                 f"{px['published_ms']:.0f} ms ({px['error'] * 100:+.1f}%, quoted "
                 f"{px['expected_error'] * 100:.1f}%); ratio to MobileNetV2 "
                 f"{px['ratio_to_v2']:.3f} vs {px['published_ratio_to_v2']:.3f}")
    mn = result["cv"]["mnasnet_a1_pixel1"]
    lines.append(f"MnasNet-A1, Pixel 1, 25 settings (in no fit): raw "
                 f"{mn['raw']['rmspe'] * 100:.1f}% ({mn['within_expected'] * 100:.0f}% within "
                 f"the quoted {mn['expected_error'] * 100:.1f}%); after one scale "
                 f"{mn['model']['rmspe'] * 100:.1f}% (multiply-adds "
                 f"{mn['macs']['rmspe'] * 100:.1f}%, + constant "
                 f"{mn['macs_constant']['rmspe'] * 100:.1f}%)")
    return "\n".join(lines)


def sweep_report(rows: list[dict], field: str = "block_weight") -> str:
    """A markdown table: one row per block (or host) weight."""
    lines = [f"| {field.replace('_', ' ')} | LOFO RMSPE P1 / P2 / P3 | LOSO after one scale "
             "v3_paper / v2_readme / v3_readme / FBNet nets | FBNet source out: after scale, raw "
             "(rho) | FBNet shape-out nets (rho) | expected error P1 / P2 / P3 | strict coverage |",
             "|" + " --- |" * 7]
    for r in rows:
        lo, ls, ee = r["lofo"], r["loso_after_scale"], r["expected_error"]
        lines.append(
            f"| {r[field]:g} | " + " / ".join(f"{lo[p] * 100:.1f}" for p in lo) + "% | "
            + " / ".join(f"{ls[g] * 100:.1f}" for g in ls) + "% | "
            f"{r['fbnet_source_out'] * 100:.1f}%, {r['fbnet_source_out_raw'] * 100:.1f}% "
            f"({r['fbnet_source_out_spearman']:.3f}) | "
            f"{r['fbnet_shape_out'] * 100:.1f}% ({r['fbnet_shape_out_spearman']:.3f}) | "
            + " / ".join(f"{ee[p] * 100:.1f}" for p in ee) + "% | "
            f"{r['strict_coverage'] * 100:.0f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="calibration CSV (default: the shipped copy)")
    parser.add_argument("--out", type=Path, default=Path(model_path()), help="JSON to write")
    parser.add_argument("--check", action="store_true", help="compare with --out, do not write")
    parser.add_argument("--sweep-block-weight", type=float, nargs="+", metavar="W",
                        help="print the strict validation figures at each block weight, write "
                             "nothing (how much the BLOCK_WEIGHT choice moves them)")
    parser.add_argument("--nested-block-weight", type=float, nargs="+", metavar="W",
                        help="leave-one-family-out with the block weight chosen among W inside "
                             "each outer fold (inner leave-one-network-out); write nothing")
    parser.add_argument("--host-weight", type=float, default=None, metavar="W",
                        help="fit with the host XNNPACK units (data/xnnpack_host_units.csv) "
                             "weighing W a row instead of calibrate.HOST_WEIGHT (0.03; 0 = "
                             "without them, as pixel-operator-v3); print its figures, write "
                             "nothing unless --out is given")
    parser.add_argument("--sweep-host-weight", type=float, nargs="+", metavar="W",
                        help="print the strict validation figures at each host row weight (0 = "
                             "no host rows), write nothing")
    parser.add_argument("--shared-traffic", action="store_true",
                        help="the variant with one cost per activation element for every "
                             "operator (calibrate.SHARED_TRAFFIC): print its figures (with "
                             "--sweep/--nested too), write nothing unless --out is given")
    args = parser.parse_args(argv)
    cal = load_calibration(args.data)
    variant = args.shared_traffic or (args.host_weight is not None
                                      and args.host_weight != cal.host_weight)
    if args.host_weight is not None:
        cal = dataclasses.replace(cal, host_weight=args.host_weight)
    if args.sweep_host_weight:
        print(sweep_report(block_weight_sweep(cal, args.sweep_host_weight, "host_weight"),
                           "host_weight"))
        return 0
    if args.shared_traffic:
        cal = dataclasses.replace(cal, tied=SHARED_TRAFFIC)
    if args.nested_block_weight:
        r = nested_block_weight(cal, args.nested_block_weight)
        for fam, c in r["chosen"].items():
            print(f"{fam} held out: chose block weight {c['block_weight']:g} (inner RMSPE " +
                  ", ".join(f"{w:g}: {v * 100:.1f}%" for w, v in c["inner_rmspe"].items()) + ")")
        for phone, m in r["devices"].items():
            print(f"  {phone} {_m(m)}")
        return 0
    if args.sweep_block_weight:
        print(sweep_report(block_weight_sweep(cal, args.sweep_block_weight)))
        return 0
    result = json.loads(json.dumps(fit_all(cal)))
    print(report(result))
    if args.check:
        shipped = json.loads(args.out.read_text())
        same = _close(result, shipped)
        print(f"\nshipped {args.out}: {'reproduced' if same else 'DIFFERS from the refit'}")
        return 0 if same else 1
    if variant and args.out == Path(model_path()):
        return 0  # never overwrite the shipped model with a variant
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
