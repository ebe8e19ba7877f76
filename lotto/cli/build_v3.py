"""`lotto build-v3`: MobileNetV3 built from its seed, one priced change at a time."""

from __future__ import annotations

import math
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
    check_parallel,
    console,
    err_console,
    lotto_command,
)

if TYPE_CHECKING:  # heavy (torch): imported inside the command, so `lotto --help` starts fast
    from lotto.experiments.build_v3 import BuildResult


@lotto_command("build-v3")
def build_v3(
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    variant: Annotated[
        str | None, typer.Option(help="large or small: the published network to build.")
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Seed network: a preset name, a spec YAML file or a run "
                     "directory (best.yaml / final.yaml); a change it cannot take is skipped "
                     "(default: mnasnet_a1 for large, mobilenet_v3_small_seed for small)."),
    ] = None,
    train: Annotated[
        bool, typer.Option("--train", help="Train the final network on the configured data.")
    ] = False,
    export: Annotated[
        str | None, typer.Option(help="onnx: write the final network to final.onnx.")
    ] = None,
    pretrained: Annotated[
        str | None, typer.Option(help="State dict (ours or torchvision's) loaded into the final "
                                  "network before --export.")
    ] = None,
    resolution: Annotated[
        int | None, typer.Option(help="Input size each step is priced at.")
    ] = None,
    seed: SeedOpt = None,
    name: NameOpt = None,
    runs_dir: RunsDirOpt = None,
    device: DeviceOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """MobileNetV3's manual changes (h-swish, SE, 16-filter stem, efficient last stage) applied
    to a searched seed; params, MAdds, host and Pixel latency per change."""
    from lotto.config import load_config
    from lotto.experiments.build_v3 import run_build_v3
    from lotto.progress import make_progress

    cfg = load_config("build-v3", config, overrides or [], {
        "variant": variant, "from": from_, "train_steps": "final" if train else None,
        "export": export, "pretrained": pretrained, "resolution": resolution,
        "seed": seed, "run.name": name, "run.runs_dir": runs_dir, "device": device,
    })
    check_parallel(cfg)  # unused here yet; a bad section is still a one-line error
    if dry_run:
        from lotto.cli.app import show_plan
        from lotto.experiments.plan import plan_build_v3

        show_plan(plan_build_v3(cfg))
        return
    with make_progress(console) as progress:
        result = run_build_v3(cfg, force=force, progress=progress)
    show(result)


def _ms(value: object) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "-" if missing else f"{value:.2f}"


def show(result: BuildResult) -> None:
    from rich.table import Table

    from lotto.latency.measure import NOISY_IQR, is_noisy

    frame = result.metrics
    phones = [c[len("latency_ms_"):] for c in frame.columns
              if c.startswith("latency_ms_") and c != "latency_ms_host"]
    trained = "test_accuracy" in frame.columns
    out = Table(title=f"build-v3 ({result.summary['variant']}): {result.summary['seed_network']}"
                f" -> {result.summary['final_network']}",
                caption="host ms: measured here (!: noisy, IQR/median > "
                f"{100 * NOISY_IQR:.0f}%); phone ms: predicted by the phone model")
    out.add_column("step", justify="right")
    out.add_column("change", no_wrap=True)
    out.add_column("params", justify="right")
    out.add_column("MAdds (M)", justify="right")
    if "latency_ms_host" in frame.columns:
        out.add_column(f"{frame.host_device.iloc[0]} ms", justify="right")
    for p in phones:
        out.add_column(f"{p} ms", justify="right")
    if trained:
        out.add_column("test acc %", justify="right")
    for row in frame.itertuples():
        cells = [str(row.step), row.change, f"{row.params:,}", f"{row.madds / 1e6:.1f}"]
        if "latency_ms_host" in frame.columns:
            noisy = row.host_source == "measured" and is_noisy(row.host_error)
            cells.append(_ms(row.latency_ms_host) + (" !" if noisy else ""))
        cells += [_ms(getattr(row, f"latency_ms_{p}")) for p in phones]
        if trained:
            acc = row.test_accuracy
            cells.append("-" if acc != acc else f"{100 * acc:.2f}")
        out.add_row(*cells)
    console.print(out)
    if "latency_ms_host" in frame.columns:
        noisy = [str(r.step) for r in frame.itertuples()
                 if r.host_source == "measured" and is_noisy(r.host_error)]
        if noisy:
            err_console.print(f"warning: the host timing of step{'s' if len(noisy) > 1 else ''} "
                              f"{', '.join(noisy)} is noisy (IQR/median > "
                              f"{100 * NOISY_IQR:.0f}% after re-measuring; column host_error "
                              "in metrics.csv): the machine was busy, those medians are likely "
                              "too high", highlight=False)
    s = result.summary
    for line in s.get("skipped", []):  # a --from network that lacks what a change needs
        console.print(line)
    if s["equals_published"]:
        console.print(f"the result is exactly {s['published']} (spec equality)")
    else:
        console.print(f"the result differs from {s['published']}")
    console.print(f"run directory: {result.run.path}")
