"""`lotto lottery`: the Lottery Ticket experiment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from lotto.cli.app import (
    ConfigOpt,
    DeviceOpt,
    DryRunOpt,
    ForceOpt,
    NameOpt,
    OverridesArg,
    RunsDirOpt,
    SeedOpt,
    WorkersOpt,
    console,
    lotto_command,
    report_failures,
    with_workers,
)
from lotto.cli.network import FromOpt

if TYPE_CHECKING:  # heavy (torch): imported inside the command, so `lotto --help` starts fast
    from lotto.experiments.lottery import LotteryResult


@lotto_command("lottery")
def lottery(
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    prune_rate: Annotated[
        float | None, typer.Option(help="Fraction of surviving FC weights pruned per round.")
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(help="Pruning rounds after the dense round.")
    ] = None,
    seeds: Annotated[int | None, typer.Option(help="Replicates (seed, seed+1, ...).")] = None,
    from_: FromOpt = None,
    seed: SeedOpt = None,
    name: NameOpt = None,
    runs_dir: RunsDirOpt = None,
    device: DeviceOpt = None,
    workers: WorkersOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Iterative magnitude pruning with rewinding to the original init, plus controls."""
    from lotto.config import load_config
    from lotto.experiments.lottery import run_lottery
    from lotto.progress import make_progress

    cfg = load_config(
        "lottery",
        config,
        overrides or [],
        {
            "lottery.prune_rate": prune_rate,
            "lottery.rounds": rounds,
            "lottery.seeds": seeds,
            "model.name": from_,
            "seed": seed,
            "run.name": name,
            "run.runs_dir": runs_dir,
            "device": device,
            "parallel.workers": workers,
        },
    )
    if dry_run:
        from lotto.cli.app import show_plan
        from lotto.experiments.plan import plan_lottery

        show_plan(plan_lottery(with_workers(cfg, workers)))
        return
    with make_progress(console) as progress:
        result = run_lottery(with_workers(cfg, workers), force=force, progress=progress)
    show(result)
    report_failures(result.failures, result.run.path)


def _cell(row: object, col: str, pct: bool = True) -> str:
    mean, std = getattr(row, col), getattr(row, f"{col}_std")
    scale, fmt = (100, ".2f") if pct else (1, ".0f")
    text = f"{mean * scale:{fmt}}"
    return text + (f"±{std * scale:{fmt}}" if row.seeds > 1 else "")


def show(result: LotteryResult) -> None:
    from rich import box
    from rich.table import Table

    table = result.table
    if table.empty:
        console.print("lottery: no dense round finished yet", highlight=False)
        console.print(f"run directory: {result.run.path}", highlight=False)
        return
    variants = [v for v in ("ticket", "reinit", "random_mask") if v in set(table.variant)]
    out = Table(
        title="lottery: test accuracy (%) at the end, at early stop (ES), ES iteration",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    out.add_column("round", justify="right")
    out.add_column("weights\n%", justify="right")
    for v in variants:
        for head in ("acc", "ES acc", "ES it"):
            out.add_column(f"{v}\n{head}", justify="right", no_wrap=True)
    out.add_column("time\ns", justify="right")
    for rnd, rows in table.groupby("round"):
        by = {r.variant: r for r in rows.itertuples()}
        first = by.get("ticket", next(iter(by.values())))  # the controls have its density
        cells = [str(rnd), f"{first.weights_remaining_pct:.1f}"]
        for v in variants:
            r = by.get(v)
            cells += (
                ["-"] * 3
                if r is None
                else [
                    _cell(r, "test_accuracy"),
                    _cell(r, "early_stop_test_accuracy"),
                    _cell(r, "early_stop_iteration", pct=False),
                ]
            )
        cells.append(f"{sum(r.seconds * r.seeds for r in by.values()):.0f}")
        out.add_row(*cells)
    console.print(out)
    s = result.summary
    if s.get("warning"):
        console.print(f"[bold yellow]warning:[/] {s['warning']}", highlight=False, soft_wrap=True)
        console.print(f"run directory: {result.run.path}")
        return
    for variant, hit in s["smallest_within_1pt"].items():
        where = (
            "never (not even the first pruning round)"
            if hit["round"] is None
            else f"{hit['weights_remaining_pct']:.1f}% of weights (round {hit['round']})"
        )
        console.print(f"{variant}: stays within 1 point of the dense network down to {where}")
    console.print(f"run directory: {result.run.path}")
