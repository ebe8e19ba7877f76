"""scripts/landmark_supernet.py: without its term it scores with the supernet `lotto search
--fidelity` scores with (so a comparison isolates the term); with it the weights change, and
the landmarks' labels come from (and go into) the train proxy's shared cache."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_fidelity import FAST, config

from lotto.experiments.fidelity import run_fidelity


def test_term_off_is_the_fidelity_runs_supernet_and_on_changes_it(space_file, runs_dir,
                                                                 load_script):
    script = load_script("landmark_supernet")
    run = run_fidelity(config(space_file, runs_dir, "search.proxy=supernet"))
    want = pd.read_csv(run.run.file("fidelity.csv"))
    common = ["--runs-dir", str(runs_dir), "--config", str(space_file), *FAST,
              "supernet.steps=8", "--landmarks", "4"]
    # the fidelity run's supernet had 4 steps: retrain it with 8 here for both arms
    off = script.main([*common, "--weight", "0", "--out", "off.csv"])
    on = script.main([*common, "--weight", "10", "--out", "on.csv"])
    assert len(off) == len(on) == len(want) == 4
    assert list(on.reference) == pytest.approx(list(want.reference))
    assert list(on.loss) != pytest.approx(list(off.loss))  # the term moved the weights
    same = script.main(["--runs-dir", str(runs_dir), "--config", str(space_file), *FAST,
                        "--landmarks", "4", "--weight", "0"])
    assert list(same.score) == pytest.approx(list(want.proxy))  # 4 steps: the same supernet
    assert list(same.loss) == pytest.approx(list(want.proxy_loss))
    caches = list((runs_dir / "search" / ".cache").glob("*.jsonl"))
    labelled = [c for c in caches if not c.name.startswith("supernet-")]
    assert len(labelled) == 1  # the train proxy's: 4 landmarks, trained once for 4 runs
    assert len(labelled[0].read_text().splitlines()) == 4
    assert all(0 <= json.loads(line)["val_accuracy"] <= 1
               for line in labelled[0].read_text().splitlines())
