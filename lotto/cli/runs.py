"""`lotto runs`: every run under runs/ with its status, differing config and headline."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from lotto.cli.app import console, err_console, lotto_command

MAX_KEYS = 4  # differing config keys shown as columns per command (all of them in --json)
HEADLINE_MIN = 32  # columns kept for the headline (folded) before key columns are dropped
STATUS_STYLE = {"complete": "green", "incomplete": "yellow", "failed": "bold red"}


@lotto_command("runs")
def runs(
    targets: Annotated[
        list[str] | None,
        typer.Argument(help="Run directories or quoted globs (default: every run under "
                            "--runs-dir).", show_default=False),
    ] = None,
    command: Annotated[
        str | None, typer.Option("--command", help="Only runs of this command (lottery, "
                                 "rethink, search, netadapt, bench, build-v3).")
    ] = None,
    runs_dir: Annotated[str, typer.Option("--runs-dir", help="Root of the run directories.")
                        ] = "runs",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False,
) -> None:
    """List runs: command, name, status (complete, incomplete and how far, failed), start time,
    the config keys that differ between the listed runs of a command, and a headline number."""
    from pathlib import Path

    from lotto.errors import LottoError
    from lotto.report.discover import COMMANDS, differing_keys, find_runs, resolve

    if command is not None and command not in COMMANDS:
        raise LottoError(f"--command {command!r}: choose one of {', '.join(COMMANDS)}")
    def warn(message: str) -> None:
        err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    if targets:
        found = [r for r in resolve(targets, runs_dir, warn) if command in (None, r.command)]
    elif Path(runs_dir).expanduser().is_dir():
        found = find_runs(runs_dir, command, warn)
    else:
        found = []
    by_command = {c: [r for r in found if r.command == c] for c in COMMANDS}
    keys = {c: differing_keys(rs) for c, rs in by_command.items() if rs}
    if as_json:
        print(json.dumps([r.as_dict(keys[r.command]) for r in found], indent=1, default=str))
        return
    if not found:
        where = ", ".join(targets) if targets else f"{runs_dir}/"
        console.print(f"no runs under {where}" + (f" for {command}" if command else ""),
                      highlight=False)
        return
    show(by_command, keys)


def show(by_command: dict, keys: dict) -> None:
    from rich import box
    from rich.table import Table

    from lotto.report.discover import show_value

    counts: dict[str, int] = {}
    for command, found in by_command.items():
        if not found:
            continue
        rows = [[r.name, r.status, r.progress, r.as_dict()["started"]] for r in found]
        fixed = ("name", "status", "progress", "started")
        used = sum(max(len(h), *(len(row[i]) for row in rows)) + 2 for i, h in enumerate(fixed))
        shown = []  # the differing keys that fit whole beside a readable headline, at most 4
        for k in keys[command][:MAX_KEYS]:
            width = max(len(k), *(len(show_value(r.flat().get(k))) for r in found)) + 2
            if used + width + HEADLINE_MIN > console.width:
                break
            shown.append(k)
            used += width
        table = Table(title=f"{command} ({len(found)})", box=box.SIMPLE_HEAD, padding=(0, 1),
                      title_justify="left")
        # no header or value cut mid-word: keys that do not fit go to the line below the table
        for head in (*fixed, *shown):
            table.add_column(head, no_wrap=True)
        table.add_column("headline", overflow="fold", min_width=HEADLINE_MIN - 2)
        for r in found:
            counts[r.status] = counts.get(r.status, 0) + 1
            flat = r.flat()
            style = STATUS_STYLE.get(r.status, "")
            table.add_row(r.name, f"[{style}]{r.status}[/]", r.progress,
                          r.as_dict()["started"], *(show_value(flat.get(k)) for k in shown),
                          r.headline)
        console.print(table)
        more = keys[command][len(shown):]
        if more:
            console.print(f"{len(more)} more config keys differ between the {command} runs: "
                          f"{', '.join(more)} (lotto runs --json)", highlight=False,
                          soft_wrap=True)
    total = sum(counts.values())
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    console.print(f"{total} runs ({parts}); config keys equal across a command's runs are "
                  "hidden; details: lotto runs --json", highlight=False)
