"""Is a run's result worth summarising? Chance-level or diverged trainings make every comparison
between them meaningless (a lottery whose every round stays at 10% "stays within 1 point of the
dense network" all the way down): the summaries say so instead."""

from __future__ import annotations

import math
from collections.abc import Iterable

CHANCE_MARGIN = 0.02  # accuracy within 2 points of 1/num_classes: no better than guessing


def warning(accuracies: Iterable[float], num_classes: int, losses: Iterable[float] = (),
            reference: float | None = None, what: str = "trainings") -> str | None:
    """A one-line warning when the results are at chance or diverged, else None.

    `accuracies`: the final test accuracies (fractions) of the run's trainings; `losses`: their
    final training losses; `reference`: the accuracy the summary compares against (the dense
    network), checked on its own.
    """
    accs = [float(a) for a in accuracies]
    bad = sum(1 for v in [*accs, *map(float, losses)] if not math.isfinite(v))
    if bad:
        return (f"{bad} NaN/inf accuracies or losses: training diverged; comparisons between "
                "the trainings are not meaningful (lower the learning rate or check the recipe)")
    chance = 1.0 / max(1, int(num_classes))
    near = f"within {100 * CHANCE_MARGIN:.0f} points of chance ({100 * chance:.1f}% for " \
           f"{num_classes} classes)"
    if accs and max(accs) <= chance + CHANCE_MARGIN:
        return (f"every one of the {len(accs)} {what} ended {near}: the networks did not learn, "
                "so comparisons between them are not meaningful (train longer or check the "
                "recipe)")
    if reference is not None and reference <= chance + CHANCE_MARGIN:
        return (f"the reference (dense) network ended {near}: comparisons against it are not "
                "meaningful (train longer or check the recipe)")
    return None
