"""`lotto bench`: latency of a network on a host (measured / table) or a phone (model)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from lotto.cli.app import (
    ConfigOpt,
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
from lotto.cli.network import FromOpt, exclusive, is_path

if TYPE_CHECKING:  # heavy (torch): imported inside the command, so `lotto --help` starts fast
    from lotto.experiments.bench import BenchResult


@lotto_command("bench")
def bench(
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="cpu, cuda, xnnpack, adb, adb:SERIAL (measured); pixel, pixel1, "
        "pixel2, pixel3 or a calibrated device name (model).")] = None,
    from_: FromOpt = None,
    model: Annotated[str | None, typer.Option("--model", help="Preset name.")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="Architecture spec YAML file.")] = None,
    resolution: Annotated[int | None, typer.Option(help="Input side in pixels.")] = None,
    width_mult: Annotated[float | None, typer.Option(help="Width multiplier.")] = None,
    source: Annotated[str | None, typer.Option(
        "--source", help="measure, lut or model (default: measure on hosts, model on phones).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="Host threads while timing.")] = None,
    per_layer: Annotated[bool, typer.Option(
        "--per-layer", help="Per-layer table (hooks when measured).")] = False,
    build_lut: Annotated[bool, typer.Option(
        "--build-lut", help="Measure the units of --space into this host's table.")] = False,
    space: Annotated[str | None, typer.Option(
        "--space", help="Space: a name (mnasnet, mbv2-k357), a YAML file, or comma-separated "
        "presets/spec files for the table.")] = None,
    validate: Annotated[bool, typer.Option(
        "--validate", help="Hosts: table vs measured; phones: cross-validation.")] = False,
    calibrate: Annotated[str | None, typer.Option(
        "--calibrate", help="Bench run dir(s) of measurements: fit a device model to them.")
    ] = None,
    calibrate_as: Annotated[str | None, typer.Option(
        "--as", help="Name to register the --calibrate'd device under.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    seed: SeedOpt = None,
    name: NameOpt = None,
    runs_dir: RunsDirOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Latency with provenance: measured on this host, summed from a table, or a phone model."""
    from lotto.config import load_config
    from lotto.experiments.bench import run_bench
    from lotto.progress import make_progress

    exclusive(from_, model=model, arch=arch)
    if from_ is not None:  # a preset keeps bench's width rule; a file or run is a spec
        model, arch = (None, from_) if is_path(from_) else (from_, None)
    cfg = load_config("bench", config, overrides or [], {
        "device": device, "model": model, "arch": arch, "resolution": resolution,
        "width_mult": width_mult, "source": source, "threads": threads,
        "per_layer": per_layer or None, "build_lut": build_lut or None, "lut.space": space,
        "validate": validate or None, "seed": seed, "run.name": name, "run.runs_dir": runs_dir,
        "calibrate": calibrate, "calibrate_as": calibrate_as,
    })
    check_parallel(cfg)  # unused here yet; a bad section is still a one-line error
    if dry_run:
        from lotto.cli.app import show_plan
        from lotto.experiments.plan import plan_bench

        show_plan(plan_bench(cfg))
        return
    out = err_console if as_json else console

    def warn(message: str) -> None:
        err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    bar = make_progress(out)
    task = None

    def progress(i: int, n: int, what: str) -> None:
        nonlocal task
        if task is None:  # only commands that measure many units show a bar
            bar.start()
            task = bar.add_task("measuring", total=n)
        bar.update(task, completed=i, total=n, description=what[:48] or "done")

    try:
        result = run_bench(cfg, force=force, progress=progress, warn=warn)
    finally:
        if task is not None:
            bar.stop()
    if as_json:
        print(json.dumps(result.summary, default=_plain, sort_keys=True))
        return
    show(result)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# ---------------------------------------------------------------------------------------------
# Terminal output


def show(result: BenchResult) -> None:
    if result.mode == "price":
        _show_price(result)
    elif result.mode == "calibrate":
        _show_calibrate(result.summary)
    elif result.mode == "build_lut":
        _show_build(result.summary)
    elif result.summary.get("validation") is not None:
        if "entries" in result.summary:
            _show_build(result.summary)
        _show_host_validation(result)
    else:
        _show_phone_validation(result)
    if result.run is not None:
        console.print(f"run directory: {result.run.path}", highlight=False)


def _show_price(result: BenchResult) -> None:
    s = result.summary
    if result.layers:
        _show_layers(result.layers)
    console.print(
        f"{s['network']}: {s['params'] / 1e6:.3f}M params, {s['macs'] / 1e6:.1f}M MACs, "
        f"{s['resolution']}px, width {s['width_mult']:g}", highlight=False)
    d = s["detail"]
    if d.get("resumed"):
        console.print("(resumed: this run directory already holds the result; --force re-measures)",
                      highlight=False)
    if s["source"] == "measured":
        console.print(
            f"Latency (ms): median={s['latency_ms']:.3f} p25={d['p25_ms']:.3f} "
            f"p75={d['p75_ms']:.3f} mean={d['mean_ms']:.3f} std={d['std_ms']:.3f} n={d['n']} "
            f"threads={d['threads']} device={s['device']}"
            + (f"  NOISY (IQR/median {100 * (d['p75_ms'] - d['p25_ms']) / s['latency_ms']:.0f}%)"
               if d.get("noisy") else ""), highlight=False)
        fp = s.get("fingerprint", {})
        if d.get("runtime"):  # xnnpack / adb: ExecuTorch program
            where = (f"phone {fp.get('manufacturer')} {fp.get('model')} "
                     f"({fp.get('soc') or fp.get('platform')}), Android {fp.get('android')}, "
                     f"core {fp.get('core')} ({fp.get('governor')})" if fp.get("serial")
                     else f"host {fp.get('cpu')}")
            console.print(f"{where}, {d['runtime']}, {d.get('dtype')}, "
                          f"{d.get('delegated_calls')} XNNPACK call(s), ops outside the "
                          f"delegate: {d.get('ops_outside_delegate') or 'none'}",
                          highlight=False)
        else:
            console.print(f"host: {fp.get('gpu') or fp.get('cpu')}, torch {fp.get('torch')}, "
                          f"BN folded {d.get('bn_folded', '-')}, channels_last "
                          f"{d.get('channels_last', '-')}, {d.get('dtype')}", highlight=False)
    else:
        console.print(
            f"Latency (ms): {s['latency_ms']:.2f} predicted on {s['device']} "
            f"(expected error ~{s['expected_error'] * 100:.0f}%)", highlight=False)
    console.print(s["provenance"], highlight=False)


def _show_layers(rows: list[dict[str, Any]]) -> None:
    source = rows[0]["source"]
    how = {"measured": "forward hooks on leaf modules, median per layer",
           "lut": "lookup-table units", "model": "phone model terms"}[source]
    table = Table(title=f"Run order ({how})")
    for col in ("#", "layer", "op", "input", "output", "MACs (M)", "ms", "%", "cdf%"):
        table.add_column(col, justify="left" if col in ("layer", "op") else "right",
                         no_wrap=col == "layer")
    if source == "lut":
        table.add_column("status")
    for r in rows:
        cells = [str(r["index"]), str(r["layer"]), str(r["op"]), str(r["in_shape"]),
                 str(r["out_shape"]), f"{(r['macs'] or 0) / 1e6:.2f}", f"{r['ms']:.4f}",
                 f"{r['pct']:.1f}", f"{r['cdf_pct']:.1f}"]
        if source == "lut":
            cells.append(str(r["status"]))
        table.add_row(*cells)
    console.print(table)
    by: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by[str(r["op"])].append(float(r["ms"]))
    total = sum(sum(v) for v in by.values()) or 1.0
    summary = Table(title="Summary by op type")
    for col in ("op", "count", "ms", "%", "cdf%"):
        summary.add_column(col, justify="left" if col == "op" else "right")
    cdf = 0.0
    for op, times in sorted(by.items(), key=lambda kv: -sum(kv[1])):
        cdf += sum(times)
        summary.add_row(op, str(len(times)), f"{sum(times):.3f}",
                        f"{100 * sum(times) / total:.1f}", f"{100 * cdf / total:.1f}")
    console.print(summary)
    console.print(f"Number of layers: {len(rows)}; sum of layers {total:.3f} ms", highlight=False)


def _show_build(s: dict[str, Any]) -> None:
    console.print(
        f"lookup table {s['lut']}: {s['entries']} entries ({s['measured_now']} measured now) "
        f"for space {s['space']} ({s['space_networks']:.3g} networks), "
        f"offset {s['offset_ms']:.3f} ms, threads {s['threads']}, "
        f"{s['fingerprint'].get('gpu') or s['fingerprint'].get('cpu')}, "
        f"torch {s['fingerprint'].get('torch')}", highlight=False)


def _show_host_validation(result: BenchResult) -> None:
    v = result.summary["validation"]
    from lotto.latency.measure import NOISY_IQR

    table = Table(title="Lookup-table sum vs measured end to end",
                  caption=f"!: noisy measurement (IQR/median > {100 * NOISY_IQR:.0f}%)")
    for col in ("network", "MACs (M)", "measured ms", "IQR/med %", "table ms", "error %",
                "no offset %", "misses"):
        table.add_column(col, justify="left" if col == "network" else "right",
                         no_wrap=col == "network")
    for r in result.rows:
        iqr = (r["p75_ms"] - r["p25_ms"]) / r["measured_ms"] * 100
        noisy = " !" if iqr > 100 * NOISY_IQR else ""  # marked: the caption says why
        table.add_row(str(r["network"]), f"{r['macs'] / 1e6:.0f}", f"{r['measured_ms']:.3f}",
                      f"{iqr:.1f}{noisy}", f"{r['latency_ms']:.3f}", f"{r['error'] * 100:+.1f}",
                      f"{r['raw_error'] * 100:+.1f}", str(int(r["lut_interpolated"] or 0)))
    console.print(table)
    console.print(
        f"{v['n_networks']} networks: RMSPE {v['rmspe'] * 100:.1f}% (target <= 5%), max "
        f"|error| {v['max_abs_error'] * 100:.1f}% (target <= 10%); offset {v['offset_ms']:.3f} "
        f"ms (leave-one-out per network); without offset RMSPE "
        f"{v['rmspe_no_offset'] * 100:.1f}% (bias {v['bias_no_offset'] * 100:+.1f}%); "
        f"IQR/median median {v['iqr_rel_median'] * 100:.1f}% max {v['iqr_rel_max'] * 100:.1f}% "
        f"(target <= 3%)", highlight=False)


def _show_phone_validation(result: BenchResult) -> None:
    s = result.summary
    if s["device"] == "pixel4":
        _show_pixel4(s)
        return
    table = Table(title=f"{s['device']}: strict leave-one-family-out cross-validation "
                        "(published latencies, float rows)")
    for col in ("held out", "n", "model RMSPE %", "within 10 %", "Spearman",
                "baseline RMSPE %", "baseline Spearman", "shared-factor RMSPE %"):
        table.add_column(col, justify="left" if col == "held out" else "right",
                         no_wrap=col == "held out")
    cv, base = s["cv_lofo_v2_v3"], s["baseline_lofo_v2_v3"]
    leaky = s["cv_lofo_v2_v3_shared_factors"]
    seen = [("(seen sources)", cv["seen_sources"], base.get("seen_sources"), None)]
    rows = [*((f, cv["families"][f], base["families"][f], leaky["families"][f])
              for f in cv["families"]),
            ("(pooled)", cv["pooled"], base["pooled"], leaky["pooled"]),
            *(seen if "seen_sources" in cv else [])]
    for fam, m, b, lk in rows:
        table.add_row(fam, str(m["n"]), f"{m['rmspe'] * 100:.1f}",
                      f"{m['within10'] * 100:.0f}", _rho(m),
                      f"{b['rmspe'] * 100:.1f}" if b else "-", _rho(b) if b else "-",
                      f"{lk['rmspe'] * 100:.1f}" if lk else "-")
    console.print(table)
    three = s["cv_lofo_v2_v3large_v3small"]
    console.print(
        "three families held out in turn: " + ", ".join(
            f"{f} {m['rmspe'] * 100:.1f}% (rho {_rho(m)})" for f, m in three["families"].items())
        + f"; pooled {three['pooled']['rmspe'] * 100:.1f}%", highlight=False)
    loso = Table(title="Strict leave one source out (every row of a source out of the fit)")
    for col in ("source", "what", "n", "raw RMSPE %", "bias %", "after one scale %", "scale",
                "Spearman"):
        loso.add_column(col, justify="left" if col in ("source", "what") else "right")
    for g, e in s["leave_one_source_out"].items():
        for what in ("published", "networks"):
            if what in e:
                m = e[what]
                loso.add_row(g, what if what == "published" else "300 FBNet networks",
                             str(m["n"]), f"{m['rmspe'] * 100:.1f}", f"{m['bias'] * 100:+.1f}",
                             f"{m['rmspe_after_scale'] * 100:.1f}", f"{m['scale']:.3f}", _rho(m))
    console.print(loso)
    sh, mac = s["fbnet_leave_one_shape_out"], s["fbnet_macs_one_scale"]
    console.print(
        f"FBNet Pixel-3 networks (sums of blocks), each block predicted with its table position "
        f"held out ({sh['folds']} folds): after one scale "
        f"{sh['networks']['rmspe_after_scale'] * 100:.1f}% "
        f"(raw {sh['networks']['rmspe'] * 100:.1f}%), Spearman {_rho(sh['networks'])}; "
        f"multiply-adds x one scale {mac['rmspe_after_scale'] * 100:.1f}%, Spearman {_rho(mac)}. "
        f"Single blocks: {sh['blocks']['rmspe'] * 100:.1f}%, Spearman {_rho(sh['blocks'])}.",
        highlight=False)
    px = s.get("proxylessnas_mobile")
    if px:
        console.print(
            f"ProxylessNAS-Mobile on Pixel 1 (in no fit): predicted {px['predicted_ms']:.1f} ms vs "
            f"{px['published_ms']:.0f} ms published ({px['error'] * 100:+.1f}%, "
            f"{'within' if px['within'] else 'OUTSIDE'} the quoted "
            f"{px['expected_error'] * 100:.1f}%); ratio to MobileNetV2 1.0 {px['ratio_to_v2']:.3f} "
            f"vs {px['published_ratio_to_v2']:.3f} in the same paper.", highlight=False)
    mn = s.get("mnasnet_a1")
    if mn:
        trend = ", ".join(f"{r} px {x:.2f}" for r, x in mn["by_resolution"].items())
        console.print(
            f"MnasNet-A1 on Pixel 1, {mn['raw']['n']} input size x multiplier settings (in no "
            f"fit): raw {mn['raw']['rmspe'] * 100:.1f}% (bias {mn['raw']['bias'] * 100:+.1f}%), "
            f"{mn['within_expected'] * 100:.0f}% within the quoted "
            f"{mn['expected_error'] * 100:.1f}%; after one scale (leave one out) "
            f"{mn['model']['rmspe'] * 100:.1f}%, Spearman {_rho(mn['model'])}; multiply-adds x "
            f"one scale {mn['macs']['rmspe'] * 100:.1f}%, + constant "
            f"{mn['macs_constant']['rmspe'] * 100:.1f}%. Scaled prediction / published by input "
            f"size: {trend}.", highlight=False)
    err = s["errors"]
    basis = ("its own strict leave-one-family-out RMSPE, rows of calibrated sources"
             if err["basis"] == "own" else "too few rows of its own: the pooled one or its own, "
            "whichever is larger, widened")
    console.print(
        f"Quoted for {s['device']}: relative/rank error {err['rel_error'] * 100:.1f}% ({basis}), "
        f"runtime-scale error {err['scale_error'] * 100:.1f}% (shared by the phones: the "
        f"smallest that covers {err['level'] * 100:.0f}% of the held-out raw errors of the "
        f"{len(err['calibrated_on'])} sources, each weighing the same), expected raw error "
        f"{err['expected_error'] * 100:.1f}% = their quadrature sum.", highlight=False)
    if err.get("note"):
        console.print(f"Note: {err['note']}.", highlight=False)
    cover = Table(title="Strict coverage of the quoted expected error: each source's held-out "
                        "raw errors scored by error bars calibrated without that source")
    for col in ("held-out source", "phone", "n", "error bar %", "basis", "scale part %",
                "covered %"):
        cover.add_column(col, justify="left" if col in ("held-out source", "phone", "basis")
                         else "right")
    for g, f in err["folds"].items():
        for p in f["coverage"]:
            cover.add_row(g, p, str(f["n"][p]), f"{f['expected_error'][p] * 100:.1f}",
                          f["basis"][p], f"{f['scale_error'] * 100:.1f}",
                          f"{f['coverage'][p] * 100:.0f}")
    console.print(cover)
    console.print(
        f"Strict coverage for {s['device']} {err['coverage'] * 100:.0f}% (each of its held-out "
        f"sources weighing the same), {err['coverage_pooled'] * 100:.0f}% pooled over phones "
        f"(each source weighing the same; target 67%: with four sources, one source moves it "
        f"by 25 points); not "
        f"strict, the shipped bars on the errors they were calibrated on: "
        f"{err['coverage_in_sample'] * 100:.0f}% ({err['coverage_in_sample_pooled'] * 100:.0f}% "
        "pooled). Strict: coefficients, phone scales and source factors come "
        "from the training rows only; a held-out row of a source no training row shares is "
        "scored on the fold's reference scale, runtime drift included. 'shared-factor': source "
        "factors from all rows (leaky; for comparison). Baseline = multiply-adds + constant, "
        "same protocol.", highlight=False)
    if s["device"] != "pixel1":
        console.print(f"Note: {s['relative_costs']}.", highlight=False)


def _show_pixel4(s: dict[str, Any]) -> None:
    c = s["pixel4"]
    table = Table(title="pixel4: one scale on the shared operator costs, leave one network out")
    for col in ("network", "published ms", "model ms", "error %", "MACs x scale ms"):
        table.add_column(col, justify="left" if col == "network" else "right")
    for i, name in enumerate(c["networks"]):
        table.add_row(name, f"{c['measured_ms'][i]:.1f}", f"{c['model']['predictions'][i]:.1f}",
                      f"{(c['model']['predictions'][i] / c['measured_ms'][i] - 1) * 100:+.1f}",
                      f"{c['macs']['predictions'][i]:.1f}")
    console.print(table)
    console.print(
        f"model RMSPE {c['model']['rmspe'] * 100:.1f}% (Spearman {_rho(c['model'])}); MACs x one "
        f"scale {c['macs']['rmspe'] * 100:.1f}%. Source: {s['source']}. Pixel 4 has no "
        "single-thread rows: its relative operator costs are pixel1's, only the scale is its "
        "own, and its figures are 4-thread ones. Its quoted error adds the shared runtime-scale "
        "error to this RMSPE; with one source, its coverage cannot be checked strictly.",
        highlight=False)


def _rho(m: dict[str, Any]) -> str:
    return f"{m['spearman']:.3f}" if "spearman" in m else "-"


def _show_calibrate(s: dict[str, Any]) -> None:
    cv, base = s["cv"], s["baseline_cv"]
    console.print(
        f"device {s['device']}: phone-model features fitted to {s['n_networks']} networks "
        f"measured on {s['calibrated_from']} -> {s['file']}"
        f"{' (replaced)' if s['replaced'] else ''}", highlight=False)
    console.print(
        f"{s['cv_rule']}: RMSPE {cv['rmspe'] * 100:.1f}% (expected_error), within 10% "
        f"{cv['within10'] * 100:.0f}%, Spearman {_rho(cv)}; MACs + constant baseline RMSPE "
        f"{base['rmspe'] * 100:.1f}%, Spearman {_rho(base)}", highlight=False)
    console.print(f"use it anywhere a device is asked for: --device {s['device']}",
                  highlight=False)
