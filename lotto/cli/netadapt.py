"""`lotto netadapt`: latency-driven layer-wise adaptation of a trained network (NetAdapt)."""

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


@lotto_command("netadapt")
def netadapt(
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Seed network: a preset, a spec YAML or a run directory "
                     "(its best.yaml / final.yaml). Default: mobilenet_v3_small x0.5, the demo.")
    ] = None,
    pretrained: Annotated[
        str | None, typer.Option(help="Seed weights (ours, or a state dict of the full spec "
                                 "such as torchvision's); default: train the seed first.")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="Latency target: pixel1..pixel4 (phone "
                                 "model) or cpu (host lookup table). Training: device=cuda.")
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Target latency: '0.8x' of the seed's or '12ms'.")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="ratio (dAcc/|dLatency|, MobileNetV3) or min-drop "
                                 "(NetAdapt).")
    ] = None,
    delta: Annotated[
        str | None, typer.Option(help="Latency cut per step: '0.01x' of the seed's or '0.2ms'.")
    ] = None,
    long_ft: Annotated[
        str | None, typer.Option("--long-ft", help="Fine-tune of the final network, e.g. 500it "
                                 "or 30ep.")
    ] = None,
    workers: WorkersOpt = None,
    seed: SeedOpt = None,
    name: NameOpt = None,
    runs_dir: RunsDirOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Shrink a trained network step by step until a latency target is met (NetAdapt as
    MobileNetV3 used it), against a width-multiplier baseline."""
    from lotto.config import load_config
    from lotto.experiments.netadapt import run_netadapt
    from lotto.progress import make_progress

    cfg = load_config("netadapt", config, overrides or [], {
        "from": from_, "pretrained": pretrained, "latency.device": device,
        "latency.target": target, "netadapt.metric": metric, "netadapt.delta": delta,
        "netadapt.long_ft": long_ft, "seed": seed, "run.name": name,
        "run.runs_dir": runs_dir, "parallel.workers": workers,
    })
    if dry_run:
        from lotto.cli.app import show_plan
        from lotto.experiments.plan import plan_netadapt

        show_plan(plan_netadapt(with_workers(cfg, workers)))
        return
    with make_progress(console) as progress:
        result = run_netadapt(with_workers(cfg, workers), force=force, progress=progress,
                              report=lambda rows: progress.console.print(step_table(rows)))
    show(result)
    report_failures(result.failures, result.run.path)


def _f(value: Any, fmt: str, scale: float = 1.0) -> str:
    if value is None or value != value:
        return "-"
    return f"{value * scale:{fmt}}"


def step_table(rows: Any) -> Any:
    """The proposals of one step (a rich Table)."""
    from rich import box
    from rich.table import Table

    step = int(rows.step.iloc[0])
    out = Table(title=f"netadapt step {step}: budget {rows.budget_ms.iloc[0]:.3f} ms",
                box=box.SIMPLE_HEAD, padding=(0, 1))
    for col in ("proposal", "blocks", "width", "ms", "val acc %", "score", "s"):
        out.add_column(col, justify="left" if col in ("proposal", "blocks") else "right")
    for r in rows.sort_values("score", ascending=False).itertuples():
        mark = " *" if r.chosen is True or str(r.chosen).lower() == "true" else ""
        out.add_row(f"{r.proposal}{mark}", str(r.block), f"{int(r.old_width)}->{int(r.new_width)}",
                    _f(r.latency_ms, ".3f"), _f(r.val_accuracy, ".2f", 100), _f(r.score, ".4g"),
                    _f(r.seconds, ".0f"))
    return out


def show(result: Any) -> None:
    from rich import box
    from rich.table import Table

    s = result.summary
    frame = result.metrics
    out = Table(title=f"netadapt on {s['device']}: {s['seed_network']} -> {s['final_network']}",
                caption=f"latency: {s['latency_source']} (spec at its own resolution); accuracy: "
                        "validation split of the proxy task; test accuracy for final rows only",
                box=box.SIMPLE_HEAD, padding=(0, 1))
    for col in ("kind", "step", "proposal", "ms", "MAdds (M)", "params", "val acc %",
                "test acc %", "iters"):
        out.add_column(col, justify="left" if col in ("kind", "proposal") else "right")
    keep = frame[(frame.kind != "proposal") | frame.chosen.map(
        lambda v: v is True or str(v).lower() == "true")] if not frame.empty else frame
    for r in keep.itertuples():
        out.add_row(r.kind, str(r.step), str(r.proposal), _f(r.latency_ms, ".3f"),
                    _f(r.macs, ".1f", 1e-6), f"{int(r.params):,}", _f(r.val_accuracy, ".2f", 100),
                    _f(r.test_accuracy, ".2f", 100), _f(r.iterations, ".0f"))
    console.print(out)
    console.print(f"seed {s['seed_latency_ms']:.3f} ms -> final {s['final_latency_ms']:.3f} ms "
                  f"(target {s['target_ms']:.3f} ms, {'met' if s['target_met'] else 'NOT met'}; "
                  f"{s['steps']} steps; {s['stop_reason']})", highlight=False)
    if "final_measured_ms" in s:
        console.print(f"measured on this host: seed {s['seed_measured_ms']:.3f} ms (table "
                      f"{s['seed_lut_error'] * 100:+.1f}%), final {s['final_measured_ms']:.3f} ms "
                      f"(table {s['final_lut_error'] * 100:+.1f}%)", highlight=False)
    b, ft = s.get("baseline"), s.get("long_ft")
    if b and ft:
        console.print(f"at equal latency: NetAdapt + long fine-tune {ft['val_accuracy'] * 100:.2f}%"
                      f" val ({ft['latency_ms']:.3f} ms) vs width multiplier {b['proposal']} "
                      f"{b['val_accuracy'] * 100:.2f}% val ({b['latency_ms']:.3f} ms)",
                      highlight=False)
    console.print(f"run directory: {result.run.path}", highlight=False)
