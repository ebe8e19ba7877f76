"""Run directories on disk: which there are, their config, how far they got, their headline.

A run is a folder `runs/<command>/<name>/` holding `config.yaml` (written by `lotto.runs.RunDir`
when the run starts). Its status:

- `failed`: `failures.csv` lists units the parallel layer recorded as failed or skipped (the file
  is removed once a re-run finishes them);
- `complete`: every unit the config asks for has its metrics row (lottery: seeds x rounds x
  variants; rethink: the grid's cells; search: `search.samples`; pipeline: methods x targets x
  seeds, its rows in `results.csv`), or, for commands without units
  counted from the config (bench, build-v3, netadapt),
  `summary.json` (written at the end of a run) is at least as new as `metrics.csv`;
- `incomplete`: anything else (killed, interrupted, running), with how far: `rounds 7/15`,
  `cells 20/36`, `rows 12`.

Only the standard library and PyYAML here: `lotto runs` must start in well under a second.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lotto.errors import LottoError

COMMANDS = ("lottery", "rethink", "search", "netadapt", "bench", "build-v3", "pipeline")
# the rows table of a command, where it is not metrics.csv
TABLES = {"pipeline": "results.csv"}
# config keys that say where a run goes or how fast, not what it computes: never "differing"
# (the same keys as lotto.config.PLACEMENT_KEYS; not imported from there: it loads omegaconf)
HIDDEN_KEYS = ("run", "data.workers", "parallel")


@dataclass
class Run:
    path: Path
    command: str
    config: dict[str, Any]
    status: str = "incomplete"  # complete | incomplete | failed
    progress: str = ""  # "rounds 7/15", "cells 20/36", "rows 12"
    done: int = 0  # units (or rows) finished
    total: int | None = None  # units the config asks for (None: not known from the config)
    failures: int = 0
    started: float = 0.0
    updated: float = 0.0
    headline: str = ""
    summary: dict[str, Any] | None = None
    rows: list[dict[str, str]] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    def flat(self) -> dict[str, Any]:
        flat = flatten(self.config)
        if flat.get("arch") and "model" in flat:  # bench: `arch` (a spec file) wins over `model`
            flat["model"] = None
        return flat

    def as_dict(self, keys: Iterable[str] = ()) -> dict[str, Any]:
        flat = self.flat()
        return {
            "command": self.command, "name": self.name, "path": str(self.path),
            "status": self.status, "progress": self.progress, "done": self.done,
            "total": self.total, "failures": self.failures,
            "started": _iso(self.started), "updated": _iso(self.updated),
            "headline": self.headline, "config": {k: flat.get(k) for k in keys},
        }


# ------------------------------------------------------------------------------ finding runs


def is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file()


def open_run(path: Path) -> Run:
    """Read one run directory (config, metrics rows, failures, summary); LottoError if not one."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise LottoError(f"{path}: no such run directory")
    if not is_run(path):
        raise LottoError(f"{path} is not a run directory (no config.yaml; runs live in "
                         "runs/<command>/<name>/)")
    try:
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        raise LottoError(f"{path / 'config.yaml'} is unreadable") from None
    if not isinstance(config, dict):
        raise LottoError(f"{path / 'config.yaml'} is not a config mapping")
    command = path.parent.name
    if command not in COMMANDS:
        command = next((c for c in COMMANDS if c in config), "")
    if not command:
        raise LottoError(f"{path} is not a run directory of a lotto command (expected "
                         f"runs/<command>/<name>/ with command one of {', '.join(COMMANDS)})")
    run = Run(path.resolve(), command, config)
    run.rows = read_rows(path / TABLES.get(command, "metrics.csv"))
    run.failures = len(read_rows(path / "failures.csv"))
    run.summary = _read_json(path / "summary.json")
    times = [e.stat().st_mtime for e in path.iterdir() if not e.name.startswith(".")]
    run.started, run.updated = min(times), max(times)
    try:
        _status(run)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a hand-edited config
        raise LottoError(f"{path / 'config.yaml'}: not a {command} config ({type(e).__name__}: "
                         f"{e})") from None
    try:
        run.headline = HEADLINES.get(command, _generic_headline)(run)
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
        run.headline = ""
    return run


def _open_all(paths: Iterable[Path], warn: Callable[[str], None] | None) -> list[Run]:
    """The runs among `paths`; one that cannot be read (a corrupt config.yaml...) is skipped
    with a warning, so that it hides no other run."""
    runs = []
    for p in paths:
        try:
            runs.append(open_run(p))
        except LottoError as e:
            if warn is not None:
                warn(f"skipped {p}: {e}")
    return runs


def find_runs(runs_dir: str | Path, command: str | None = None,
              warn: Callable[[str], None] | None = None) -> list[Run]:
    """Every run under `runs_dir/<command>/<name>/`, oldest first; unreadable ones skipped
    (each told to `warn`)."""
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        raise LottoError(f"runs directory {root} does not exist (--runs-dir)")
    if command is not None and command not in COMMANDS:
        raise LottoError(f"--command {command!r}: choose one of {', '.join(COMMANDS)}")
    commands = [command] if command else COMMANDS
    runs = _open_all([p for c in commands if (root / c).is_dir()
                      for p in sorted((root / c).iterdir()) if p.is_dir() and is_run(p)], warn)
    return sorted(runs, key=lambda r: (r.started, r.command, r.name))


def resolve(targets: Iterable[str], runs_dir: str | Path = "runs",
            warn: Callable[[str], None] | None = None) -> list[Run]:
    """Run directories named by paths or globs (also tried under `runs_dir`), in order, once each.

    A glob that matches no run, or a path that is not a run directory, is a LottoError; a glob's
    matches that are not runs (e.g. `runs/bench/lut`, the lookup-table cache) are skipped, and
    so are its runs that cannot be read (told to `warn`). A run named by its path must read.
    """
    root = Path(runs_dir).expanduser()
    found: dict[Path, Run] = {}
    for target in targets:
        if any(ch in target for ch in "*?["):
            matches = sorted(glob.glob(str(Path(target).expanduser())))
            if not matches and not Path(target).is_absolute():
                matches = sorted(glob.glob(str(root / target)))
            paths = [Path(m) for m in matches if Path(m).is_dir() and is_run(Path(m))]
            if not paths:
                raise LottoError(f"no run directory matches {target!r}")
        else:
            path = Path(target).expanduser()
            if not path.exists() and not path.is_absolute() and (root / target).exists():
                path = root / target
            paths = [path]
        globbed = any(ch in target for ch in "*?[")
        for run in _open_all(paths, warn) if globbed else [open_run(p) for p in paths]:
            found.setdefault(run.path, run)
    if not found:
        raise LottoError("no runs given: name run directories or globs, e.g. 'runs/lottery/*'")
    return list(found.values())


# ------------------------------------------------------------------------------ files


def read_rows(path: Path) -> list[dict[str, str]]:
    """A metrics CSV's committed rows as strings; [] when there is no file."""
    return list(csv.DictReader(io.StringIO(committed_text(path))))


def committed_text(path: Path) -> str:
    """A metrics CSV's committed part (a partial last append is cut, as MetricsLog cuts it);
    "" when there is no file."""
    try:
        raw = path.read_bytes()
    except OSError:
        return ""
    committed = None
    try:
        committed = int((path.parent / f".{path.name}.length").read_text())
    except (OSError, ValueError):
        pass
    if committed is None or committed > len(raw):
        committed = raw.rfind(b"\n") + 1
    return raw[:committed].decode("utf-8", errors="replace")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 0.1}} -> {'train.lr': 0.1} (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def hidden(key: str) -> bool:
    return any(key == h or key.startswith(f"{h}.") for h in HIDDEN_KEYS)


def differing_keys(runs: list[Run]) -> list[str]:
    """Config keys (dotted) whose values differ between the runs (placement keys left out)."""
    flats = [r.flat() for r in runs]
    keys = list(dict.fromkeys(k for f in flats for k in f if not hidden(k)))
    if len(runs) < 2:
        return []
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def show_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(show_value(v) for v in value)
    return str(value)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


# ------------------------------------------------------------------------------ status


def lottery_units(cfg: dict[str, Any]) -> tuple[list[tuple[int, int, str]], int]:
    """The (seed, round, variant) units a lottery config asks for, and its pruning rounds."""
    lot = cfg.get("lottery", {})
    rounds, seeds, first = int(lot.get("rounds", 0)), int(lot.get("seeds", 1)), int(cfg["seed"])
    controls = list(lot.get("controls", []))
    units = [(s, r, v) for s in range(first, first + seeds) for r in range(rounds + 1)
             for v in (["ticket"] + controls if r > 0 else ["ticket"])]
    return units, rounds


def rethink_cells(cfg: dict[str, Any]) -> int:
    """How many cells a rethink config's grid has (as lotto.experiments.rethink._Grid.cells)."""
    p, grid = cfg["pruning"], cfg["grid"]
    lr = float(cfg["train"]["lr"])
    lrs = grid.get("lrs") or [lr, round(lr / 10, 12)]
    prunings = [(k, m) for k in p["kinds"] for m in p[k]["methods"] for _ in p[k]["ratios"]]
    baselines = 1 + any(m == "slimming" for _, m in prunings)
    pruned = sum(len(p[k]["modes"]) for k, _ in prunings)
    return int(grid["seeds"]) * len(lrs) * (baselines + pruned)


def _status(run: Run) -> None:
    cfg, rows = run.config, run.rows
    if run.command == "lottery" and "lottery" in cfg:
        units, rounds = lottery_units(cfg)
        have = {(int(_num(r["seed"])), int(_num(r["round"])), r["variant"]) for r in rows
                if r.get("seed") and r.get("round")}
        last = -1
        for rnd in range(rounds + 1):
            if all(u in have for u in units if u[1] == rnd):
                last = rnd
            else:
                break
        run.done, run.total = sum(u in have for u in units), len(units)
        run.progress = f"rounds {max(last, 0)}/{rounds}"
        if last < 0:
            run.progress += " (dense round not finished)"
    elif run.command == "rethink" and "grid" in cfg:
        keys = ("pruning", "method", "ratio", "mode", "lr", "seed")
        run.done = len({tuple(r.get(k) for k in keys) for r in rows})
        run.total = rethink_cells(cfg)
        run.progress = f"cells {run.done}/{run.total}"
    elif run.command == "search" and isinstance(cfg.get("search"), dict) and \
            "samples" in cfg["search"]:
        run.done = len({r.get("sample") for r in rows}) if rows and "sample" in rows[0] \
            else len(rows)
        run.total = int(cfg["search"]["samples"])
        run.progress = f"samples {run.done}/{run.total}"
    elif run.command == "pipeline" and "methods" in cfg:
        run.done = len({(r.get("method"), r.get("target_ms"), r.get("seed")) for r in rows})
        run.total = len(cfg["methods"]) * len(cfg["targets"]) * len(cfg["seeds"])
        run.progress = f"trainings {run.done}/{run.total}"
    else:
        run.done = len(rows)
        unit = {"build-v3": "steps", "search": "samples", "netadapt": "rows"}.get(run.command,
                                                                                 "rows")
        run.progress = f"{unit} {run.done}"
    if run.failures:
        run.status = "failed"
        run.progress += f", {run.failures} failed/skipped"
    elif run.total is not None:
        run.status = "complete" if run.done >= run.total else "incomplete"
    else:
        summary, metrics = run.path / "summary.json", run.path / "metrics.csv"
        fresh = summary.exists() and (not metrics.exists()
                                      or summary.stat().st_mtime >= metrics.stat().st_mtime)
        run.status = "complete" if fresh and run.summary is not None else "incomplete"


# ------------------------------------------------------------------------------ headlines


def _pct(x: Any) -> str:
    return f"{100 * float(x):.2f}%"


def _lottery_headline(run: Run) -> str:
    s = run.summary or {}
    if "dense_early_stop_test_accuracy" not in s:
        return ""
    text = f"dense {_pct(s['dense_early_stop_test_accuracy'])} (ES)"
    hit = s.get("smallest_within_1pt", {}).get("ticket", {})
    if hit.get("weights_remaining_pct") is not None:
        text += f"; ticket within 1 pt down to {hit['weights_remaining_pct']:.1f}% weights"
    return text


def _rethink_headline(run: Run) -> str:
    s = run.summary or {}
    parts = []
    dense = [v for k, v in s.get("baseline", {}).items() if k.startswith("dense@")]
    if dense:
        parts.append(f"baseline {max(v[0] for v in dense):.2f}%")
    comps = s.get("comparisons", [])
    for key, label in (("best_scratch_minus_finetune", "scratch-finetune"),
                       ("ticket_minus_reinit", "ticket-reinit")):
        vals = [c[key] for c in comps if key in c]
        if vals:
            parts.append(f"{label} {sum(vals) / len(vals):+.2f} pt")
    return "; ".join(parts)


def _build_headline(run: Run) -> str:
    s = run.summary or {}
    final = s.get("final") or {}
    if not final:
        return ""
    text = (f"{s.get('final_network', final.get('network'))}: "
            f"{_num(final['params']) / 1e6:.2f}M params, {_num(final['madds']) / 1e6:.0f}M MAdds")
    for key, value in final.items():
        if key.startswith("latency_ms_") and value is not None and key != "latency_ms_host":
            text += f", {key[len('latency_ms_'):]} {_num(value):.1f} ms"
    return text


def _bench_headline(run: Run) -> str:
    s = run.summary or {}
    if s.get("mode") == "price":
        return (f"{s['network']} on {s['device']}: {_num(s['latency_ms']):.3f} ms "
                f"({s['source']})")
    v = s.get("validation")
    if isinstance(v, dict) and "rmspe" in v:
        return f"lookup table vs measured: RMSPE {100 * _num(v['rmspe']):.1f}%"
    cv = s.get("cv_lofo_v2_v3")
    if isinstance(cv, dict):
        return f"{s.get('device')} model: RMSPE {100 * _num(cv['pooled']['rmspe']):.1f}%"
    if "entries" in s:
        return f"lookup table: {s['entries']} entries"
    return ""


def _accuracy_column(rows: list[dict[str, str]]) -> str | None:
    if not rows:
        return None
    return next((c for c in ("val_accuracy", "test_accuracy", "accuracy") if c in rows[0]), None)


def _search_headline(run: Run) -> str:
    acc = _accuracy_column(run.rows)
    if acc is None:
        return ""
    scored = [r for r in run.rows if _num(r.get(acc)) == _num(r.get(acc))]
    if not scored:
        return ""
    key = "reward" if "reward" in scored[0] else acc
    best = max(scored, key=lambda r: _num(r.get(key)))
    text = f"best {acc} {_pct(best[acc])}"
    if "latency_ms" in best:
        text += f" at {_num(best['latency_ms']):.2f} ms"
    return text + f" ({len(run.rows)} samples)"


def _netadapt_headline(run: Run) -> str:
    """The last chosen step's latency, the number of steps (chosen proposals: the seed row is
    no step), and the accuracy of the long fine-tune (the result NetAdapt reports) once it ran,
    else the last step's short fine-tune accuracy."""
    acc = _accuracy_column(run.rows)
    rows = [r for r in run.rows if "latency_ms" in r]
    if not rows:
        return ""
    kinds = "kind" in rows[0]
    if kinds:
        steps = [r for r in rows if r.get("kind") == "proposal"
                 and str(r.get("chosen")).lower() in ("true", "1", "1.0")]
        steps.sort(key=lambda r: _num(r.get("step")))
        path = [r for r in rows if r.get("kind") == "seed"][-1:] + steps
    else:  # an older table: every row a step, the first one the seed
        path = [r for r in rows if str(r.get("chosen", "true")).lower() in ("true", "1", "1.0")]
        steps = path[1:]
    if not path:
        return ""
    last = path[-1]
    text = f"latency {_num(last['latency_ms']):.2f} ms after {len(steps)} steps"
    long_ft = [r for r in rows if r.get("kind") == "long_ft"] if kinds else []
    row, what = (long_ft[-1], "long fine-tune") if long_ft else (last, "short fine-tune")
    # the long fine-tune is tested: its test accuracy is the number to quote
    column = "test_accuracy" if long_ft and _known(row.get("test_accuracy")) else acc
    if column and _known(row.get(column)):
        text += f", {what} {column} {_pct(row[column])}"
    return text


def _pipeline_headline(run: Run) -> str:
    """Per target: the recipe's mean test accuracy minus the best width multiplier's."""
    parts = []
    for t in (run.summary or {}).get("targets", {}).values():
        diff = t["methods"].get("search+netadapt", {}).get("diff_to_best_multiplier")
        if diff and diff.get("mean") is not None:
            parts.append(f"{t['target_ms']:g} ms {100 * diff['mean']:+.2f} pt")
    return ("recipe vs best multiplier: " + ", ".join(parts)) if parts else ""


def _known(value: Any) -> bool:
    return _num(value) == _num(value)


def _generic_headline(run: Run) -> str:
    return ""


HEADLINES = {
    "lottery": _lottery_headline, "rethink": _rethink_headline, "build-v3": _build_headline,
    "bench": _bench_headline, "search": _search_headline, "netadapt": _netadapt_headline,
    "pipeline": _pipeline_headline,
}
