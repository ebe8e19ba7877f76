"""Start-up: `lotto --help` and `lotto runs` import no torch, pandas or experiment code (each
command imports what it needs inside its function), so that they start in well under a second."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "torchvision", "pandas", "numpy", "scipy", "matplotlib", "lotto.experiments",
         "lotto.latency", "lotto.runs", "lotto.train", "lotto.data", "lotto.arch")
PROBE = f"""
import json, sys
HEAVY = {HEAVY!r}
def heavy():
    return sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
{{body}}
print("HEAVY=" + json.dumps(heavy()), file=sys.stderr)
"""


def probe(body: str, *args: str) -> list[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(body=body), *args],
                         capture_output=True, text=True, env=env, timeout=120)
    line = next(x for x in out.stderr.splitlines() if x.startswith("HEAVY="))
    return [m for m in json.loads(line[len("HEAVY="):]) if "." not in m or
            m.startswith("lotto.")]


def test_import_lotto_cli_is_light() -> None:
    assert probe("import lotto.cli\nimport lotto.cli.app") == []


def test_help_and_runs_are_light(tmp_path: Path) -> None:
    body = """
from lotto.cli import app
for argv in (["--help"], ["runs", "--help"], ["runs", "--runs-dir", sys.argv[1]]):
    try:
        app(argv)
    except SystemExit as e:
        assert e.code == 0, (argv, e.code)
"""
    assert probe(body, str(tmp_path)) == []


def test_help_lists_the_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "lotto", "--help"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    for command in ("lottery", "rethink", "bench", "build-v3", "runs", "compare"):
        assert command in out.stdout, command


def test_a_lenet_and_a_one_seed_summary_import_no_torchvision_or_scipy() -> None:
    """torchvision (it imports torch._dynamo) and scipy.stats cost seconds a process: the
    lottery's driver and workers build LeNet and summarise one seed without them."""
    body = """
from lotto.models import build_model
from lotto.report.aggregate import t_interval
build_model("lenet_300_100", 1, 10, 28)
import math
assert all(math.isnan(v) for v in t_interval([1.0]))  # (nan, nan) for one seed
"""
    loaded = probe(body)
    assert "torch" in loaded and "torchvision" not in loaded and "scipy" not in loaded
