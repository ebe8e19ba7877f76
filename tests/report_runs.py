"""Small real runs (and hand-made search / netadapt runs) shared by the tests of `lotto runs`,
`lotto compare` and the plots: built once per test session, read-only (copy before changing).

Real: three lottery runs on digits (`half`: prune rate 0.5, 3 seeds; `fifth` and `fifth-s1`:
prune rate 0.2, seeds 0 and 1), one rethink grid (`tiny`, 2 seeds) and one build-v3 run priced
on the phone model only (`small`). Hand-made, as their commands write them: two search runs
(`rl-run`, `random-run`) and one netadapt run (`adapt`).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import torch
import yaml

torch.set_num_threads(1)

LOTTERY = ["data.name=digits", "train.iterations=10it", "train.eval_every=5it",
           "lottery.rounds=2", "lottery.controls=[reinit]", "device=cpu"]
RETHINK = ["data.name=digits", "data.val_size=100", "model.width=0.0625",
           "train.iterations=6it", "train.batch_size=32", "finetune.iterations=2it",
           "grid.seeds=2", "grid.lrs=[0.1]", "pruning.kinds=[structured]",
           "pruning.structured.modes=[finetune,scratch_e,scratch_b,ticket,reinit]", "device=cpu"]
_ROOT: list[Path] = []


def real_runs() -> Path:
    """The runs directory holding every run above (built on the first call)."""
    if _ROOT:
        return _ROOT[0]
    from rich.progress import Progress

    from lotto.config import load_config
    from lotto.experiments.build_v3 import run_build_v3
    from lotto.experiments.lottery import run_lottery
    from lotto.experiments.rethink import run_rethink

    root = Path(tempfile.mkdtemp(prefix="lotto-report-")) / "runs"
    atexit.register(shutil.rmtree, root.parent, True)
    quiet = Progress(disable=True)
    for name, extra in (("half", ["lottery.prune_rate=0.5", "lottery.seeds=3"]),
                        ("fifth", ["lottery.prune_rate=0.2"]),
                        ("fifth-s1", ["lottery.prune_rate=0.2", "seed=1"])):
        cfg = load_config("lottery", overrides=[*LOTTERY, *extra, f"run.runs_dir={root}",
                                                f"run.name={name}"])
        run_lottery(cfg, progress=quiet)
    cfg = load_config("rethink", overrides=[*RETHINK, f"run.runs_dir={root}", "run.name=tiny"])
    run_rethink(cfg, progress=quiet)
    cfg = load_config("build-v3", overrides=["variant=small", "latency.host=none",
                                             f"run.runs_dir={root}", "run.name=small"])
    run_build_v3(cfg, progress=None)
    fake_search(root, "rl-run", "rl", seed=0)
    fake_search(root, "random-run", "random", seed=0)
    fake_netadapt(root, "adapt")
    _ROOT.append(root)
    return root


def assert_user_error(result, *needles: str) -> None:
    """A CLI result that is one `error:` line on stderr, exit 2, naming each of `needles`."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    message = result.stderr.strip()
    assert message.count("\n") == 0 and message.startswith("error:"), message
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in message, (needle, message)


def write_run(path: Path, config: dict, rows: list[dict], summary: bool = True) -> Path:
    """A run directory as RunDir and MetricsLog write it: config.yaml, metrics.csv/.parquet,
    summary.json at the end."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    frame = pd.DataFrame(rows)
    frame.to_csv(path / "metrics.csv", index=False)
    frame.to_parquet(path / "metrics.parquet", index=False)
    if summary:
        (path / "summary.json").write_text("{}\n")
    return path


# (latency ms, val accuracy) of each search sample: the Pareto front is marked *
SEARCH_SAMPLES = {
    "rl": [(60, 0.70), (70, 0.80), (65, 0.60), (90, 0.85), (80, 0.79)],  # * 60, 70, 90
    "random": [(50, 0.50), (55, 0.65), (85, 0.75), (100, 0.90), (95, 0.70)],  # * 50, 55, 85, 100
}


def fake_search(root: Path, name: str, controller: str, seed: int) -> Path:
    rows = []
    for i, (ms, acc) in enumerate(SEARCH_SAMPLES[controller]):
        rows.append({"step": i // 2, "sample": i, "controller": controller,
                     "spec": f"net{i}", "params": 1000 + i, "macs": 10_000 * ms,
                     "latency_ms": ms, "latency_source": "model", "expected_error": 0.1,
                     "val_accuracy": acc, "reward": acc * (ms / 75) ** -0.07,
                     "cached": False, "seconds": 1.0})
    config = {"seed": seed, "device": "cpu", "run": {"name": name, "runs_dir": str(root)},
              "target_latency": 75.0, "search": {"controller": controller, "samples": 5}}
    return write_run(root / "search" / name, config, rows)


NETADAPT_ROWS = [
    # kind, step, proposal, latency ms, val acc, chosen
    ("seed", 0, "seed", 20.0, 0.80, True),
    ("proposal", 1, "block1.expand", 18.0, 0.78, True),
    ("proposal", 1, "block2.expand", 18.5, 0.70, False),
    ("proposal", 2, "c1", 16.0, 0.76, True),
    ("proposal", 2, "block3.expand", 16.5, 0.71, False),
    ("long_ft", 0, "long_ft", 16.0, 0.79, False),
    ("scratch", 0, "scratch", 16.0, 0.77, False),
    ("baseline", 2, "x0.8", 16.2, 0.74, False),
]


def fake_netadapt(root: Path, name: str) -> Path:
    rows = [{"kind": k, "step": s, "proposal": p, "block": "", "old_width": None,
             "new_width": None, "latency_ms": ms, "latency_source": "model",
             "expected_error": 0.1, "val_accuracy": acc, "score": None, "chosen": chosen,
             "params": 1000, "macs": 10_000, "seconds": 1.0}
            for k, s, p, ms, acc, chosen in NETADAPT_ROWS]
    config = {"seed": 0, "device": "cpu", "run": {"name": name, "runs_dir": str(root)},
              "latency": {"device": "pixel1", "target": "0.8x"},
              "netadapt": {"delta": "0.05x"}}
    return write_run(root / "netadapt" / name, config, rows)


def copy_run(src: Path, dest_root: Path, name: str | None = None) -> Path:
    """A writable copy of a run, under dest_root/<command>/<name>."""
    dest = dest_root / src.parent.name / (name or src.name)
    shutil.copytree(src, dest)
    return dest
