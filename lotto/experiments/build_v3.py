"""`lotto build-v3`: MobileNetV3's construction as priced spec changes (Howard et al. 2019, s. 5).

From a seed (large: MnasNet-A1, the paper's; small: our reconstruction of the searched Small
network), the steps are: the variant's searched + NetAdapt blocks, h-swish, V3 squeeze-excite,
16-filter stem, efficient last stage. Each step is one metrics row with parameters, MAdds, host
latency (measured) and phone latency (predicted), and its spec is saved. With the defaults the
last step equals the published network.

Latency comes from `lotto.latency.predict`, the interface `bench`, `search` and `netadapt` use.

Files under the run directory: `specs/<step>_<change>.yaml` per step, `final.yaml`,
`metrics.{csv,parquet}` (one row per step), `summary.json`, and on request `final.onnx`,
`trained_<step>.safetensors` with `trained_<step>.yaml` (the adapted spec it was trained as).
A step is finished when its row is in metrics.csv; a re-run skips it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig
from rich.progress import Progress

from lotto.arch import ArchSpec, adapt_to_resolution, load_spec, preset
from lotto.arch.build import build_network, load_pretrained
from lotto.arch.v3 import efficient_last_stage, replace_blocks, set_stem, use_hswish, use_v3_se
from lotto.config import check
from lotto.errors import LottoError
from lotto.latency.devices import PHONES, canonical_device, is_phone
from lotto.latency.onnx_check import export_onnx
from lotto.runs import MetricsLog, RunDir, json_value

COMMAND = "build-v3"


@dataclass(frozen=True)
class Variant:
    seed: str  # default seed spec
    searched: str  # the searched + NetAdapt blocks, before the manual changes
    target: str  # the published network
    hswish_from: int  # output width of the first h-swish block, as published


VARIANTS = {
    "large": Variant("mnasnet_a1", "mobilenet_v3_large_seed", "mobilenet_v3_large", 80),
    "small": Variant("mobilenet_v3_small_seed", "mobilenet_v3_small_seed", "mobilenet_v3_small",
                     40),
}


@dataclass(frozen=True)
class Step:
    step: int
    change: str  # seed | blocks | hswish | se | stem16 | efficient_last_stage
    description: str
    spec: ArchSpec


@dataclass
class BuildResult:
    run: RunDir
    steps: list[Step]
    metrics: pd.DataFrame
    summary: dict


# --------------------------------------------------------------------------------------------
# The construction (pure: no files, no timing)


def validate(cfg: DictConfig) -> None:
    check(cfg.variant in VARIANTS, "variant", f"{cfg.variant!r}: choose large or small")
    ch = cfg.changes
    check(ch.blocks in (None, True, False), "changes.blocks", "true, false or null")
    check(ch.hswish_from is None or (isinstance(ch.hswish_from, int) and ch.hswish_from > 0),
          "changes.hswish_from", "a positive channel count or null")
    check(ch.se_blocks is None or all(isinstance(i, int) for i in ch.se_blocks),
          "changes.se_blocks", "a list of block indices or null")
    check(ch.stem_channels > 0, "changes.stem_channels", "must be positive")
    check(cfg.resolution > 0, "resolution", "must be positive")
    check(cfg.num_classes > 0, "num_classes", "must be positive")
    lat = cfg.latency
    check(lat.host in ("none", "cpu", "cuda"), "latency.host", f"{lat.host!r}: cpu, cuda or none")
    check(lat.threads >= 1, "latency.threads", "must be at least 1")
    check(lat.min_run_time > 0, "latency.min_run_time", "must be positive")
    bad = [p for p in lat.phones if not is_phone(p)]
    check(not bad, "latency.phones", f"unknown {bad}; choose from pixel, {', '.join(PHONES)}")
    check(cfg.export in (None, "onnx"), "export", f"{cfg.export!r}: onnx or null")
    check(cfg.train_steps in ("none", "final", "all"), "train_steps", "none, final or all")
    check(0 <= cfg.train_bn_momentum <= 1, "train_bn_momentum", "must be in [0, 1]")


def phones(cfg: DictConfig) -> list[str]:
    """The configured phones by canonical name (`pixel` -> `pixel1`), each once."""
    return list(dict.fromkeys(canonical_device(p) for p in cfg.latency.phones))


def construct(cfg: DictConfig, skipped: list[str] | None = None) -> list[Step]:
    """The sequence of specs, seed first, priced at cfg.resolution / cfg.num_classes.

    A network given with `--from` (a preset, a spec file, a searched run) may lack what a change
    needs (no layer wide enough for h-swish, a head that already pools first): that change is
    skipped, and one line saying why is appended to `skipped`. With the variant's own seed, a
    change that does not apply is an error."""
    validate(cfg)
    variant = VARIANTS[cfg.variant]
    ch = cfg.changes
    source = cfg["from"] if cfg["from"] is not None else variant.seed

    def sized(spec: ArchSpec) -> ArchSpec:
        return spec.replace(resolution=cfg.resolution, num_classes=cfg.num_classes).validate()

    spec = sized(load_spec(source))
    steps = [Step(0, "seed", f"seed {spec.name}", spec)]

    def add(change: str, description: str, fn: Callable[[ArchSpec], ArchSpec]) -> None:
        nonlocal spec
        try:
            new = fn(spec)
        except LottoError as e:
            if cfg["from"] is None:
                raise LottoError(f"change {change}: {e}") from None
            if skipped is not None:
                skipped.append(f"change {change} skipped: {e}")
            return
        spec = new.replace(name=f"{steps[0].spec.name}+{change}")
        steps.append(Step(len(steps), change, description, spec))

    searched = sized(preset(variant.searched))
    blocks = ch.blocks if ch.blocks is not None else (
        cfg["from"] is None and spec.blocks != searched.blocks)
    if blocks:
        add("blocks", f"searched + NetAdapt blocks of {variant.target} ({len(searched.blocks)})",
            lambda s: replace_blocks(s, searched))
    if ch.hswish:
        width = ch.hswish_from if ch.hswish_from is not None else variant.hswish_from
        add("hswish", f"h-swish from the first {width}-channel block"
            + (" and in the stem" if ch.hswish_stem else ""),
            lambda s: use_hswish(s, width, ch.hswish_stem))
    if ch.se:
        where = "the seed's SE blocks" if ch.se_blocks is None else f"blocks {list(ch.se_blocks)}"
        add("se", f"SE at 1/4 of the expansion, h-sigmoid, on {where}",
            lambda s: use_v3_se(s, None if ch.se_blocks is None else list(ch.se_blocks)))
    if ch.stem16:
        add("stem16", f"stem {spec.stem.channels} -> {ch.stem_channels} filters",
            lambda s: set_stem(s, ch.stem_channels))
    if ch.efficient_last_stage:
        add("efficient_last_stage", "pool before the last 1x1; last block's dw + project removed",
            efficient_last_stage)
    target = sized(preset(variant.target))
    if spec.replace(name=target.name) == target:
        spec = target  # name the result after the network it is
        steps[-1] = Step(steps[-1].step, steps[-1].change, steps[-1].description, target)
    return steps


# --------------------------------------------------------------------------------------------
# Latency: the shared interface when it is there, a measurement / the phone model otherwise


def latency_ms(spec: ArchSpec, device: str, cfg: DictConfig) -> tuple[float, str, float]:
    """(milliseconds, provenance, expected relative error) of `spec` on `device`, from the
    shared latency interface: measured on a host device, predicted by the phone model."""
    from lotto.latency import predict  # imported late: it pulls in the phone models

    if is_phone(device):
        lat = predict(spec, device)
    else:
        lat = predict(spec, device, threads=cfg.latency.threads,
                      min_run_time=cfg.latency.min_run_time)
    return float(lat.ms), lat.source, float(lat.expected_error)


# --------------------------------------------------------------------------------------------
# Export and training


def _train(spec: ArchSpec, cfg: DictConfig, data: Any, device: torch.device, run: RunDir,
           tag: str, progress: Progress | None) -> dict[str, float]:
    from lotto.train import seed_everything, train

    small = adapt_to_resolution(
        spec.replace(in_channels=data.in_channels, num_classes=data.num_classes,
                     bn_momentum=cfg.train_bn_momentum),
        data.image_size,
    )
    seed_everything(cfg.seed)
    model = build_network(small)
    result = train(model, data, cfg.train, seed=cfg.seed, device=device, progress=progress,
                   desc=f"train {tag}", eval_test="reported")
    run.save_tensors(f"trained_{tag}.safetensors", model.state_dict())
    small.save(run.file(f"trained_{tag}.yaml"))
    return {
        "trained_params": small.params(), "trained_madds": small.macs(),
        "val_accuracy": result.val_accuracy, "test_accuracy": result.test_accuracy,
        "early_stop_test_accuracy": result.early_stop_test_accuracy,
        "train_seconds": result.seconds,
    }


# --------------------------------------------------------------------------------------------
# The command


def run_build_v3(cfg: DictConfig, *, force: bool = False,
                 progress: Progress | None = None) -> BuildResult:
    skipped: list[str] = []
    steps = construct(cfg, skipped)  # bad specs and weights fail before a run directory exists
    final = steps[-1].spec
    exported = None
    if cfg.export == "onnx" or cfg.pretrained is not None:
        torch.manual_seed(cfg.seed)
        exported = build_network(final)
        if cfg.pretrained is not None:
            load_pretrained(exported, Path(cfg.pretrained).expanduser())
    run = RunDir.open(cfg, COMMAND, force=force)
    metrics = MetricsLog(run)
    data = device = None
    if cfg.train_steps != "none":
        from lotto.data import load_data
        from lotto.train import resolve_device

        device = resolve_device(cfg.device)
        data = load_data(cfg.data, device)
    task = progress.add_task("build-v3", total=len(steps)) if progress is not None else None
    for st in steps:
        tag = f"{st.step:02d}_{st.change}"
        st.spec.save(run.file(f"specs/{tag}.yaml"))
        if metrics.find(step=st.step, change=st.change):
            if task is not None:
                progress.advance(task)
            continue
        row: dict[str, Any] = {
            "step": st.step, "change": st.change, "description": st.description,
            "network": st.spec.name, "params": st.spec.params(), "madds": st.spec.macs(),
        }
        prev = metrics.rows[-1] if metrics.rows else None
        row["d_params"] = row["params"] - prev["params"] if prev else 0
        row["d_madds"] = row["madds"] - prev["madds"] if prev else 0
        if cfg.latency.host != "none":
            ms, source, error = latency_ms(st.spec, cfg.latency.host, cfg)
            row.update(latency_ms_host=ms, host_device=cfg.latency.host, host_source=source,
                       host_error=error)
        for phone in phones(cfg):
            ms, source, error = latency_ms(st.spec, phone, cfg)
            row.update({f"latency_ms_{phone}": ms, f"{phone}_source": source,
                        f"{phone}_error": error})
        last = st.step == steps[-1].step
        if cfg.train_steps == "all" or (cfg.train_steps == "final" and last):
            row.update(_train(st.spec, cfg, data, device, run, tag, progress))
        metrics.append(row)
        if task is not None:
            progress.advance(task)
    if task is not None:
        progress.remove_task(task)

    final.save(run.file("final.yaml"))
    files = ["final.yaml", "metrics.csv", "metrics.parquet", "summary.json"]
    if cfg.export == "onnx":
        assert exported is not None
        export_onnx(exported, final, run.file("final.onnx"))
        files.append("final.onnx")
    frame = metrics.frame()
    target = VARIANTS[cfg.variant].target
    summary = {
        "variant": cfg.variant,
        "seed_network": steps[0].spec.name,
        "final_network": final.name,
        "equals_published": final.name == target,
        "published": target,
        "changes": [s.change for s in steps[1:]],
        "skipped": skipped,
        "final": {k: json_value(v) for k, v in frame.iloc[-1].items()},
        "seed": {k: json_value(v) for k, v in frame.iloc[0].items()},
        "final_blocks": final.block_strings(),
        "files": files,
    }
    run.write_json("summary.json", summary)
    # latency vs MAdds per change and device (lotto.report.plots, as `lotto compare` draws it)
    from lotto.report.plots import save_run_figure
    from lotto.runs import atomic_write

    save_run_figure("build-v3", frame, run.file("build_v3.png"), write=atomic_write)
    return BuildResult(run, steps, frame, summary)


