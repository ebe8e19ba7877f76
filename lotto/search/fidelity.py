"""How well a proxy ranks networks: Kendall's tau against a reference training, with a
bootstrap interval, and the reference's own seed-to-seed tau (the ceiling any proxy can reach).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy.stats import kendalltau


def tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two scorings of the same networks (NaN if fewer than 2 or constant)."""
    if len(a) < 2:
        return float("nan")
    return float(kendalltau(a, b).statistic)


def bootstrap_tau(a: Sequence[float], b: Sequence[float], draws: int = 1000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of tau over networks resampled with replacement."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    n = len(x)
    if n < 3:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        i = rng.integers(0, n, n)
        t = kendalltau(x[i], y[i]).statistic
        if t == t:  # a draw of one repeated network has no ranking
            values.append(t)
    lo, hi = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def seed_tau(per_seed: Sequence[Sequence[float]]) -> float:
    """Mean tau between the reference's seeds, over pairs of seeds."""
    pairs = [tau(a, b) for a, b in itertools.combinations(per_seed, 2)]
    return float(np.mean(pairs)) if pairs else float("nan")
