"""The runs' metrics as one frame, and each command's table aggregated over seeds.

`load(runs, by)` reads every run's `metrics.csv` (its committed rows) into one frame with the
columns `command, run, label`, the config keys that differ between the runs (dotted names;
`config.<key>` where a metrics column has that name), `seed` (from the config where the rows
have none) and the metrics columns. `label` names a group: the run, or with `--by key` the
key's value, so that runs differing only in their seed pool as replicates.

`sections(cmp)` gives each command's table in its natural layout, one section per command
(runs of different commands are never averaged together): mean, std (ddof 1) and, with >= 3
seeds, a 95% Student-t interval of the mean (mean ± t(0.975, n-1) · std/√n; n is the table's
`seeds` or `runs` column). At 3 seeds a percentile bootstrap is always about [min, max] and
covers the mean far less often than 95%; the t-interval is exact for normal replicates.
Runs of one label that share a seed are no replicates: `load` refuses them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lotto.errors import LottoError
from lotto.report.discover import (
    TABLES,
    Run,
    committed_text,
    differing_keys,
    hidden,
    show_value,
)

CI_MIN_SEEDS = 3
CI_LEVEL = 0.95
NAN = float("nan")
ACCURACY_COLUMNS = ("val_accuracy", "test_accuracy", "early_stop_test_accuracy", "accuracy")
# commands whose replicates differ by their training seed (bench and build-v3 rows are
# measurements or counts: two runs of one network are repeated measurements, not seeds)
SEEDED = ("lottery", "rethink", "search", "netadapt")


# ------------------------------------------------------------------------------ statistics


def t_interval(values: Iterable[float], level: float = CI_LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean, mean ± t(1 - (1-level)/2, n-1) · s/√n (s: sample std);
    (nan, nan) with fewer than 3 values (NaNs dropped)."""
    x = np.asarray(list(values), dtype=float)
    x = x[~np.isnan(x)]
    if len(x) < CI_MIN_SEEDS:
        return NAN, NAN
    from scipy.stats import t  # here: importing scipy.stats takes seconds, a 1-seed run needs none
    mean = float(x.mean())
    half = float(t.ppf(1 - (1 - level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean - half, mean + half


def aggregate(frame: pd.DataFrame, keys: Sequence[str], values: Sequence[str],
              group: str = "label") -> pd.DataFrame:
    """Per (group, keys): `<v>` mean, `<v>_std`, `<v>_lo`/`<v>_hi` (t-interval, >= 3 seeds) of
    each value column, and `seeds` (rows pooled: one per seed or run)."""
    cols = [c for c in values if c in frame.columns]
    by = [group, *[k for k in keys if k in frame.columns]]
    records = []
    if frame.empty:
        return pd.DataFrame(columns=[*by, *cols, "seeds"])
    for key, rows in frame.groupby(by, sort=False, dropna=False):
        rec: dict[str, Any] = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for c in cols:
            x = pd.to_numeric(rows[c], errors="coerce").to_numpy(dtype=float)
            ok = x[~np.isnan(x)]
            rec[c] = float(ok.mean()) if len(ok) else NAN
            rec[f"{c}_std"] = float(ok.std(ddof=1)) if len(ok) > 1 else (0.0 if len(ok) else NAN)
            rec[f"{c}_lo"], rec[f"{c}_hi"] = t_interval(ok)
        rec["seeds"] = len(rows)
        records.append(rec)
    return pd.DataFrame(records)


def cell(row: Any, col: str, scale: float = 1.0, digits: int = 2) -> str:
    """'97.81 ± 0.12 [97.60, 98.02]' (std from 2 seeds on, interval from 3)."""
    get = row.get if isinstance(row, dict) else lambda k, d=None: getattr(row, k, d)
    mean = get(col)
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    text = f"{mean * scale:.{digits}f}"
    std, lo, hi, n = get(f"{col}_std"), get(f"{col}_lo"), get(f"{col}_hi"), get("seeds", 1)
    if n and n > 1 and std is not None and std == std:
        text += f" ± {std * scale:.{digits}f}"
    if lo is not None and lo == lo:
        text += f" [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"
    return text


# ------------------------------------------------------------------------------ loading


@dataclass
class Comparison:
    runs: list[Run]
    commands: list[str]
    keys: list[str]  # config keys (dotted) that differ between the runs
    by: list[str]  # config keys that make the labels (empty: one label per run)
    frame: pd.DataFrame  # every metrics row
    notes: list[str] = field(default_factory=list)  # what was left out, and why
    columns: dict[str, str] = field(default_factory=dict)  # config key -> frame column
    labels: dict[str, str] = field(default_factory=dict)  # run id -> its label
    ids: dict[Path, str] = field(default_factory=dict)  # run path -> its id (the frame's `run`)
    # each command's rows with its own columns and dtypes (the frame has every command's)
    by_command: dict[str, pd.DataFrame] = field(default_factory=dict)

    def id(self, run: Run) -> str:
        return self.ids.get(run.path, run.name)


def run_frame(run: Run) -> pd.DataFrame:
    path = run.path / TABLES.get(run.command, "metrics.csv")
    text = committed_text(path)
    if not text.strip():
        return pd.DataFrame()
    try:
        return pd.read_csv(io.StringIO(text))
    except (ValueError, pd.errors.ParserError):
        raise LottoError(f"{path} is corrupt") from None


def run_ids(runs: Sequence[Run]) -> list[str]:
    """A unique name per run: its name, or where names repeat (runs/a/lottery/x and
    runs/b/lottery/x) the shortest end of its path that tells it apart (a/lottery/x)."""
    ids = []
    for run in runs:
        parts = run.path.parts
        same = [r.path.parts for r in runs if r.name == run.name and r.path != run.path]
        k = 1
        while k < len(parts) and any(o[-k:] == parts[-k:] for o in same):
            k += 1
        ids.append("/".join(parts[-k:]))
    return ids


def resolve_by(name: str, runs: list[Run]) -> str:
    """`--by controller` -> the dotted key `search.controller` (exact, or a unique suffix)."""
    keys = list(dict.fromkeys(k for r in runs for k in r.flat() if not hidden(k)))
    if name in keys:
        return name
    hits = [k for k in keys if k.endswith(f".{name}")]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise LottoError(f"--by {name}: ambiguous, matches {', '.join(hits)}")
    differ = differing_keys(runs)
    hint = f"keys that differ here: {', '.join(differ)}" if differ else "no config key differs"
    raise LottoError(f"--by {name}: not a config key of these runs ({hint})")


def _seeds(frame: pd.DataFrame) -> set[str]:
    return {show_value(v) for v in frame["seed"].dropna().unique()} if "seed" in frame else set()


def check_replicates(parts: Sequence[tuple[str, str, str, pd.DataFrame]]) -> None:
    """Refuse two runs of one label (and command) that share a seed: the same seed is the same
    replicate (a copy, or a re-run), and counting it twice shrinks the interval for nothing."""
    seen: dict[tuple[str, str, str], str] = {}
    for command, rid, label, frame in parts:
        if command not in SEEDED:
            continue
        for seed in sorted(_seeds(frame)):
            other = seen.setdefault((command, label, seed), rid)
            if other != rid:
                group = f"label {label!r}" if label != rid else "one label"
                raise LottoError(f"runs {other} and {rid} both have seed {seed} under {group}: "
                                 "the same seed is no second replicate; drop one, or compare "
                                 "them without --by")


def load(runs: list[Run], by: Sequence[str] = ()) -> Comparison:
    commands = list(dict.fromkeys(r.command for r in runs))
    # differing keys per command (a key of one command's schema is no difference between
    # runs of different commands), and the keys every run has that differ across commands
    keys = [k for c in commands for k in differing_keys([r for r in runs if r.command == c])]
    if len(commands) > 1:
        flats = [r.flat() for r in runs]
        keys += [k for k in differing_keys(runs) if all(k in f for f in flats)]
    keys = list(dict.fromkeys(keys))
    by_keys = [resolve_by(b, runs) for b in by]
    frames = [run_frame(r) for r in runs]
    ids = run_ids(runs)
    notes = []
    empty = [i for i, f in zip(ids, frames) if f.empty]
    if empty:
        notes.append(f"no metrics rows yet, left out: {', '.join(empty)}")
    labels = []
    for r, rid in zip(runs, ids):
        if by_keys:
            flat = r.flat()
            labels.append(", ".join(f"{b}={show_value(flat.get(k))}" for b, k in zip(by, by_keys)))
        else:
            labels.append(rid)
    columns: dict[str, str] = {}
    parts = []
    for run, f, rid, label in zip(runs, frames, ids, labels):
        if f.empty:
            continue
        f = f.copy()
        flat = run.flat()
        for k in [*keys, *(b for b in by_keys if b not in keys)]:
            col = columns.setdefault(k, f"config.{k}" if k in f.columns else k)
            value = flat.get(k)
            f[col] = show_value(value) if isinstance(value, (list, dict)) else value
        if "seed" not in f.columns:
            f["seed"] = flat.get("seed")
        f.insert(0, "label", label)
        f.insert(0, "run", rid)
        f.insert(0, "command", run.command)
        parts.append(f)
    check_replicates([(p.command.iloc[0], p.run.iloc[0], p.label.iloc[0], p) for p in parts])
    frame = pd.concat(parts, ignore_index=True, sort=False) if parts else pd.DataFrame(
        columns=["command", "run", "label"])
    own = {c: pd.concat([p for p in parts if p.command.iloc[0] == c], ignore_index=True,
                        sort=False) for c in commands if any(p.command.iloc[0] == c for p in parts)}
    if len(commands) > 1:  # the config keys of the other commands' schemas
        own = {c: f.drop(columns=[k for k in columns.values() if f[k].isna().all()])
               for c, f in own.items()}
    return Comparison(runs, commands, keys, by_keys, frame, notes, columns,
                      dict(zip(ids, labels)), {r.path: i for r, i in zip(runs, ids)}, own)


def parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns with mixed types (a config key that is a number in one run, a string in
    another) as strings, so that Parquet takes them."""
    out = frame.copy()
    for c in out.columns:
        if out[c].dtype == object:
            kinds = {type(v) for v in out[c] if v is not None and v == v}
            if len(kinds) > 1 or (kinds and not kinds <= {str, bool}):
                out[c] = [None if v is None or v != v else str(v) for v in out[c]]
    return out


# ------------------------------------------------------------------------------ sections


@dataclass
class Section:
    """One command's part of a comparison: its rows, its table (numbers and as shown)."""

    name: str  # the command, or "shared" for runs of different commands
    title: str
    frame: pd.DataFrame  # the rows of these runs
    table: pd.DataFrame  # aggregated numbers
    shown: pd.DataFrame  # the same as text cells, in the command's layout
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. latency targets per label


def accuracy_column(frame: pd.DataFrame) -> str | None:
    return next((c for c in ACCURACY_COLUMNS if c in frame.columns
                 and pd.to_numeric(frame[c], errors="coerce").notna().any()), None)


def _num(frame: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(frame[col], errors="coerce")


def _lottery(frame: pd.DataFrame, cmp: Comparison) -> Section:
    values = ["weights_remaining_pct", "test_accuracy", "early_stop_test_accuracy",
              "early_stop_iteration"]
    table = aggregate(frame, ["round", "variant"], values)
    order = {"ticket": 0, "reinit": 1, "random_mask": 2}
    table = table.sort_values(["label", "round", "variant"],
                              key=lambda s: s.map(order).fillna(9) if s.name == "variant" else s,
                              kind="stable").reset_index(drop=True)
    shown = pd.DataFrame({
        "run": table.label, "round": table["round"].astype(int), "variant": table.variant,
        "weights %": [f"{v:.1f}" for v in table.weights_remaining_pct],
        "test acc % (end)": [cell(r, "test_accuracy", 100) for r in table.to_dict("records")],
        "test acc % (ES)": [cell(r, "early_stop_test_accuracy", 100)
                            for r in table.to_dict("records")],
        "ES iteration": [cell(r, "early_stop_iteration", 1, 0) for r in table.to_dict("records")],
        "seeds": table.seeds,
    })
    return Section("lottery", "lottery: test accuracy (end, early stop) and early-stop iteration "
                   "per round; mean ± std [95% t-interval of the mean, n = seeds] over seeds",
                   frame, table, shown)


MODES = ("baseline", "finetune", "scratch_e", "scratch_b", "ticket", "reinit")
MODE_HEADS = {"finetune": "fine-tune", "scratch_e": "scratch-E", "scratch_b": "scratch-B"}


def rethink_model(pruning: str, method: str, ratio: float, mode: str) -> str:
    if mode == "baseline":
        return "unpruned" if pruning == "none" else f"{method}-trained"
    return f"{pruning[0].upper()}-{method} {ratio:g}"


def _rethink(frame: pd.DataFrame, cmp: Comparison) -> Section:
    keys = ["pruning", "method", "ratio", "lr", "mode"]
    table = aggregate(frame, keys, ["test_accuracy", "params_pct", "flops_pct", "budget_factor"])
    modes = [m for m in MODES if m in set(table["mode"])]
    rows = []
    for (label, pruning, method, ratio, lr), at in table.groupby(
            ["label", "pruning", "method", "ratio", "lr"], sort=False):
        recs = {r["mode"]: r for r in at.to_dict("records")}
        first = next(iter(recs.values()))
        row = {"run": label,
               "model": rethink_model(pruning, method, ratio, first["mode"]),
               "lr": f"{lr:g}", "par %": f"{at.params_pct.mean():.1f}",
               "FLOP %": f"{at.flops_pct.mean():.1f}"}
        for m in modes:
            row[MODE_HEADS.get(m, m)] = cell(recs[m], "test_accuracy", 100) if m in recs else ""
        if "scratch_b" in modes:  # the paper's budget multiplier (as `lotto rethink` shows)
            b = recs.get("scratch_b", {}).get("budget_factor")
            row["scratch-B ×"] = "" if b is None or b != b else f"{b:.1f}"
        row["seeds"] = int(at.seeds.max())
        rows.append(row)
    return Section("rethink", "rethink: test accuracy % per pruning and mode; mean ± std "
                   "[95% t-interval of the mean, n = seeds] over seeds; scratch-B ×: its "
                   "training budget over the baseline's", frame, table, pd.DataFrame(rows))


def _fmt(value: Any, scale: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.{digits}f}"


def _bench(frame: pd.DataFrame, cmp: Comparison) -> Section:
    values = ["latency_ms", "expected_error", "params", "measured_ms"]
    # a network is its name at one resolution and width (the name alone is the family: a
    # 0.35x 96 px and a 1.0x 224 px mobilenet_v3_small are not averaged), MACs to be sure
    keys = ["kind", "network", "resolution", "width_mult", "macs", "device", "source"]
    table = aggregate(frame, keys, values)
    recs = table.to_dict("records")
    shown = pd.DataFrame({
        "run": table.label, "kind": table.get("kind"), "network": table.get("network"),
        "px": [_fmt(r.get("resolution"), 1, 0) for r in recs],
        "width": [_fmt(r.get("width_mult"), 1, 2) for r in recs],
        "device": table.get("device"), "source": table.get("source"),
        "latency ms": [cell(r, "latency_ms", 1, 3) for r in recs],
        "expected error %": [_fmt(r.get("expected_error"), 100, 1) for r in recs],
        "measured ms": [cell(r, "measured_ms", 1, 3) for r in recs],
        "MACs (M)": [_fmt(r.get("macs"), 1e-6, 1) for r in recs],
        "runs": table.seeds,
    })
    return Section("bench", "bench: latency per network, device and source (measured here, "
                   "lookup-table sum or phone model)", frame, table, shown)


def latency_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("latency_ms")
            and pd.to_numeric(frame[c], errors="coerce").notna().any()]


def _build_v3(frame: pd.DataFrame, cmp: Comparison) -> Section:
    lats = latency_columns(frame)
    acc = [c for c in ("test_accuracy",) if c in frame.columns]
    table = aggregate(frame, ["step", "change"], ["params", "madds", *lats, *acc])
    recs = table.to_dict("records")
    shown = pd.DataFrame({"run": table.label, "step": table["step"], "change": table["change"],
                          "params (M)": [f"{r['params'] / 1e6:.2f}" for r in recs],
                          "MAdds (M)": [f"{r['madds'] / 1e6:.1f}" for r in recs]})
    for c in lats:
        device = c[len("latency_ms_"):] if c != "latency_ms" else "latency"
        if device == "host" and "host_device" in frame.columns:
            device = str(frame.host_device.dropna().iloc[0])
        shown[f"{device} ms"] = [cell(r, c, 1, 2) for r in recs]
    for c in acc:
        shown["test acc %"] = [cell(r, c, 100) for r in recs]
    return Section("build-v3", "build-v3: params, MAdds and latency per change (host: measured; "
                   "phones: predicted)", frame, table, shown)


def parse_target(value: Any, reference: float | None = None) -> float | None:
    """A latency target in ms: 12, "12ms", or "0.8x" of `reference` (the seed's latency)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower()
    try:
        if text.endswith("ms"):
            return float(text[:-2])
        if text.endswith("x"):
            return float(text[:-1]) * reference if reference is not None else None
        return float(text)
    except ValueError:
        return None


def target_key(run: Run) -> str | None:
    flat = run.flat()
    for k in flat:
        if k == "target_latency" or k.endswith(".target_latency") or k == "latency.target":
            return k
    return None


def pareto_front(latency: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats in both (lower latency, higher accuracy),
    by increasing latency."""
    order = sorted((i for i in range(len(latency))
                    if latency[i] == latency[i] and accuracy[i] == accuracy[i]),
                   key=lambda i: (latency[i], -accuracy[i]))
    front, best = [], -math.inf
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return front


def _per_run(frame: pd.DataFrame, summarize: Callable[[pd.DataFrame], dict]) -> pd.DataFrame:
    rows = []
    for (label, run), rows_of in frame.groupby(["label", "run"], sort=False):
        rows.append({"label": label, "run": run, **summarize(rows_of)})
    return pd.DataFrame(rows)


def _search(frame: pd.DataFrame, cmp: Comparison) -> Section:
    acc = accuracy_column(frame)
    targets = {}
    for r in cmp.runs:
        k = target_key(r)
        if k is not None:
            targets[cmp.id(r)] = parse_target(r.flat().get(k))

    def summarize(rows: pd.DataFrame) -> dict:
        out: dict[str, Any] = {"samples": len(rows)}
        if acc is None or "latency_ms" not in rows.columns:
            return out
        a, lat = _num(rows, acc).to_numpy(), _num(rows, "latency_ms").to_numpy()
        ok = ~np.isnan(a)
        if not ok.any():
            return out
        best = int(np.nanargmax(np.where(ok, a, -np.inf)))
        out.update(best_accuracy=a[best], best_latency_ms=lat[best],
                   pareto_points=len(pareto_front(list(lat), list(a))))
        if "reward" in rows.columns:
            out["best_reward"] = float(_num(rows, "reward").max())
        target = targets.get(str(rows.run.iloc[0]))
        if target is not None:
            within = ok & (lat <= target)
            out["target_ms"] = target
            out["best_accuracy_within_target"] = float(a[within].max()) if within.any() else NAN
        return out

    per_run = _per_run(frame, summarize)
    values = ["samples", "best_accuracy", "best_latency_ms", "best_reward",
              "best_accuracy_within_target", "pareto_points", "target_ms"]
    table = aggregate(per_run, [], values)
    recs = table.to_dict("records")
    shown = pd.DataFrame({"run": table.label, "runs": table.seeds,
                          "samples": [cell(r, "samples", 1, 0) for r in recs]})
    if "best_accuracy" in table:
        shown[f"best {acc} %"] = [cell(r, "best_accuracy", 100) for r in recs]
        shown["its latency ms"] = [cell(r, "best_latency_ms", 1, 2) for r in recs]
    if "best_accuracy_within_target" in table:
        shown["target ms"] = [cell(r, "target_ms", 1, 2) for r in recs]
        shown["best within target %"] = [cell(r, "best_accuracy_within_target", 100)
                                         for r in recs]
    if "best_reward" in table:
        shown["best reward"] = [cell(r, "best_reward", 1, 4) for r in recs]
    if "pareto_points" in table:
        shown["Pareto points"] = [cell(r, "pareto_points", 1, 0) for r in recs]
    return Section("search", "search: best sample per run (mean ± std [95% t-interval, "
                   "n = runs] over the runs of a label); latency as the search priced it",
                   frame, table, shown,
                   {"targets": targets, "accuracy": acc})


SPECIAL = ("multiplier", "scratch", "long", "final", "baseline")
KIND_HEADS = {"baseline": "multiplier baseline", "long_ft": "long fine-tune"}


def netadapt_parts(rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """A netadapt run's trajectory (chosen proposals, by step) and its other rows by `kind`
    (long fine-tune, scratch, multiplier baseline...)."""
    kind = rows["kind"].astype(str) if "kind" in rows.columns else pd.Series("", index=rows.index)
    special = kind.str.contains("|".join(SPECIAL), case=False, na=False)
    steps = rows[~special]
    if "chosen" in steps.columns:
        chosen = steps["chosen"].astype(str).str.lower().isin(("true", "1", "1.0"))
        seed = steps["step"] == steps["step"].min() if "step" in steps.columns else chosen
        steps = steps[chosen | seed] if chosen.any() else steps
    if "step" in steps.columns:
        steps = steps.sort_values("step", kind="stable").drop_duplicates("step", keep="last")
    others = {str(k): g for k, g in rows[special].groupby(kind[special], sort=False)}
    return steps, others


def _netadapt(frame: pd.DataFrame, cmp: Comparison) -> Section:
    acc = accuracy_column(frame)
    kinds: list[str] = []

    def summarize(rows: pd.DataFrame) -> dict:
        steps, others = netadapt_parts(rows)
        out: dict[str, Any] = {"steps": max(len(steps) - 1, 0)}
        if len(steps) and "latency_ms" in steps.columns:
            lat = _num(steps, "latency_ms")
            out["seed_latency_ms"], out["final_latency_ms"] = lat.iloc[0], lat.iloc[-1]
        if acc and len(steps):
            out["final_accuracy"] = _num(steps, acc).iloc[-1]
        for k, g in others.items():
            if acc and k:
                kinds.append(k) if k not in kinds else None
                out[f"{k}_accuracy"] = _num(g, acc).iloc[-1]
        return out

    per_run = _per_run(frame, summarize)
    targets = {}
    for r in cmp.runs:
        k = target_key(r)
        seed_ms = per_run.loc[per_run.run == cmp.id(r), "seed_latency_ms"] if (
            "seed_latency_ms" in per_run) else pd.Series(dtype=float)
        if k is not None:
            targets[cmp.id(r)] = parse_target(r.flat().get(k),
                                           float(seed_ms.iloc[0]) if len(seed_ms) else None)
    values = ["steps", "seed_latency_ms", "final_latency_ms", "final_accuracy",
              *(f"{k}_accuracy" for k in kinds)]
    table = aggregate(per_run, [], values)
    recs = table.to_dict("records")
    shown = pd.DataFrame({"run": table.label, "runs": table.seeds,
                          "steps": [cell(r, "steps", 1, 0) for r in recs],
                          "seed ms": [cell(r, "seed_latency_ms", 1, 2) for r in recs],
                          "final ms": [cell(r, "final_latency_ms", 1, 2) for r in recs]})
    if acc:
        shown[f"final {acc} %"] = [cell(r, "final_accuracy", 100) for r in recs]
        for k in kinds:
            head = KIND_HEADS.get(k, k.replace("_", " "))
            shown[f"{head} %"] = [cell(r, f"{k}_accuracy", 100) for r in recs]
    return Section("netadapt", "netadapt: latency and accuracy from the seed to the last step "
                   "(mean ± std [95% t-interval, n = runs] over the runs of a label)",
                   frame, table, shown,
                   {"accuracy": acc, "targets": targets})


def _shared(frame: pd.DataFrame, cmp: Comparison) -> Section | None:
    """Runs of different commands that all have an accuracy and a latency: each run's most
    accurate row and its latency, side by side (one row per run: nothing is averaged across
    commands). None when they do not share both."""
    acc = accuracy_column(frame)
    if acc is None or "latency_ms" not in frame.columns:
        return None
    have = [_num(rows, acc).notna().any() and _num(rows, "latency_ms").notna().any()
            for _, rows in frame.groupby("command", sort=False)]
    if len(have) < 2 or not all(have):
        return None

    def summarize(rows: pd.DataFrame) -> dict:
        out: dict[str, Any] = {"command": rows.command.iloc[0], "rows": len(rows)}
        a = _num(rows, acc)
        best = a.idxmax()
        out.update(best_accuracy=a[best], best_latency_ms=_num(rows, "latency_ms")[best],
                   min_latency_ms=_num(rows, "latency_ms").min())
        return out

    per_run = _per_run(frame, summarize)
    values = ["rows", "best_accuracy", "best_latency_ms", "min_latency_ms"]
    table = aggregate(per_run, ["command"], values)
    recs = table.to_dict("records")
    shown = pd.DataFrame({"run": table.get("label"), "command": table.get("command"),
                          "rows": [cell(r, "rows", 1, 0) for r in recs],
                          f"best {acc} %": [cell(r, "best_accuracy", 100) for r in recs],
                          "its latency ms": [cell(r, "best_latency_ms", 1, 3) for r in recs],
                          "lowest latency ms": [cell(r, "min_latency_ms", 1, 3) for r in recs]})
    return Section("shared", f"{' vs '.join(cmp.commands)}: each run's most accurate row "
                   f"({acc}) and its latency", frame, table, shown, {"accuracy": acc})


SECTIONS: dict[str, Callable[[pd.DataFrame, Comparison], Section]] = {
    "lottery": _lottery, "rethink": _rethink, "bench": _bench, "build-v3": _build_v3,
    "search": _search, "netadapt": _netadapt,
}


def sections(cmp: Comparison) -> list[Section]:
    """One section per command, in its layout, from the rows of that command's runs only;
    with runs of several commands that share accuracy and latency, a `shared` section too."""
    out: list[Section] = []
    if cmp.frame.empty:
        return out
    for command in cmp.commands:
        rows = cmp.by_command.get(command, cmp.frame) if len(cmp.commands) > 1 else cmp.frame
        if rows.empty:
            continue
        if command not in SECTIONS:  # listed by `lotto runs`, no comparison layout yet
            cmp.notes.append(f"{command}: no comparison table yet; each run's summary.json "
                             "and figure hold its results")
            continue
        try:
            out.append(SECTIONS[command](rows, cmp))
        except KeyError as e:  # a column the layout needs is missing (an older or partial run)
            cmp.notes.append(f"{command}: column {e} missing from its metrics, no table")
    if len(cmp.commands) > 1:
        shared = _shared(cmp.frame, cmp)
        if shared is not None:
            out.append(shared)
    return out
