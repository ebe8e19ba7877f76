"""CLI start-up time (`make bench`): wall time of `lotto --help` and `lotto runs`, and the
imports behind it (`python -X importtime`). Goal: both under 1 s on an idle machine.

Each command runs in a fresh interpreter `--repeat` times (median and best printed); the load
average comes first, since a busy machine stretches every number. For reference the script also
times `import torch` alone: what every command paid before the CLI modules imported their heavy
dependencies inside the commands (issue 12).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOTTO = [sys.executable, "-m", "lotto"]
GOAL_S = 1.0


def wall(argv: list[str], repeat: int) -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return times


def import_profile(module: str, top: int) -> tuple[float, list[tuple[float, str]]]:
    """Total seconds of `import module` and its `top` slowest imports (cumulative)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stderr
    rows = []
    for line in out.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(1)) / 1e6, len(m.group(2)), m.group(3)))
    total = next(s for s, _, name in reversed(rows) if name == module)
    children = sorted(((s, name) for s, depth, name in rows if depth > 1 and name != module),
                      reverse=True)
    return total, children[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--top", type=int, default=6, help="slowest imports listed")
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min); {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        (runs / "lottery").mkdir(parents=True)
        cases = {
            "lotto --help": [*LOTTO, "--help"],
            "lotto runs": [*LOTTO, "runs", "--runs-dir", str(runs)],
            "python -c 'import torch' (reference)": [sys.executable, "-c", "import torch"],
        }
        print(f"{'command':<40} {'median s':>9} {'best s':>8}  goal")
        for name, argv in cases.items():
            times = wall(argv, args.repeat)
            goal = "" if "reference" in name else (
                "ok" if statistics.median(times) < GOAL_S else f"over {GOAL_S:g} s")
            print(f"{name:<40} {statistics.median(times):>9.2f} {min(times):>8.2f}  {goal}")
    total, slow = import_profile("lotto.cli", args.top)
    print(f"python -X importtime: import lotto.cli = {total:.2f} s; slowest imports inside:")
    for seconds, name in slow:
        print(f"  {seconds:6.3f} s  {name}")


if __name__ == "__main__":
    main()
