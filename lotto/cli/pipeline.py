"""`lotto pipeline`: the MobileNetV3 recipe end to end (search -> NetAdapt -> train from
scratch) against width multipliers at equal phone latency (import-light: torch and the
experiment load inside the command)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lotto.cli.app import (
    ConfigOpt,
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


def _list(text: str | None, option: str, kind: type) -> list | None:
    """'20,30' -> [20.0, 30.0] (None: not given)."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise LottoError(f"{option} {text!r}: expected comma-separated "
                         f"{'numbers' if kind is float else 'integers'}") from None


@lotto_command("pipeline")
def pipeline(
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    targets: Annotated[
        str | None, typer.Option(help="Latency targets in ms on the phone, comma-separated.")
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Final-training seeds, comma-separated (the same for "
                                 "every method).")
    ] = None,
    methods: Annotated[
        str | None, typer.Option(help="Methods, comma-separated: search+netadapt, search, "
                                 "netadapt-v3-small, mult-v3-small, mult-v3-large, mult-v2.")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="Phone priced: pixel1, pixel2, pixel3 (phone "
                                 "model). Training device: the `device` key.")
    ] = None,
    workers: WorkersOpt = None,
    seed: SeedOpt = None,
    name: NameOpt = None,
    runs_dir: RunsDirOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Search -> NetAdapt -> train from scratch at each latency target, beside MobileNetV3-Small/
    Large and MobileNetV2 width multipliers and NetAdapt of MobileNetV3-Small at the same
    latency; mean test accuracy over seeds with t-intervals."""
    from lotto.config import load_config
    from lotto.experiments.pipeline import run_pipeline
    from lotto.progress import make_progress

    method_list = None if methods is None else [m.strip() for m in methods.split(",")
                                                if m.strip()]
    cfg = load_config("pipeline", config, overrides or [], {
        "targets": _list(targets, "--targets", float), "seeds": _list(seeds, "--seeds", int),
        "methods": method_list, "latency.device": device, "seed": seed, "run.name": name,
        "run.runs_dir": runs_dir, "parallel.workers": workers,
    })
    if dry_run:
        from lotto.cli.app import show_plan
        from lotto.experiments.plan import plan_pipeline

        show_plan(plan_pipeline(with_workers(cfg, workers)))
        return
    with make_progress(console) as progress:
        result = run_pipeline(with_workers(cfg, workers), force=force, progress=progress)
    show(result)
    report_failures(result.failures, result.run.path)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def show(result: Any) -> None:
    """The results per target: latency, mean test accuracy +- half-width, difference to the
    best width multiplier +- half-width (paired by seed)."""
    from rich import box
    from rich.table import Table

    s = result.summary
    out = Table(title=f"pipeline on {s['device']}: test accuracy at equal latency",
                caption=f"{s['accuracy']}; +- : half-width of the 95% t-interval over "
                        f"{len(s['seeds'])} seeds (none under 3); diff: paired by seed",
                box=box.SIMPLE_HEAD, padding=(0, 1))
    for col in ("target ms", "method", "network", "ms", "n", "test acc %", "diff vs best mult"):
        out.add_column(col, justify="left" if col in ("method", "network") else "right")
    for t in s["targets"].values():
        for method, m in t["methods"].items():
            diff = m.get("diff_to_best_multiplier")
            if diff is None:
                shown = "(best mult)" if method == t["best_multiplier"] else "-"
            else:
                shown = f"{100 * diff['mean']:+.2f}" + (
                    f" ± {100 * diff['half_width']:.2f}" if diff["half_width"] is not None
                    else "")
            acc = _pct(m["mean"]) + (f" ± {_pct(m['half_width'])}"
                                     if m["half_width"] is not None else "")
            out.add_row(f"{t['target_ms']:g}", method, m["network"], f"{m['latency_ms']:.2f}",
                        str(m["n"]), acc, shown)
    console.print(out)
    console.print(f"{len(result.results)} trainings in results.csv; figure: "
                  f"{result.run.path / 'pipeline.png'}", highlight=False)
    console.print(f"run directory: {result.run.path}", highlight=False)
