"""`lotto search`: MnasNet-style hardware-aware architecture search (import-light: torch and the
experiment load inside the command)."""

from __future__ import annotations

from typing import Annotated

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


@lotto_command("search")
def search(
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    device: Annotated[
        str | None, typer.Option(help="Target device priced: pixel1/2/3 (phone model), cpu or "
                                 "cuda (this host). Training device: the `device` key.")
    ] = None,
    target_latency: Annotated[
        float | None, typer.Option("--target-latency", help="Target latency TAR in ms.")
    ] = None,
    w: Annotated[
        float | None, typer.Option("--w", help="Reward exponent (<= 0): sets alpha and beta.")
    ] = None,
    constraint: Annotated[
        str | None, typer.Option(help="soft (alpha = beta = w) or hard (alpha 0, beta -1).")
    ] = None,
    controller: Annotated[
        str | None, typer.Option(help="ppo, reinforce, evolution, random, tpe or nsga2.")
    ] = None,
    samples: Annotated[int | None, typer.Option(help="Sampled networks in all.")] = None,
    preset: Annotated[
        str | None, typer.Option(help="large (w = -0.07) or small (w = -0.15, V3-Small's).")
    ] = None,
    fidelity: Annotated[
        int | None, typer.Option(help="Instead of searching, measure the proxy's fidelity on N "
                                 "random networks (Kendall tau vs a reference training).")
    ] = None,
    workers: WorkersOpt = None,
    seed: SeedOpt = None,
    name: NameOpt = None,
    runs_dir: RunsDirOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Search the factorised space for the best ACC x (LAT/TAR)^w: proxy accuracy, latency on
    the target device."""
    from lotto.config import load_config
    from lotto.experiments.search import run_search
    from lotto.progress import make_progress

    if target_latency is not None and not target_latency > 0:
        raise LottoError(f"--target-latency must be > 0 ms, got {target_latency}")
    if samples is not None and samples < 1:
        raise LottoError(f"--samples must be at least 1, got {samples}")
    if fidelity is not None and fidelity < 3:
        raise LottoError(f"--fidelity needs at least 3 networks, got {fidelity}")
    if w is not None and w > 0:
        raise LottoError(f"--w {w} > 0 would reward slower networks; use w <= 0")
    cfg = load_config("search", config, overrides or [], {
        "latency.device": device, "target_latency": target_latency, "reward.w": w,
        "reward.constraint": constraint, "reward.preset": preset,
        "search.controller": controller, "search.samples": samples, "seed": seed,
        "run.name": name, "run.runs_dir": runs_dir, "parallel.workers": workers,
        "fidelity.enabled": True if fidelity is not None else None,
        "fidelity.networks": fidelity,
    })
    if dry_run:
        from lotto.cli.app import show_plan
        from lotto.experiments.plan import plan_fidelity, plan_search

        planner = plan_fidelity if cfg.fidelity.enabled else plan_search
        show_plan(planner(with_workers(cfg, workers)))
        return
    if cfg.fidelity.enabled:
        from lotto.experiments.fidelity import run_fidelity

        with make_progress(console) as progress:
            found = run_fidelity(with_workers(cfg, workers), force=force, progress=progress)
        show_fidelity(found.summary)
        return
    with make_progress(console) as progress:
        result = run_search(with_workers(cfg, workers), force=force, progress=progress)
    show(result)
    report_failures(result.failures, result.run.path)


def show(result: object) -> None:
    from rich.table import Table

    frame, s = result.metrics, result.summary  # type: ignore[attr-defined]
    path = result.run.path  # type: ignore[attr-defined]
    if frame.empty:
        console.print(f"search: no sample finished yet; run directory: {path}")
        return
    top = frame.sort_values("reward", ascending=False).drop_duplicates("spec").head(8)
    out = Table(title=f"search ({s['controller']}): best of {s['samples']} samples "
                f"({s['distinct']} distinct, {s['trained']} trained, {s['cached']} cached)",
                caption=f"accuracy: {s['accuracy_source']}\nlatency: {s['device']}, "
                f"{top.latency_source.iloc[0]} (expected error "
                f"{100 * top.expected_error.iloc[0]:.0f}%); target {s['target_ms']:g} ms, "
                f"alpha {s['alpha']:g}, beta {s['beta']:g}")
    for col in ("sample", "reward", "proxy acc %", "latency ms", "MAdds (M)", "params (M)"):
        out.add_column(col, justify="right")
    out.add_column("blocks (after the fixed first)", overflow="fold")
    for r in top.itertuples():
        blocks = r.spec.split(" ")[1:]
        out.add_row(str(r.sample), f"{r.reward:.4f}", f"{100 * r.val_accuracy:.1f}",
                    f"{r.latency_ms:.1f}", f"{r.macs / 1e6:.0f}", f"{r.params / 1e6:.2f}",
                    _compact(blocks))
    console.print(out)
    console.print(f"top-5 mean reward {s['top5_mean_reward']:.4f}; "
                  f"{100 * s['within_5pct_of_target']:.0f}% of samples within 5% of the target; "
                  f"best: {s['best']['latency_ms']:.1f} ms, proxy acc "
                  f"{100 * s['best']['val_accuracy']:.1f}%", highlight=False)
    f = s.get("fidelity")
    if f:
        lo, hi = f["kendall_tau_ci"]
        where = (f"shipped with lotto, measured {f['measured']}; `lotto search --fidelity 20` "
                 "measures it here" if f.get("shipped") else "measured by `lotto search "
                 "--fidelity`")
        console.print(f"proxy fidelity ({where}): Kendall tau {f['kendall_tau']:.2f} (95% "
                      f"{lo:.2f} to {hi:.2f}) on {f['networks']} networks; reference "
                      f"seed-to-seed {f['reference_seed_tau']:.2f}", highlight=False)
    else:
        console.print("proxy fidelity: not measured for this setup (`lotto search --fidelity "
                      "20` with the same config measures it)", highlight=False)
    sn = s.get("supernet")
    if sn:
        console.print(f"supernet: {'cached' if sn['cached'] else 'trained'} "
                      f"({sn['train_seconds']:.0f} s, {sn['steps']} steps)", highlight=False)
    console.print(f"run directory: {path} (best.yaml, pareto.csv, search.png)", highlight=False)


def show_fidelity(s: dict) -> None:
    lo, hi = s["kendall_tau_ci"]
    sn = s.get("supernet_train_seconds")
    console.print(
        f"fidelity of the {s['proxy']} proxy on {s['networks']} networks: Kendall tau "
        f"{s['kendall_tau']:.3f} (95% bootstrap {lo:.2f} to {hi:.2f}) vs the reference "
        f"({s['reference']}); reference seed-to-seed tau {s['reference_seed_tau']:.3f}\n"
        f"proxy {s['proxy_seconds_per_network']:.2f} s per network"
        + (f" + supernet training {sn:.0f} s" if sn is not None else "")
        + f", reference {s['reference_seconds_per_network']:.1f} s per network\n"
        f"run directory: {s['run_dir']} (fidelity.csv, summary.json)", highlight=False)


def _compact(blocks: list[str]) -> str:
    """Block strings without the activation, runs of equal blocks as `3x ...`."""
    out: list[list] = []
    for b in blocks:
        b = b.replace("_re6", "").replace("_re", "").replace("_hs", "")
        if out and out[-1][1] == b:
            out[-1][0] += 1
        else:
            out.append([1, b])
    return " ".join(b if n == 1 else f"{n}x{b}" for n, b in out)
