"""`lotto compare`: runs side by side, aggregated over seeds, with each paper's figure."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lotto.cli.app import console, err_console, lotto_command

if TYPE_CHECKING:  # pandas: imported inside the command, so `lotto --help` starts fast
    import pandas as pd

MAX_KEYS = 6  # differing config keys shown as columns on the terminal (all of them in the files)


@lotto_command("compare")
def compare(
    targets: Annotated[
        list[str],
        typer.Argument(help="Run directories or quoted globs, e.g. 'runs/search/*' (also "
                            "looked up under --runs-dir).", show_default=False),
    ],
    by: Annotated[
        list[str] | None,
        typer.Option("--by", help="Config key (e.g. controller or lottery.prune_rate) whose "
                     "value labels a group: runs with the same value pool as replicates (e.g. "
                     "runs that differ only in seed). Repeat or comma-separate for several."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write figures (PNG, SVG), tables (CSV, Markdown), "
                     "compare.parquet and a self-contained report.html here."),
    ] = None,
    runs_dir: Annotated[str, typer.Option("--runs-dir", help="Root of the run directories.")
                        ] = "runs",
) -> None:
    """Load the runs' metrics into one frame (differing config keys as columns), aggregate over
    seeds (mean, std, 95% t-interval of the mean with >= 3 seeds) and show each command's
    table; --out adds the figures and report.html. Runs of several commands: one table each."""
    from lotto.report import aggregate
    from lotto.report.discover import resolve, show_value

    if out is not None:
        check_out(out)
    runs = resolve(targets, runs_dir, lambda message: err_console.print(
        f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True))
    keys = [k.strip() for b in by or [] for k in b.split(",") if k.strip()]
    cmp = aggregate.load(runs, keys)
    sections = aggregate.sections(cmp)
    runs_table = _runs_table(cmp, show_value)
    shown = runs_table.drop(columns=["path", *cmp.keys[MAX_KEYS:]])
    if len(cmp.commands) == 1:
        shown = shown.drop(columns="command")
    console.print(_rich(shown, f"{len(runs)} runs"))
    if len(cmp.keys) > MAX_KEYS:
        console.print(f"{len(cmp.keys) - MAX_KEYS} more config keys differ: "
                      f"{', '.join(cmp.keys[MAX_KEYS:])} (columns of runs.csv and "
                      "compare.parquet with --out)", highlight=False, soft_wrap=True)
    for sec in sections:
        console.print(_rich(sec.shown, sec.title))
    for note in cmp.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    if out is None:
        console.print("--out DIR writes the figures, the tables, compare.parquet and "
                      "report.html", highlight=False)
        return
    from lotto.report import plots
    from lotto.report.html import write_report

    figures = {sec.name: plots.figure(sec) for sec in sections}
    written = write_report(out, cmp, sections, figures, runs_table)
    figs = sum(p.suffix == ".png" for p in written)
    console.print(f"wrote {len(written)} files to {out}/ (compare.parquet, tables as CSV and "
                  f"Markdown, {figs} figure(s) as PNG and SVG); open {out / 'report.html'}",
                  highlight=False, soft_wrap=True)


def check_out(out: Path) -> None:
    """--out must be a folder of its own: not a file, not a run directory (nor inside one),
    whose own figures (lottery.png, rethink.png...) the report would overwrite."""
    from lotto.errors import LottoError
    from lotto.report.discover import is_run

    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise LottoError(f"--out {out}: exists and is not a folder (give a folder for the "
                         "report's files)")
    for folder in (out, *out.resolve().parents):
        if is_run(folder):
            raise LottoError(f"--out {out}: inside the run directory {folder}, whose own files "
                             "the report would overwrite; give a folder outside the runs")


def _runs_table(cmp, show_value) -> pd.DataFrame:  # noqa: ANN001
    import pandas as pd

    rows = []
    for r in cmp.runs:
        flat = r.flat()
        rid = cmp.id(r)
        row = {"run": rid, "command": r.command, "label": cmp.labels.get(rid, rid),
               "status": r.status, "progress": r.progress}
        row.update({k: show_value(flat.get(k)) for k in cmp.keys})
        row.update(headline=r.headline, path=str(r.path))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not cmp.by:
        frame = frame.drop(columns="label")
    return frame


def _rich(frame: pd.DataFrame, title: str):  # noqa: ANN202
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), title_justify="left")
    for i, col in enumerate(frame.columns):
        table.add_column(str(col), justify="left" if i == 0 or frame[col].dtype == object
                         else "right", overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*("-" if v is None or (isinstance(v, float) and v != v) else str(v)
                        for v in row))
    return table
