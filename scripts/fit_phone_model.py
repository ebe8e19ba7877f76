#!/usr/bin/env python
"""Fit the phone latency models and write lotto/latency/data/phone_model.json.

    .venv/bin/python scripts/fit_phone_model.py            # refit, print the report, write JSON
    .venv/bin/python scripts/fit_phone_model.py --check    # refit and compare with the shipped file

Input: lotto/latency/data/pixel_published_latency.csv only (a copy of
shared/data/pixel_published_latency.csv). Deterministic: the same data gives the same file.
See lotto/latency/calibrate.py for the protocol.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from lotto.latency.calibrate import fit_all, load_calibration
from lotto.latency.phone import FEATURES, model_path


def _close(a: object, b: object, rtol: float = 1e-6) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rtol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rtol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=rtol, abs_tol=1e-15)  # type: ignore[arg-type]
    return a == b


def report(result: dict) -> str:
    lines = [f"phone model {result['version']}  data sha256 {result['data']['sha256'][:12]}  "
             f"float rows {result['data']['float_rows']}  excluded {result['data']['excluded']}"]
    lines.append(f"harmonisation factors (label / V3-paper label): {result['harmonisation']}")
    p1 = result["devices"]["pixel1"]
    lines.append("pixel1 coefficients: " + ", ".join(f"{f}={p1['coef'][f]:.4g}" for f in FEATURES))
    for phone, entry in result["devices"].items():
        base = entry["baseline"]["expected_error"]
        lines.append(f"{phone}: scale {entry['scale']:.4f}  expected error (strict LOFO RMSPE) "
                     f"{entry['expected_error'] * 100:.1f}%  baseline {base * 100:.1f}%")
    for name, cv in result["cv"].items():
        lines.append(f"\n{name}")
        lines.append(f"  {'device':8s} {'held out':20s} {'n':>3s} {'RMSPE':>7s} {'<=10%':>6s} "
                     f"{'max':>6s} {'bias':>6s} {'Spearman':>8s}")
        for phone, entry in cv["devices"].items():
            extra = [("(seen sources)", entry["seen_sources"])] if "seen_sources" in entry else []
            for fam, m in [*entry["families"].items(), ("(pooled)", entry["pooled"]), *extra]:
                rho = f"{m['spearman']:.3f}" if "spearman" in m else "-"
                lines.append(
                    f"  {phone:8s} {fam:20s} {m['n']:3d} {m['rmspe'] * 100:6.1f}% "
                    f"{m['within10'] * 100:5.0f}% {m['max_abs_error'] * 100:5.1f}% "
                    f"{m['bias'] * 100:+5.1f}% {rho:>8s}"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="calibration CSV (default: the shipped copy)")
    parser.add_argument("--out", type=Path, default=Path(model_path()), help="JSON to write")
    parser.add_argument("--check", action="store_true", help="compare with --out, do not write")
    args = parser.parse_args(argv)
    result = json.loads(json.dumps(fit_all(load_calibration(args.data))))
    print(report(result))
    if args.check:
        shipped = json.loads(args.out.read_text())
        same = _close(result, shipped)
        print(f"\nshipped {args.out}: {'reproduced' if same else 'DIFFERS from the refit'}")
        return 0 if same else 1
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
