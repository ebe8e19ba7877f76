"""`lotto rethink`: fine-tune vs scratch and ticket vs random init (Liu et al. 2019)."""

from __future__ import annotations

from pathlib import Path
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
from lotto.errors import LottoError

if TYPE_CHECKING:  # heavy (torch, pandas): imported inside the functions, for a fast start-up
    import pandas as pd
    from rich.table import Table

    from lotto.experiments.rethink import RethinkResult


def parse_list(option: str, text: str | None, kind: type = str) -> list | None:
    """'0.1,0.01' -> [0.1, 0.01]; one clear error for anything that does not parse."""
    if text is None:
        return None
    items = [x.strip() for x in text.split(",")]
    if not items or any(not x for x in items):
        raise LottoError(f"{option} {text!r}: expected a comma-separated list, e.g. 0.1,0.01")
    if kind is float:
        try:
            return [float(x) for x in items]
        except ValueError:
            raise LottoError(f"{option} {text!r}: not a list of numbers, e.g. 0.1,0.01") from None
    return items


def pruning_options(
    pruning: str | None, methods: list[str] | None, ratios: list[float] | None,
    modes: list[str] | None,
) -> dict:
    """Map --pruning/--method/--ratio/--modes onto the config keys of the chosen kinds."""
    from lotto.experiments.rethink import KINDS, METHODS

    if pruning is not None and pruning not in (*KINDS, "both"):
        raise LottoError(f"--pruning {pruning!r}: choose structured, unstructured or both")
    kinds = list(KINDS) if pruning in (None, "both") else [pruning]
    per_kind = {k: methods for k in kinds}
    if methods is not None and pruning is None:
        # each method name says which kind it belongs to (random exists in both)
        unknown = [m for m in methods if not any(m in METHODS[k] for k in KINDS)]
        if unknown:
            known = "; ".join(f"{k}: {', '.join(METHODS[k])}" for k in KINDS)
            raise LottoError(f"--method {','.join(unknown)}: unknown method ({known})")
        per_kind = {k: [m for m in methods if m in METHODS[k]] for k in KINDS}
        per_kind = {k: v for k, v in per_kind.items() if v}
        kinds = list(per_kind)
    out: dict = {"pruning.kinds": kinds if pruning is not None or methods is not None else None}
    for kind in kinds:
        out[f"pruning.{kind}.methods"] = per_kind[kind]
        out[f"pruning.{kind}.ratios"] = ratios
        out[f"pruning.{kind}.modes"] = modes
    return out


@lotto_command("rethink")
def rethink(
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    pruning: Annotated[
        str | None, typer.Option(help="structured, unstructured or both (default: both).")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="Comma list. structured: l1-filter, slimming, random; "
                          "unstructured: magnitude, random, imp (--from only)."),
    ] = None,
    ratio: Annotated[
        str | None, typer.Option(help="Fraction removed, in (0, 1); a comma list for several.")
    ] = None,
    modes: Annotated[
        str | None,
        typer.Option(help="Comma list of finetune, scratch_e, scratch_b, ticket, reinit."),
    ] = None,
    lrs: Annotated[
        str | None, typer.Option(help="Learning rates, comma list (default: lr and lr/10).")
    ] = None,
    seeds: Annotated[int | None, typer.Option(help="Replicates (seed, seed+1, ...).")] = None,
    from_run: Annotated[
        str | None,
        typer.Option("--from", help="The network: a preset, a spec YAML file or a run directory "
                     "(best.yaml / final.yaml); a lottery run (runs/lottery/<run>) is reused: "
                     "its init, trained weights and masks."),
    ] = None,
    seed: SeedOpt = None,
    name: NameOpt = None,
    runs_dir: RunsDirOpt = None,
    device: DeviceOpt = None,
    workers: WorkersOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Fine-tune vs train-from-scratch budgets and ticket vs random init, over a pruning grid."""
    from lotto.config import load_config
    from lotto.experiments.rethink import run_rethink
    from lotto.progress import make_progress

    options = {
        **pruning_options(pruning, parse_list("--method", method),
                          parse_list("--ratio", ratio, float), parse_list("--modes", modes)),
        "grid.lrs": parse_list("--lrs", lrs, float),
        "grid.seeds": seeds, **_from(from_run),
        "seed": seed, "run.name": name, "run.runs_dir": runs_dir, "device": device,
        "parallel.workers": workers,
    }
    cfg = with_workers(load_config("rethink", config, overrides or [], options), workers)
    if dry_run:
        from lotto.cli.app import show_plan
        from lotto.experiments.plan import plan_rethink

        show_plan(plan_rethink(cfg))
        return
    with make_progress(console) as progress:
        result = run_rethink(cfg, force=force, progress=progress)
    show(result)
    report_failures(result.failures, result.run.path)


def _acc(row: object | None) -> str:
    if row is None:
        return "-"
    text = f"{100 * row.test_accuracy:.2f}"
    return text + (f"±{100 * row.test_accuracy_std:.1f}" if row.seeds > 1 else "")


SHORT = {"l1-filter": "L1", "slimming": "slim", "random": "rand", "magnitude": "mag", "imp": "IMP"}
HEADS = {"finetune": "fine-tune", "scratch_e": "scratch-E", "scratch_b": "scratch-B"}


def _label(kind: str, method: str, ratio: float) -> str:
    return f"{kind[0].upper()}-{SHORT.get(method, method)} {ratio:g}"


def paper_table(table: pd.DataFrame, modes: list[str], title: str) -> Table:
    """One of the paper's tables: per lr, the unpruned baseline on top, one column per mode."""
    from rich import box
    from rich.table import Table

    from lotto.experiments.rethink import DENSE

    out = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True)
    for head in ("model", "lr", "par%", "FLOP%", "baseline", *modes):
        out.add_column(HEADS.get(head, head), justify="left" if head == "model" else "right")
    if "scratch_b" in modes:
        out.add_column("Bx", justify="right")
    lrs = list(dict.fromkeys(table["lr"]))
    for i, lr in enumerate(lrs):
        at = table[table["lr"] == lr]
        for r in at[at["mode"] == "baseline"].itertuples():
            label = "unpruned" if r.pruning == DENSE else f"{SHORT[r.method]}-trained"
            out.add_row(label, f"{lr:g}", "100", "100", _acc(r),
                        *[""] * (len(out.columns) - 5))
        pruned = at[at["mode"].isin(modes)]
        for (kind, method, ratio), rows in pruned.groupby(["pruning", "method", "ratio"],
                                                         sort=False):
            by = {r.mode: r for r in rows.itertuples()}
            cells = [_acc(by.get(m)) for m in modes]
            if "scratch_b" in modes:
                b = by.get("scratch_b")
                cells.append("-" if b is None else f"{b.budget_factor:.1f}")
            out.add_row(_label(kind, method, ratio), f"{lr:g}", f"{rows.params_pct.mean():.1f}",
                        f"{rows.flops_pct.mean():.1f}", "", *cells)
        if i < len(lrs) - 1:
            out.add_section()
    return out


def show(result: RethinkResult) -> None:
    """The budget table (fine-tune vs scratch) and the init table (ticket vs reinit)."""
    table = result.table
    if table.empty:
        console.print("rethink: no cell finished yet", highlight=False)
        console.print(f"run directory: {result.run.path}", highlight=False)
        return
    present = set(table["mode"])
    seeds = int(table.seeds.max()) if len(table) else 0
    spread = f"mean±std over {seeds} seeds" if seeds > 1 else "1 seed"
    budget = [m for m in ("finetune", "scratch_e", "scratch_b") if m in present]
    init = [m for m in ("ticket", "reinit") if m in present]
    for modes, title in ((budget, "fine-tune vs scratch"), (init, "ticket vs random init")):
        if modes:
            console.print(paper_table(table, modes, f"{title}: test accuracy % ({spread})"))
    warn = result.summary.get("warning")
    if warn:
        console.print(f"[bold yellow]warning:[/] {warn}", highlight=False, soft_wrap=True)
    for item in [] if warn else result.summary["comparisons"]:
        where = f"{_label(item['pruning'], item['method'], item['ratio'])} @ lr {item['lr']:g}"
        notes = []
        if "best_scratch_minus_finetune" in item:
            notes.append(f"scratch - finetune {item['best_scratch_minus_finetune']:+.2f}")
        if "ticket_minus_reinit" in item:
            notes.append(f"ticket - reinit {item['ticket_minus_reinit']:+.2f}")
        if notes:
            console.print(f"{where}: {', '.join(notes)} points")
    console.print("S = structured (fraction of channels removed), U = unstructured (of weights); "
                  "par%/FLOP% = params/multiply-adds vs unpruned; Bx = Scratch-B budget / "
                  "baseline budget; slim-trained = the baseline trained with L1 on BN scales",
                  highlight=False)
    console.print(f"run directory: {result.run.path}", highlight=False)


__all__ = ["rethink", "show"]


def _from(value: str | None) -> dict:
    """`--from`: a lottery run is the run to reuse (init, trained weights, masks); a preset, a
    spec file or a run with best.yaml / final.yaml is the network to build (`model.name`). A
    directory that is neither, or a missing path, goes to the lottery-run check, whose error
    names what is wrong."""
    from lotto.cli.network import is_lottery_run

    if value is None:
        return {}
    path = Path(value).expanduser()
    spec_run = path.is_dir() and any((path / f).is_file() for f in ("best.yaml", "final.yaml"))
    if is_lottery_run(value) or (path.is_dir() and not spec_run):
        return {"from": value}
    if not path.exists() and ("/" in value or value.startswith(".")):
        return {"from": value}
    return {"model.name": value}
