"""One table from several `lotto search --fidelity N` runs on the same networks: each proxy's
Kendall tau (95% bootstrap interval) against each reference budget, each reference's
seed-to-seed tau, the tau between reference budgets and the range of reference accuracies.

Each run is named PROXY@REFERENCE=PATH (PATH: a run directory or its fidelity.csv):

    PYTHONPATH=$PWD python scripts/fidelity_matrix.py \\
        train@320=runs_fid/search/a train@1280=runs_fid/search/b \\
        supernet@320=runs_fid/search/c supernet@1280=runs_fid/search/c2

Runs are aligned by spec; only the networks present in every run are used (their number is
printed), so every figure of the table is on the same networks. Runs of one reference budget
must agree on its accuracies (they come from one reference cache); a mismatch is an error.
The bootstrap uses `lotto.search.fidelity.bootstrap_tau` with the seed and draws a fidelity
run uses by default (fidelity.seed 1000, fidelity.bootstrap 1000), so a cell over all of a
run's networks repeats its summary.json.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lotto.search.fidelity import bootstrap_tau, seed_tau, tau


@dataclass(frozen=True)
class Run:
    proxy: str
    reference: str
    table: pd.DataFrame  # fidelity.csv, indexed by spec


@dataclass
class Matrix:
    networks: int
    proxies: list[str]
    references: list[str]
    cells: dict[tuple[str, str], tuple[float, float, float]]  # (proxy, ref): tau, lo, hi
    seed_taus: dict[str, float]  # reference: tau between its seeds
    ranges: dict[str, tuple[float, float]]  # reference: lowest and highest mean accuracy
    between: dict[tuple[str, str], tuple[float, float]]  # refs a, b: mean over seeds, of means


def parse_run(text: str) -> Run:
    """PROXY@REFERENCE=PATH -> a Run (PATH: a run directory or a fidelity.csv)."""
    label, sep, path = text.partition("=")
    proxy, at, reference = label.partition("@")
    if not (sep and at and proxy and reference and path):
        raise SystemExit(f"{text!r}: expected PROXY@REFERENCE=PATH")
    file = Path(path)
    if file.is_dir():
        file = file / "fidelity.csv"
    table = pd.read_csv(file)
    if table.spec.duplicated().any():
        raise SystemExit(f"{file}: a spec appears twice")
    return Run(proxy, reference, table.set_index("spec"))


def seed_columns(table: pd.DataFrame) -> list[str]:
    return sorted(c for c in table.columns if c.startswith("reference_seed"))


def reference_tables(runs: list[Run], specs: list[str]) -> dict[str, pd.DataFrame]:
    """Per reference budget, its per-seed accuracies on `specs`; runs sharing a budget must agree
    (a mismatch means two different reference settings under one name)."""
    out: dict[str, pd.DataFrame] = {}
    for run in runs:
        ref = run.table.loc[specs, seed_columns(run.table)]
        if run.reference in out:
            seen = out[run.reference]
            if list(seen.columns) != list(ref.columns) or not np.allclose(seen, ref):
                raise SystemExit(f"reference {run.reference!r}: runs disagree on its accuracies")
        else:
            out[run.reference] = ref
    return out


def between_tau(a: pd.DataFrame, b: pd.DataFrame) -> tuple[float, float]:
    """Tau between two reference budgets: the mean over their common seeds of the per-seed tau,
    and the tau of the seed means."""
    common = [c for c in a.columns if c in b.columns]
    per_seed = float(np.mean([tau(a[c], b[c]) for c in common])) if common else float("nan")
    return per_seed, tau(a.mean(axis=1), b.mean(axis=1))


def build(runs: list[Run], draws: int = 1000, seed: int = 1000) -> Matrix:
    """The table's figures, on the networks present in every run."""
    # in the first run's row order (the draw's), so the bootstrap resamples as the run did
    specs = [s for s in runs[0].table.index if all(s in r.table.index for r in runs[1:])]
    if len(specs) < 3:
        raise SystemExit(f"{len(specs)} networks common to all runs: at least 3 needed")
    labels = [(r.proxy, r.reference) for r in runs]
    if len(set(labels)) < len(labels):
        raise SystemExit("two runs with one PROXY@REFERENCE label")
    refs = reference_tables(runs, specs)
    cells = {}
    for run in runs:
        reference = refs[run.reference].mean(axis=1)
        proxy = run.table.loc[specs, "proxy"]
        cells[(run.proxy, run.reference)] = (tau(proxy, reference),
                                             *bootstrap_tau(proxy, reference, draws, seed))
    means = {name: ref.mean(axis=1) for name, ref in refs.items()}
    return Matrix(
        networks=len(specs),
        proxies=list(dict.fromkeys(r.proxy for r in runs)),
        references=list(refs),
        cells=cells,
        seed_taus={name: seed_tau([ref[c] for c in ref.columns]) for name, ref in refs.items()},
        ranges={name: (float(m.min()), float(m.max())) for name, m in means.items()},
        between={(a, b): between_tau(refs[a], refs[b])
                 for a, b in itertools.combinations(refs, 2)})


def render(m: Matrix) -> str:
    """Markdown: proxies x reference budgets, then one row per reference's own figures."""
    head = ["proxy \\ reference", *m.references]
    lines = [f"{m.networks} networks common to all runs", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for proxy in m.proxies:
        row = [proxy]
        for ref in m.references:
            t = m.cells.get((proxy, ref))
            row.append(f"{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}]" if t else "")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("| reference seed 0 vs seed 1 | "
                 + " | ".join(f"{m.seed_taus[r]:.2f}" for r in m.references) + " |")
    lines.append("| reference accuracy (seed mean) | "
                 + " | ".join(f"{m.ranges[r][0]:.3f}-{m.ranges[r][1]:.3f}"
                              for r in m.references) + " |")
    lines.append("")
    for (a, b), (per_seed, of_means) in m.between.items():
        lines.append(f"tau between references {a} and {b}: {per_seed:.2f} (mean over seeds), "
                     f"{of_means:.2f} (seed means)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="PROXY@REFERENCE=PATH (run dir or fidelity.csv)")
    ap.add_argument("--draws", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=1000, help="bootstrap seed")
    args = ap.parse_args()
    print(render(build([parse_run(r) for r in args.runs], args.draws, args.seed)))


if __name__ == "__main__":
    main()
