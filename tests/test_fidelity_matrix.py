"""scripts/fidelity_matrix.py: one table from fidelity.csv files of runs on the same networks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

from lotto.search.fidelity import bootstrap_tau, tau

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fidelity_matrix.py"
spec = importlib.util.spec_from_file_location("fidelity_matrix", SCRIPT)
fm = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = fm  # dataclasses look their module up there
spec.loader.exec_module(fm)

SPECS = ["n0", "n1", "n2", "n3", "n4"]
PROXY = [0.1, 0.2, 0.3, 0.4, 0.5]
SHORT = ([0.30, 0.40, 0.50, 0.60, 0.70], [0.31, 0.42, 0.41, 0.62, 0.71])  # seeds 0, 1
LONG = ([0.80, 0.70, 0.60, 0.50, 0.40], [0.78, 0.71, 0.55, 0.58, 0.42])  # ~ the reverse


def write(path: Path, seeds: tuple[list[float], list[float]], order: list[int]) -> Path:
    """A fidelity.csv as `lotto search --fidelity` writes it, rows in `order`."""
    table = pd.DataFrame({
        "spec": SPECS, "proxy": PROXY,
        "reference": [(a + b) / 2 for a, b in zip(*seeds)],
        "proxy_seconds": 1.0, "reference_seconds": 2.0,
        "reference_seed0": seeds[0], "reference_seed1": seeds[1], "proxy_loss": 1.0})
    path.mkdir()
    table.iloc[order].to_csv(path / "fidelity.csv", index=False)
    return path


def test_the_matrix_from_two_runs(tmp_path):
    short = write(tmp_path / "a", SHORT, [0, 1, 2, 3, 4])
    long = write(tmp_path / "b", LONG, [4, 2, 0, 3, 1])  # rows aligned by spec, not position
    m = fm.build([fm.parse_run(f"train@320={short}"), fm.parse_run(f"train@1280={long}")],
                 draws=200)
    assert m.networks == 5 and m.references == ["320", "1280"] and m.proxies == ["train"]
    assert m.cells[("train", "320")][0] == pytest.approx(1.0)
    assert m.cells[("train", "1280")][0] == pytest.approx(-1.0)
    lo, hi = m.cells[("train", "320")][1:]
    assert lo <= 1.0 <= hi + 1e-9
    assert m.seed_taus["320"] == pytest.approx(tau(*SHORT))
    assert m.seed_taus["1280"] == pytest.approx(tau(*LONG))
    per_seed, of_means = m.between[("320", "1280")]
    assert per_seed == pytest.approx((tau(SHORT[0], LONG[0]) + tau(SHORT[1], LONG[1])) / 2)
    assert of_means == pytest.approx(-1.0)
    assert m.ranges["320"] == pytest.approx((0.305, 0.705))
    text = fm.render(m)
    assert "| train | 1.00 [" in text and "5 networks" in text


def test_only_common_networks_and_one_reference_per_budget(tmp_path):
    short = write(tmp_path / "a", SHORT, [0, 1, 2, 3, 4])
    fewer = write(tmp_path / "b", LONG, [0, 1, 2, 3])
    m = fm.build([fm.parse_run(f"train@320={short}"), fm.parse_run(f"sn@1280={fewer}")], 50)
    assert m.networks == 4
    assert m.cells[("train", "320")][0] == pytest.approx(tau(PROXY[:4], SHORT[0][:4]))
    other = write(tmp_path / "c", LONG, [0, 1, 2, 3, 4])  # a different "320" reference
    with pytest.raises(SystemExit):
        fm.build([fm.parse_run(f"train@320={short}"), fm.parse_run(f"sn@320={other}")], 50)
    with pytest.raises(SystemExit):
        fm.parse_run(f"{short}")


def test_a_cell_over_a_whole_run_repeats_its_bootstrap(tmp_path):
    """Networks keep the first run's row order (the draw's), so a cell's interval is the one
    `lotto search --fidelity` wrote to summary.json (same seed and draws)."""
    ref = [0.62, 0.71, 0.80, 0.66, 0.75, 0.78, 0.69, 0.73, 0.64, 0.77]
    table = pd.DataFrame({"spec": [f"n{9 - i}" for i in range(10)],  # not in sorted order
                          "proxy": [0.3, 0.2, 0.6, 0.1, 0.5, 0.4, 0.35, 0.55, 0.15, 0.45],
                          "reference": ref, "reference_seed0": ref, "reference_seed1": ref})
    table.to_csv(tmp_path / "fidelity.csv", index=False)
    cell = fm.build([fm.parse_run(f"train@320={tmp_path}")], draws=300, seed=1000).cells
    want = bootstrap_tau(table.proxy, table.reference, 300, 1000)
    assert cell[("train", "320")][1:] == pytest.approx(want)
