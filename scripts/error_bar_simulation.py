"""How often bars calibrated on n sources cover an unseen (n+1)-th, on simulated sources.

Each source has a runtime scale (log-normal across sources, sd `--between`) and errors spread
around it (log-normal within, sd `within`); the bar is the smallest covering a share `level`
of the n sources' errors (each source weighing the same, `calibrate.error_bars` with
rel_error 0), scored on the left-out source; averaged over leave-one-out and `--replicates`
draws. Rules: the plain share 2/3 (shipped since pixel-operator-v5) and the split-conformal
share 2/3 x (n + 1) / n (v3, v4). Prints the mean coverage per rule, n and within/between.

    .venv/bin/python scripts/error_bar_simulation.py
"""

from __future__ import annotations

import argparse

import numpy as np

from lotto.latency.calibrate import COVER, MIN_OWN_ROWS, PHONES, error_bars


def pool_of(sources: list[np.ndarray]) -> dict:
    err = np.concatenate(sources)
    return {"phone": np.array(["pixel1"] * len(err)),
            "source": np.concatenate([[f"s{j}"] * len(e) for j, e in enumerate(sources)]),
            "err": err, "rel": dict.fromkeys(PHONES, 0.0),
            "rel_n": dict.fromkeys(PHONES, MIN_OWN_ROWS), "rel_pooled": 0.0}


def conformal_share(n: int) -> float:
    """The split-conformal share of n sources (pixel-operator-v3, v4)."""
    return min(1.0, COVER * (n + 1) / n)


def held_out_coverage(sources: list[np.ndarray], level: float | None = None) -> float:
    """Each source scored by bars calibrated on the others (at `level`, else error_bars' own)."""
    shares = []
    for i, left_out in enumerate(sources):
        pool = pool_of(sources[:i] + sources[i + 1:])
        bars = error_bars(pool) if level is None else error_bars(pool, level)
        shares.append(float(np.mean(left_out <= bars["devices"]["pixel1"]["expected_error"])))
    return float(np.mean(shares))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--between", type=float, default=0.5)
    parser.add_argument("--rows", type=int, default=20, help="errors per source")
    parser.add_argument("--replicates", type=int, default=150)
    args = parser.parse_args()
    print("n  within/between  plain  split-conformal")
    for n in (3, 4):
        for ratio in (0.0, 0.2, 0.4, 0.8, 1.6):
            rng = np.random.default_rng(0)
            cover: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.replicates):
                scales = rng.normal(-2.0, args.between, n + 1)
                sources = [np.exp(mu + ratio * args.between * rng.standard_normal(args.rows))
                           for mu in scales]
                cover[False].append(held_out_coverage(sources))
                cover[True].append(held_out_coverage(sources, conformal_share(n)))
            print(f"{n}  {ratio:14.1f}  {np.mean(cover[False]):.3f}  {np.mean(cover[True]):.3f}")


if __name__ == "__main__":
    main()
