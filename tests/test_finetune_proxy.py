"""scripts/finetune_proxy.py: its from-scratch arm is the train proxy of `lotto search
--fidelity` (same networks, scores and references), so its comparisons are against what the
search ranks by."""

from __future__ import annotations

import pandas as pd
import pytest
from test_fidelity import FAST, config

from lotto.experiments.fidelity import run_fidelity


def test_scratch_arm_is_the_fidelity_runs_train_proxy(space_file, runs_dir, load_script):
    script = load_script("finetune_proxy")
    run = run_fidelity(config(space_file, runs_dir))  # train proxy: 3 steps
    want = pd.read_csv(run.run.file("fidelity.csv"))
    table = script.main(["--runs-dir", str(runs_dir), "--config", str(space_file), *FAST,
                         "--steps", "2", "--scratch", "3"])
    assert sorted(table.arm.unique()) == ["inherit-0", "inherit-2", "scratch-3"]
    got = table[table.arm == "scratch-3"].sort_values("network")
    assert len(got) == len(want) == 4
    assert list(got.score) == pytest.approx(list(want.proxy))
    assert list(got.reference) == pytest.approx(list(want.reference))
    assert (runs_dir / "finetune_proxy.csv").exists()
