"""The figures: one per command, drawn the same way for `lotto compare` and for a single run.

Each `*_figure(section)` takes an `aggregate.Section` (rows + table of one or more runs) and
returns a matplotlib `Figure` (or None when there is nothing to draw). Figures are made without
pyplot (`matplotlib.figure.Figure`, Agg canvas), so nothing global changes in the process.
`run_figure(command, metrics, name)` draws one run's figure from its metrics frame; `save`
writes a figure atomically in one or more formats (by the path's suffix).

Bands and error bars: the 95% t-interval of the mean with >= 3 seeds, mean ± std with
2, none with 1.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from lotto.files import replace_atomically
from lotto.report import aggregate
from lotto.report.aggregate import Comparison, Section

VARIANTS = ("ticket", "reinit", "random_mask")
STYLES = ("-", "--", ":", "-.")


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(max(n, 1))]


def band(table: pd.DataFrame, col: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The interval drawn around `col`: t-interval of the mean (>= 3 seeds), else mean ± std."""
    mean = table[col].to_numpy(dtype=float)
    lo = table.get(f"{col}_lo", pd.Series(np.nan, index=table.index)).to_numpy(dtype=float)
    hi = table.get(f"{col}_hi", pd.Series(np.nan, index=table.index)).to_numpy(dtype=float)
    std = table.get(f"{col}_std", pd.Series(0.0, index=table.index)).to_numpy(dtype=float)
    std = np.nan_to_num(std)
    lo = np.where(np.isnan(lo), mean - std, lo)
    hi = np.where(np.isnan(hi), mean + std, hi)
    return lo * scale, hi * scale


def save(fig: Figure, paths: Iterable[Path], write: Callable | None = None, dpi: int = 120
         ) -> list[Path]:
    """Write `fig` to each path (format from the suffix), atomically (temp file + rename).

    `write(path, fn)`: the run directory's writer (`lotto.runs.atomic_write`, which writes on
    rank 0 only under torchrun); default: a temp file renamed here.
    """
    out = []
    for path in paths:
        path = Path(path)
        fmt = path.suffix.lstrip(".") or "png"

        def draw(tmp: Path, fmt: str = fmt) -> None:
            # fixed SVG ids: the same figure writes the same file
            with rc_context({"svg.hashsalt": "lotto"}):
                fig.savefig(tmp, dpi=dpi, format=fmt, metadata=_metadata(fmt))

        (write or replace_atomically)(path, draw)
        out.append(path)
    return out


def _metadata(fmt: str) -> dict | None:
    # SVGs carry a date by default: leave it out so that the same data draws the same file
    return {"Date": None} if fmt == "svg" else None


MAX_POINT_TICKS = 9  # more rounds than this: every k-th point is labelled


def _log_weights_axis(ax: Any, points: Iterable[float]) -> None:
    """Weights remaining (%) on a log axis, labelled at the points themselves (100, 80.2, 64.3,
    ...: a run that stays above 50% still gets a tick per round), thinned when there are many."""
    xs = sorted({round(float(x), 6) for x in points if x == x and x > 0}, reverse=True)
    ax.set_xscale("log")
    if len(xs) > MAX_POINT_TICKS:
        step = math.ceil(len(xs) / MAX_POINT_TICKS)
        xs = xs[::step] + ([xs[-1]] if (len(xs) - 1) % step else [])
    ax.set_xticks(xs, [f"{x:.3g}" for x in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", which="minor", length=0)
    if xs:
        lo, hi = min(xs), max(xs)
        ax.set_xlim(hi * 1.06, lo / 1.06)  # inverted: dense on the left, sparsest on the right
    else:
        ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.grid(alpha=0.3)


def _seeds_title(seeds: int) -> str:
    """What a line and its band are, by the number of seeds."""
    if seeds <= 1:
        return "1 seed"
    if seeds == 2:
        return "mean of 2 seeds, band = mean ± std"
    return f"mean of {seeds} seeds, band = 95% t-interval"


# ------------------------------------------------------------------------------ lottery


def lottery_figure(section: Section) -> Figure | None:
    """LTH Figures 3-4: test accuracy at early stop and at the end, and the early-stop
    iteration, against weights remaining (log x), one line per run and variant."""
    table = section.table
    if table.empty:
        return None
    labels = list(dict.fromkeys(table.label))
    many = len(labels) > 1
    colors = _colors(len(labels) if many else len(VARIANTS))
    fig = Figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3)
    panels = (("early_stop_test_accuracy", 100, "test accuracy at early stop (%)"),
              ("test_accuracy", 100, "test accuracy at the end (%)"),
              ("early_stop_iteration", 1, "early-stop iteration"))
    for li, label in enumerate(labels):
        at = table[table.label == label]
        dense = at[at["round"] == 0]
        for vi, variant in enumerate(VARIANTS):
            if variant not in set(at.variant):
                continue
            rows = at[at.variant == variant]
            if variant != "ticket":  # the controls start from the dense network
                rows = pd.concat([dense[dense.variant == "ticket"], rows])
            rows = rows.sort_values("round")
            x = rows.weights_remaining_pct.to_numpy(dtype=float)
            color = colors[li] if many else colors[vi]
            style = STYLES[vi % len(STYLES)] if many else "-"
            name = f"{label} {variant}" if many else variant
            for ax, (col, scale, _) in zip(axes, panels):
                ax.plot(x, rows[col].to_numpy(dtype=float) * scale, marker="o", ms=3,
                        color=color, ls=style, label=name)
                lo, hi = band(rows, col, scale)
                if (hi > lo).any():
                    ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
    for ax, (_, _, ylabel) in zip(axes, panels):
        _log_weights_axis(ax, table.weights_remaining_pct.to_numpy(dtype=float))
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Iterative magnitude pruning ({_seeds_title(int(table.seeds.max()))})")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ rethink


def rethink_figure(section: Section) -> Figure | None:
    """Per pruning (and lr): test accuracy of fine-tune / scratch-E / scratch-B / ticket /
    reinit, one bar group per mode, one bar per run; the unpruned baseline as a line."""
    table = section.table
    pruned = table[table["mode"] != "baseline"]
    if pruned.empty:
        return None
    groups = list(pruned.groupby(["pruning", "method", "ratio", "lr"], sort=False))
    labels = list(dict.fromkeys(table.label))
    many = len(labels) > 1  # several runs: a colour per run; one run: a colour per mode
    colors = _colors(len(labels) if many else len(aggregate.MODES))
    cols = min(3, len(groups))
    nrows = math.ceil(len(groups) / cols)
    fig = Figure(figsize=(max(7.0, 5.2 * cols), 3.8 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
    for ax, ((kind, method, ratio, lr), rows) in zip(axes, groups):
        modes = [m for m in aggregate.MODES[1:] if m in set(rows["mode"])]
        width = 0.8 / len(labels)
        for li, label in enumerate(labels):
            at = rows[rows.label == label].set_index("mode")
            present = [m for m in modes if m in at.index]
            if not present:
                continue
            sub = at.loc[present]
            lo, hi = band(sub, "test_accuracy", 100)
            mean = sub.test_accuracy.to_numpy(dtype=float) * 100
            x = np.array([modes.index(m) for m in present]) + (li - (len(labels) - 1) / 2) * width
            err = np.vstack([mean - lo, hi - mean])
            color = ([colors[li]] * len(present) if many else
                     [colors[aggregate.MODES.index(m)] for m in present])
            ax.bar(x, mean, width, color=color, label=label if many else None,
                   yerr=err if (err > 0).any() else None, capsize=3)
            for xi, value in zip(x, mean):  # the number on the bar: the axis starts at 0
                ax.annotate(f"{value:.1f}", (xi, value), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 2), textcoords="offset points")
            base = table[(table.label == label) & (table["mode"] == "baseline")
                         & (table["pruning"] == "none") & (table.lr == lr)]
            if len(base):
                ax.axhline(float(base.test_accuracy.iloc[0]) * 100,
                           color=colors[li] if many else "black", ls=":", lw=1,
                           label=None if many else "unpruned baseline")
        ax.set_xticks(range(len(modes)), [aggregate.MODE_HEADS.get(m, m) for m in modes],
                      fontsize=8)
        # bars start at zero: a bar's length is its accuracy (a cut axis exaggerates gaps)
        top = float(table.test_accuracy.max()) * 100
        ax.set_ylim(0, min(100.0, top * 1.12) if top > 0 else 1)
        ax.set_title(f"{aggregate.rethink_model(kind, method, ratio, 'x')} @ lr {lr:g}",
                     fontsize=9)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8, loc="best")
    seeds = int(table.seeds.max()) if "seeds" in table.columns else 1
    fig.suptitle("Fine-tune vs scratch, ticket vs reinit\n(dotted: unpruned baseline; "
                 f"{_seeds_title(seeds).replace('band', 'error bar')})", fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ search


def search_figure(section: Section) -> Figure | None:
    """Accuracy vs latency of every sample, the Pareto front of each run, the target line."""
    return _accuracy_vs_latency(section, "Search: every sample, Pareto front per run (lines)")


def _accuracy_vs_latency(section: Section, title: str, mixed: bool = False) -> Figure | None:
    """Every row as a point, the Pareto front of each run as a line, the targets (search)."""
    frame, acc = section.frame, section.extra.get("accuracy")
    if acc is None or "latency_ms" not in frame.columns:
        return None

    def xy(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return (pd.to_numeric(rows.latency_ms, errors="coerce").to_numpy(dtype=float),
                pd.to_numeric(rows[acc], errors="coerce").to_numpy(dtype=float) * 100)

    labels = list(dict.fromkeys(frame.label))
    colors = _colors(len(labels))
    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    for li, label in enumerate(labels):
        at = frame[frame.label == label]
        lat, a = xy(at)
        ax.scatter(lat, a, s=12, alpha=0.5, color=colors[li],
                   label=f"{label} ({at.command.iloc[0]})" if mixed else label)
        for _, rows in at.groupby("run", sort=False):
            rl, ra = xy(rows)
            front = aggregate.pareto_front(list(rl), list(ra))
            if front:
                ax.step(rl[front], ra[front], where="post", color=colors[li], lw=1.5)
    for target in sorted({t for t in section.extra.get("targets", {}).values() if t}):
        ax.axvline(target, color="gray", ls="--", lw=1)
        ax.text(target, ax.get_ylim()[0], f" target {target:g} ms", color="gray", fontsize=8,
                va="bottom")
    source = "" if mixed else _sources(frame)
    ax.set_xlabel(f"latency (ms{', ' + source if source else ''})")
    ax.set_ylabel(f"{acc.replace('_', ' ')} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _sources(frame: pd.DataFrame) -> str:
    if "latency_source" not in frame.columns:
        return ""
    return "/".join(str(s) for s in dict.fromkeys(frame.latency_source.dropna()))


# ------------------------------------------------------------------------------ netadapt


def netadapt_figure(section: Section) -> Figure | None:
    """Latency vs accuracy from the seed along the chosen steps, per run; the width-multiplier
    baseline as a dashed line, long fine-tune / scratch results as stars, the target line."""
    frame, acc = section.frame, section.extra.get("accuracy")
    if acc is None or "latency_ms" not in frame.columns:
        return None
    labels = list(dict.fromkeys(frame.label))
    colors = _colors(len(labels))
    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    markers = ("*", "P", "D", "s")
    for (label, run), rows in frame.groupby(["label", "run"], sort=False):
        color = colors[labels.index(label)]
        steps, others = aggregate.netadapt_parts(rows)
        lat = pd.to_numeric(steps.latency_ms, errors="coerce").to_numpy(dtype=float)
        a = pd.to_numeric(steps[acc], errors="coerce").to_numpy(dtype=float) * 100
        ax.plot(lat, a, marker="o", ms=3, color=color, label=f"{run} steps")
        if len(lat):
            ax.annotate("seed", (lat[0], a[0]), fontsize=7, color=color)
        for i, (kind, g) in enumerate(others.items()):
            g = g.assign(_ms=pd.to_numeric(g.latency_ms, errors="coerce")).sort_values("_ms")
            ga = pd.to_numeric(g[acc], errors="coerce").to_numpy(dtype=float) * 100
            if "multiplier" in kind or kind == "baseline":  # width-multiplier baseline
                ax.plot(g._ms, ga, ls="--", marker="x", color=color, label=f"{run} {kind}")
            else:
                ax.scatter(g._ms, ga, marker=markers[i % len(markers)], s=90, color=color,
                           edgecolor="black", lw=0.5, label=f"{run} {kind}", zorder=3)
    for target in sorted({t for t in section.extra.get("targets", {}).values() if t}):
        ax.axvline(target, color="gray", ls="--", lw=1)
    source = _sources(frame)
    ax.set_xlabel(f"latency (ms{', ' + source if source else ''})")
    ax.set_ylabel(f"{acc.replace('_', ' ')} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("NetAdapt: trajectory from the seed (dashed: width-multiplier baseline)")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ latency


def _errorbar(rows: pd.DataFrame, col: str, error_col: str | None) -> np.ndarray | None:
    """(2, n) lower/upper bar lengths of +-relative error; the lower one never passes 0 ms (a
    noisy measurement's IQR/median can exceed 100%: latency is never negative)."""
    if error_col is None or error_col not in rows.columns:
        return None
    err = pd.to_numeric(rows[error_col], errors="coerce").to_numpy(dtype=float)
    ms = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
    up = np.nan_to_num(np.abs(err) * ms)
    return np.vstack([np.minimum(up, np.nan_to_num(np.maximum(ms, 0.0))), up])


# The reference and the estimate of each kind of validation row (bench's `kind` column): a
# phone's truth is the published latency the phone model was fitted on, not a measurement here.
PROVENANCE = {
    "phone_cv": ("published latency", "phone model, held out"),
    "validation": ("measured end to end here", "lookup-table sum"),
    "calibration_cv": ("measured (your bench runs)", "calibrated model, held out"),
}
DEFAULT_PROVENANCE = ("reference", "estimate")


def bench_figure(section: Section) -> Figure | None:
    """Latency vs MACs per network, one colour per device and source, error bar = expected
    error (measured: p25..p75); with validation rows also predicted vs measured."""
    frame = section.frame
    if "latency_ms" not in frame.columns or "macs" not in frame.columns:
        return None
    frame = frame[pd.to_numeric(frame.latency_ms, errors="coerce").notna()]
    if frame.empty:
        return None
    checked = "measured_ms" in frame.columns and pd.to_numeric(
        frame.measured_ms, errors="coerce").notna().sum() >= 2
    fig = Figure(figsize=(13 if checked else 7, 4.8))
    axes = np.atleast_1d(fig.subplots(1, 2 if checked else 1))
    groups = list(frame.groupby(["device", "source"], sort=False))
    colors = _colors(len(groups))
    ax = axes[0]
    for (device, source), rows in groups:
        color = colors[[g[0] for g in groups].index((device, source))]
        ms = pd.to_numeric(rows.latency_ms, errors="coerce").to_numpy(dtype=float)
        macs = pd.to_numeric(rows.macs, errors="coerce").to_numpy(dtype=float) / 1e6
        if source == "measured" and {"p25_ms", "p75_ms"} <= set(rows.columns):
            p25 = pd.to_numeric(rows.p25_ms, errors="coerce").to_numpy(dtype=float)
            p75 = pd.to_numeric(rows.p75_ms, errors="coerce").to_numpy(dtype=float)
            yerr = np.nan_to_num(np.vstack([ms - p25, p75 - ms]))
        else:
            yerr = _errorbar(rows, "latency_ms", "expected_error")
        ax.errorbar(macs, ms, yerr=yerr, fmt="o", ms=4, capsize=2, color=color,
                    label=f"{device} ({source})")
        if len(rows) <= 15:
            for x, y, name in zip(macs, ms, rows.network):
                ax.annotate(str(name), (x, y), fontsize=6, xytext=(3, 2),
                            textcoords="offset points")
    ax.set_xlabel("multiply-adds (M)")
    ax.set_ylabel("latency (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Latency vs MACs (bar: expected error or p25..p75)")
    if checked:
        ax = axes[1]
        rows = frame[pd.to_numeric(frame.measured_ms, errors="coerce").notna()]
        measured = pd.to_numeric(rows.measured_ms, errors="coerce").to_numpy(dtype=float)
        predicted = pd.to_numeric(rows.latency_ms, errors="coerce").to_numpy(dtype=float)
        ax.scatter(measured, predicted, s=14, label="prediction")
        if "baseline_ms" in rows.columns:
            base = pd.to_numeric(rows.baseline_ms, errors="coerce").to_numpy(dtype=float)
            if not np.isnan(base).all():
                ax.scatter(measured, base, s=10, marker="x", color="gray",
                           label="MACs baseline")
        top = float(np.nanmax([measured.max(), predicted.max()]))
        ax.plot([0, top], [0, top], color="black", lw=0.8)
        kinds = list(dict.fromkeys(rows["kind"].dropna())) if "kind" in rows.columns else []
        truth, guess = (" / ".join(dict.fromkeys(PROVENANCE.get(k, DEFAULT_PROVENANCE)[i]
                                                 for k in kinds or [None])) for i in (0, 1))
        ax.set_xlabel(f"{truth} (ms)")
        ax.set_ylabel(f"{guess} (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{guess[0].upper() + guess[1:]} vs {truth}", fontsize=9)
    fig.tight_layout()
    return fig


def build_v3_figure(section: Section) -> Figure | None:
    """The construction steps, one panel per device: accuracy vs latency when the run trained
    its networks (the paper's figure), else latency vs MAdds; error bar = the latency source's
    expected error. Points carry their step number; the steps are named under the panels (long
    change names next to close points would overlap)."""
    frame = section.frame
    lats = aggregate.latency_columns(frame)
    if not lats or "madds" not in frame.columns:
        return None
    acc = pd.to_numeric(frame.get("test_accuracy", pd.Series(dtype=float)), errors="coerce")
    with_acc = int(acc.notna().sum()) >= 2
    labels = list(dict.fromkeys(frame.label))
    colors = _colors(len(labels))
    fig = Figure(figsize=(6.2 * len(lats), 5.2))
    axes = np.atleast_1d(fig.subplots(1, len(lats)))
    for ax, col in zip(axes, lats):
        device = col[len("latency_ms_"):] or "latency"
        error_col = f"{device}_error"
        source_col = f"{device}_source"
        if device == "host" and "host_device" in frame.columns:
            device = str(frame.host_device.dropna().iloc[0])
        for (label, _run), rows in frame.groupby(["label", "run"], sort=False):
            rows = rows.sort_values("step")
            ms = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
            color = colors[labels.index(label)]
            err = _errorbar(rows, col, error_col)
            if with_acc:
                a = pd.to_numeric(rows.test_accuracy, errors="coerce").to_numpy(dtype=float)
                ok = ~np.isnan(a) & ~np.isnan(ms)
                x, y = ms[ok], a[ok] * 100
                xerr = err[:, ok] if err is not None else None
                ax.errorbar(x, y, xerr=xerr, marker="o", ms=4, capsize=2, color=color,
                            label=label)
                steps = rows.step.to_numpy()[ok]
            else:
                x = ms
                y = pd.to_numeric(rows.madds, errors="coerce").to_numpy(dtype=float) / 1e6
                x, y = y, ms  # MAdds across, latency up
                ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=2, color=color,
                            label=label)
                steps = rows.step.to_numpy()
            for i, (xi, yi, step) in enumerate(zip(x, y, steps)):
                # alternate sides: consecutive changes often land close together
                ax.annotate(str(int(step)), (xi, yi), fontsize=8, color=color,
                            xytext=(5, 3) if i % 2 == 0 else (-11, -11),
                            textcoords="offset points")
        source = ""
        if source_col in frame.columns:
            source = "/".join(str(s) for s in dict.fromkeys(frame[source_col].dropna()))
        ax.set_title(f"{device}{f' ({source})' if source else ''}")
        if with_acc:
            ax.set_xlabel(f"latency on {device} (ms)")
            ax.set_ylabel("test accuracy (%)")
        else:
            ax.set_xlabel("multiply-adds (M)")
            ax.set_ylabel(f"latency on {device} (ms)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    first = frame[frame.run == frame.run.iloc[0]].sort_values("step")
    names = "; ".join(f"{int(r.step)} {r.change}" for r in first.itertuples())
    fig.text(0.01, 0.01, "\n".join(textwrap.wrap(f"steps: {names}", 160)), fontsize=7,
             va="bottom")
    fig.suptitle("MobileNetV3 construction: " + ("accuracy vs latency per change" if with_acc
                                                 else "each change priced"))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


# ------------------------------------------------------------------------------ mixed


def shared_figure(section: Section) -> Figure | None:
    """Runs of different commands: accuracy vs latency of their rows, when both are shared."""
    return _accuracy_vs_latency(section, "Accuracy vs latency (lines: Pareto front per run)",
                                mixed=True)


FIGURES: dict[str, Callable[[Section], Figure | None]] = {
    "lottery": lottery_figure, "rethink": rethink_figure, "search": search_figure,
    "netadapt": netadapt_figure, "bench": bench_figure, "build-v3": build_v3_figure,
    "shared": shared_figure,
}


def figure(section: Section) -> Figure | None:
    return FIGURES[section.name](section)


def run_figure(command: str, metrics: pd.DataFrame, name: str) -> Figure | None:
    """One run's figure, from its metrics frame (what `lotto compare <run>` draws)."""
    if metrics.empty:
        return None
    frame = metrics.copy()
    frame.insert(0, "label", name)
    frame.insert(0, "run", name)
    frame.insert(0, "command", command)
    if "seed" not in frame.columns:
        frame["seed"] = 0
    cmp = Comparison([], [command], [], [], frame)
    (section,) = aggregate.sections(cmp)
    return figure(section)


def save_run_figure(command: str, metrics: pd.DataFrame, path: Path,
                    write: Callable | None = None) -> Path | None:
    """`run_figure` written to `path` (PNG); None when the run has nothing to draw."""
    fig = run_figure(command, metrics, Path(path).parent.name)
    if fig is None:
        return None
    save(fig, [path], write=write)
    return Path(path)


__all__: Sequence[str] = ("FIGURES", "figure", "run_figure", "save", "save_run_figure")
