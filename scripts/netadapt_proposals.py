#!/usr/bin/env python
"""NetAdapt's first-step proposals on a phone, priced by the latency interface (no training).

    PYTHONPATH=. .venv/bin/python scripts/netadapt_proposals.py [--seed mobilenet_v3_small]
        [--mult 1.0] [--device pixel1] [--delta 0.05] [--json]

For every knob (block expansion, residual-group width): the widest width (multiple of 8) whose
predicted latency is at most (1 - delta) x the seed's, and the latency that proposal saves.
Also the seed's cost per unit (which layers dominate). Used to compare phone models: run it
under two trees and compare (docs/latency.md, NetAdapt).
"""

from __future__ import annotations

import argparse
import json

from lotto.arch import preset
from lotto.arch.spec import scale_width
from lotto.latency import predict
from lotto.netadapt.proposals import knobs, widest_within


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", default="mobilenet_v3_small")
    ap.add_argument("--mult", type=float, default=1.0)
    ap.add_argument("--device", default="pixel1")
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    spec = preset(a.seed)
    if a.mult != 1.0:
        spec = scale_width(spec, a.mult)
    spec = spec.validate()

    def ms(s):  # noqa: ANN001, ANN202
        return predict(s, a.device).ms

    seed_ms = ms(spec)
    budget = seed_ms * (1 - a.delta)
    out = {"seed_ms": seed_ms, "budget_ms": budget, "proposals": {}, "units": {}}
    for k in knobs(spec):
        p = widest_within(spec, k, budget, 8, ms)
        out["proposals"][k.name] = None if p is None else {
            "blocks": k.blocks, "old": p.old_width, "new": p.new_width,
            "saved_pct": 100 * (1 - p.latency_ms / seed_ms)}
    from lotto.latency.phone import load_phone_model

    model = load_phone_model(a.device)
    for name, v in model.predict_units(spec):
        out["units"][name] = 100 * v / seed_ms
    if a.json:
        print(json.dumps(out))
        return
    print(f"seed {seed_ms:.2f} ms, budget {budget:.2f} ms")
    for name, p in out["proposals"].items():
        print(f"  {name:16s} " + ("none" if p is None else
                                  f"{p['old']:4d} -> {p['new']:4d}  saves {p['saved_pct']:.1f}%"))


if __name__ == "__main__":
    main()
