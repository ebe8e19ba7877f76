"""Host timing (cpu, cuda): prepare a module the way a mobile runtime runs it, then time it.

Protocol (docs/latency.md, host measurement): eval mode, `torch.inference_mode`, BatchNorm
folded into the preceding convolution, channels_last, a pinned thread count (default 1,
restored afterwards), a steady heap (`steady_allocator`), warm-up, then timed runs: calls of
1 ms or more one by one (per-call quantiles, CUDA synchronised after each), shorter ones with
`torch.utils.benchmark.Timer.blocked_autorange`, which picks a block size that makes timer
overhead negligible and synchronises around blocks.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lotto.errors import LottoError
from lotto.latency.devices import HOST_DEVICES

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Timing:
    """Statistics over `n` timed blocks of `number_per_run` calls each (times are per call)."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    mean_ms: float
    std_ms: float
    n: int
    number_per_run: int
    threads: int
    device: str
    times_ms: tuple[float, ...] = field(repr=False, default=())

    @property
    def iqr_rel(self) -> float:
        """IQR / median: the repeatability figure (docs/latency.md asks <= 3% at one thread)."""
        return (self.p75_ms - self.p25_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("times_ms")
        out["iqr_rel"] = self.iqr_rel
        return out


def check_host_device(device: str) -> torch.device:
    """`cpu` or `cuda[:i]`; LottoError for cuda on a machine without a GPU."""
    name = device.split(":")[0]
    if name not in HOST_DEVICES:
        raise LottoError(f"{device!r} is not a host device (cpu, cuda)")
    if name == "cuda" and not torch.cuda.is_available():
        raise LottoError("--device cuda: no CUDA GPU is visible on this machine")
    return torch.device(device)


def fingerprint(device: str = "cpu", threads: int = 1) -> dict[str, Any]:
    """What a table or a measurement was taken on; a LUT is only reused on a matching one."""
    info: dict[str, Any] = {
        "device": device.split(":")[0],
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "threads": threads,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "governor": _governor(),
        "allocator": "steady" if steady_allocator() else "default",  # see steady_allocator
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(index)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _governor() -> str | None:
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") as f:
            return f.read().strip()
    except OSError:
        return None  # VMs and containers often hide it


@contextmanager
def pinned_threads(threads: int = 1, core: int | None = None) -> Iterator[None]:
    """Pin torch's intra-op thread count (and optionally the CPU affinity); restore afterwards."""
    if threads < 1:
        raise LottoError(f"--threads must be >= 1, got {threads}")
    old_threads = torch.get_num_threads()
    old_affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    torch.set_num_threads(threads)
    if core is not None:
        if old_affinity is None or core not in old_affinity:
            torch.set_num_threads(old_threads)
            raise LottoError(f"--pin-core {core}: not one of this process's CPUs")
        os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        if core is not None and old_affinity is not None:
            os.sched_setaffinity(0, old_affinity)


# ---------------------------------------------------------------------------------------------
# Preparing a module: eval, BN folded, channels_last, dtype


def _fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = copy.deepcopy(conv)
    w, b = torch.nn.utils.fusion.fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    fused.weight, fused.bias = w, b
    return fused


def _fold_sequential(module: nn.Module) -> int:
    """Fold Conv2d -> BatchNorm2d pairs that sit next to each other in an nn.Sequential."""
    folded = 0
    for child in module.modules():
        if not isinstance(child, nn.Sequential):
            continue
        names = list(child._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = child._modules[a], child._modules[b]
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats
                and bn.running_mean is not None
            ):
                child._modules[a] = _fold_conv_bn(conv, bn)
                child._modules[b] = nn.Identity()
                folded += 1
    return folded


def count_bn(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def fold_bn(module: nn.Module) -> tuple[nn.Module, int]:
    """A copy of `module` (eval mode) with BatchNorm folded into convs; returns (copy, folded).

    Walks nn.Sequential containers and folds adjacent Conv2d -> BatchNorm2d pairs, which keeps
    module names (so per-layer tables still read like the spec). If BNs remain (a builder that
    does not use Sequential), falls back to torch.fx's `fuse`, which needs a traceable module.
    """
    model = copy.deepcopy(module).eval()
    before = count_bn(model)
    if before == 0:
        return model, 0
    _fold_sequential(model)
    if count_bn(model):
        try:
            from torch.fx.experimental.optimization import fuse

            model = fuse(model)
        except Exception:  # untraceable module: keep what the Sequential pass folded
            pass
    return model, before - count_bn(model)


@dataclass
class Prepared:
    """A module ready to time and its input; `info` records how it was prepared."""

    module: nn.Module
    input: torch.Tensor
    info: dict[str, Any]

    def __call__(self) -> torch.Tensor:
        return self.module(self.input)


def prepare(
    module: nn.Module,
    input_shape: tuple[int, ...],
    device: str = "cpu",
    *,
    fold: bool = True,
    channels_last: bool = True,
    dtype: str = "float32",
    seed: int = 0,
) -> Prepared:
    """Eval-mode copy on `device`: BN folded, channels_last (NHWC like TFLite), dtype cast."""
    dev = check_host_device(device)
    if dtype not in DTYPES:
        raise LottoError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "float16" and dev.type == "cpu":
        raise LottoError("float16 timing is for cuda; use bfloat16 or float32 on cpu")
    if fold:
        model, folded = fold_bn(module)
    else:
        model, folded = copy.deepcopy(module).eval(), 0
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(input_shape, generator=gen)
    nhwc = channels_last and x.dim() == 4
    memory_format = torch.channels_last if nhwc else torch.contiguous_format
    model = model.to(device=dev, dtype=DTYPES[dtype], memory_format=memory_format)
    x = x.to(device=dev, dtype=DTYPES[dtype]).contiguous(memory_format=memory_format)
    for p in model.parameters():
        p.requires_grad_(False)
    info = {
        "bn_folded": folded,
        "bn_left": count_bn(model),
        "channels_last": memory_format is torch.channels_last,
        "dtype": dtype,
        "batch": int(input_shape[0]),
        "input_shape": list(input_shape),
    }
    return Prepared(model, x, info)


# ---------------------------------------------------------------------------------------------
# Timing


def _stats(times_s: list[float], number: int, threads: int, device: str) -> Timing:
    ms = sorted(t * 1e3 for t in times_s)
    q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    return Timing(
        median_ms=statistics.median(ms),
        p25_ms=q[0],
        p75_ms=q[2],
        mean_ms=statistics.fmean(ms),
        std_ms=statistics.stdev(ms) if len(ms) > 1 else 0.0,
        n=len(ms),
        number_per_run=number,
        threads=threads,
        device=device,
        times_ms=tuple(ms),
    )


PER_CALL_MIN_S = 1e-3  # calls this long are timed one by one (timer overhead < 0.1%)
# IQR/median above which a measurement is called noisy (shown with a marker and a warning).
# docs/latency.md asks <= 3% of an idle machine at one thread; 10% means the machine was busy.
NOISY_IQR = 0.10
REMEASURES = 2  # a noisy measurement is taken again up to this many times; the least noisy wins


def is_noisy(iqr_rel: float | None, limit: float = NOISY_IQR) -> bool:
    return iqr_rel is not None and iqr_rel == iqr_rel and iqr_rel > limit


def noisy_warning(what: str, iqr_rel: float, tries: int) -> str:
    return (f"{what}: noisy measurement (IQR/median {100 * iqr_rel:.0f}% after {tries} "
            f"measurement{'s' if tries > 1 else ''}; > {100 * NOISY_IQR:.0f}%): the machine is "
            "busy, the median is likely too high; re-run on an idle machine")


def least_noisy(measure: Callable[[], Timing], limit: float = NOISY_IQR,
                remeasures: int = REMEASURES) -> tuple[Timing, int]:
    """`measure()`, taken again while noisy (at most `remeasures` more times); returns the
    least noisy Timing and how many measurements were taken."""
    best = measure()
    tries = 1
    while tries <= remeasures and is_noisy(best.iqr_rel, limit):
        again = measure()
        tries += 1
        if again.iqr_rel < best.iqr_rel:
            best = again
    return best, tries
CLOCKS = ("wall", "thread", "paired")


def clock_fn(clock: str, dev: torch.device, threads: int) -> Callable[[], float]:
    """wall: perf_counter (the protocol). thread: CPU time of the calling thread, which leaves
    out time spent descheduled, for shared machines; valid for cpu at one thread only (then
    every op runs inline in this thread). paired: wall time relative to a reference network run
    before each timed call (`lotto.latency.paired`), for machines whose speed drifts; cpu only.
    The function returned for paired is the wall clock the pairs are timed with."""
    if clock == "wall":
        return time.perf_counter
    if clock == "paired":
        if dev.type != "cpu":
            raise LottoError("clock 'paired' measures cpu only; use clock 'wall'")
        return time.perf_counter
    if clock == "thread":
        if dev.type != "cpu" or threads != 1:
            raise LottoError("clock 'thread' measures cpu at 1 thread only; use clock 'wall'")
        return time.thread_time
    raise LottoError(f"unknown clock {clock!r}; choose one of {', '.join(CLOCKS)}")


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_STEADY: list[bool] = []  # set once per process: whether the heap is kept steady


def steady_allocator() -> bool:
    """Keep freed memory in this process's heap (glibc: blocks up to 32 MiB from the heap, not
    fresh mmaps; no returning the heap's top to the system), so that a timing does not depend on
    what was freed before it. Process-wide and kept (the heap is reused, not grown); False where
    it cannot apply (not glibc).

    Why: with glibc's defaults a block over its (moving) mmap threshold is mapped fresh and page-
    faulted in on every call, or not, depending on the allocation history, and a 112-px unit's
    multi-megabyte activations then swing its time by 2-3x. Measured 2026-12-06 on this
    project's idle 2-core machine, 1 thread, pinned (units timed in situ, summed, vs the same
    network end to end): MnasNet-space sample0_2 17.1 vs 30.4 ms in one run and 35.7 vs 19.5 ms
    in another; with this setting 19.3 vs 18.6 ms (sample0_3 18.2 vs 18.7, sample0_0 15.5 vs
    15.1). The host table on MnasNet's space (12 networks, strict as in scripts/bench_latency.py):
    RMSPE 21.5%, worst +49.1% before; 6.6%, worst -16.0% with it. A mobile runtime plans its
    buffers once (TFLite's arena), which this matches better.
    """
    if not _STEADY:
        ok = False
        if platform.system() == "Linux":
            try:
                import ctypes

                libc = ctypes.CDLL("libc.so.6")
                ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
            except (OSError, AttributeError):  # musl, or no libc.so.6
                ok = False
        _STEADY.append(ok)
    return _STEADY[0]


def time_callable(
    fn: Callable[[], Any],
    device: str = "cpu",
    *,
    threads: int = 1,
    min_run_time: float = 1.0,
    warmup: int = 10,
    min_runs: int = 10,
    core: int | None = None,
    clock: str = "wall",
) -> Timing:
    """Median-centred timing of `fn()` under `torch.inference_mode`.

    Warm-up: `warmup` calls (and at CUDA, cudnn.benchmark picks its algorithms there). Calls of
    1 ms or more are then timed one by one (synchronised on CUDA) for at least `min_run_time`
    seconds and `min_runs` calls, which gives honest per-call quantiles; shorter calls go
    through `torch.utils.benchmark.Timer.blocked_autorange`, whose blocks amortise the timer.
    `clock`: see `clock_fn` (the run-time budget is always wall time). Under `paired` every
    sample is the reference network once, then one call (or, below 1 ms, a block of calls).
    """
    from torch.utils import benchmark

    dev = check_host_device(device)
    steady_allocator()
    now = clock_fn(clock, dev, threads)
    if clock == "paired":
        return _time_paired(fn, threads, min_run_time, warmup, min_runs, core)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    old_cudnn = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    try:
        with pinned_threads(threads, core), torch.inference_mode():
            estimate = _warm_up(fn, warmup, sync)
            if estimate >= PER_CALL_MIN_S:
                times: list[float] = []
                begin = time.perf_counter()
                while time.perf_counter() - begin < min_run_time or len(times) < min_runs:
                    t0 = now()
                    fn()
                    sync()
                    times.append(now() - t0)
                return _stats(times, 1, threads, device)
            extra = {} if clock == "wall" else {"timer": now}  # default: synchronising timer
            timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads,
                                    **extra)
            m = timer.blocked_autorange(min_run_time=min_run_time)
    finally:
        torch.backends.cudnn.benchmark = old_cudnn
    return _stats(list(m.times), m.number_per_run, threads, device)


def _warm_up(fn: Callable[[], Any], warmup: int, sync: Callable[[], Any] = lambda: None,
             before: Callable[[], Any] = lambda: None) -> float:
    """`warmup` calls (each after `before()`), then the seconds of one call, from three."""
    for _ in range(warmup):
        before()
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(3):
        fn()
    sync()
    return (time.perf_counter() - start) / 3


def _time_paired(fn: Callable[[], Any], threads: int, min_run_time: float, warmup: int,
                 min_runs: int, core: int | None) -> Timing:
    from lotto.latency.paired import paired_seconds, reference_call, reference_ms

    scale = reference_ms(threads, core) / 1e3
    ref = reference_call(threads)
    with pinned_threads(threads, core), torch.inference_mode():
        estimate = _warm_up(fn, warmup, before=ref)
        number = max(1, math.ceil(PER_CALL_MIN_S / max(estimate, 1e-9)))
        times: list[float] = []
        begin = time.perf_counter()
        while time.perf_counter() - begin < min_run_time or len(times) < min_runs:
            times.append(paired_seconds(fn, ref, number, scale))
    return _stats(times, number, threads, "cpu")


def measure_module(
    module: nn.Module,
    input_shape: tuple[int, ...],
    device: str = "cpu",
    *,
    threads: int = 1,
    min_run_time: float = 1.0,
    warmup: int = 10,
    dtype: str = "float32",
    fold: bool = True,
    channels_last: bool = True,
    core: int | None = None,
    clock: str = "wall",
) -> tuple[Timing, dict[str, Any]]:
    """Time `module` end to end on a host device; returns (timing, preparation info)."""
    prepared = prepare(
        module, input_shape, device, fold=fold, channels_last=channels_last, dtype=dtype
    )
    timing, tries = least_noisy(lambda: time_callable(
        prepared, device, threads=threads, min_run_time=min_run_time, warmup=warmup, core=core,
        clock=clock,
    ))
    info: dict[str, Any] = {**prepared.info, "clock": clock, "measurements": tries,
                            "noisy": is_noisy(timing.iqr_rel)}
    if info["noisy"]:
        info["warnings"] = [noisy_warning(f"{device} timing", timing.iqr_rel, tries)]
    return timing, info


# ---------------------------------------------------------------------------------------------
# Per-layer timing with forward hooks


@dataclass(frozen=True)
class LayerTime:
    """One leaf-module call: median time over the profiled runs."""

    layer: str
    op: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    macs: int
    ms: float


def op_type(module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> str:
    """Coarse op type of a leaf module (conv, pw, dw, fc, relu, hswish, pool, ...)."""
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "dw"
        pointwise = module.kernel_size == (1, 1)
        if len(out_shape) == 4 and out_shape[2] * out_shape[3] == 1 and pointwise:
            return "fc"  # a 1x1 conv on a 1x1 map (SE, V3 head) is a matrix-vector product
        return "pw" if module.kernel_size == (1, 1) else "conv"
    if isinstance(module, nn.Linear):
        return "fc"
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d)):
        return "pool"
    if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
        return "bn"
    names = {
        nn.ReLU: "relu",
        nn.ReLU6: "relu6",
        nn.Hardswish: "hswish",
        nn.Hardsigmoid: "hsigmoid",
        nn.Sigmoid: "sigmoid",
        nn.SiLU: "swish",
        nn.Identity: "identity",
        nn.Dropout: "dropout",
        nn.Flatten: "flatten",
    }
    for cls, name in names.items():
        if isinstance(module, cls):
            return name
    return type(module).__name__.lower()


def _leaves(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if n and not list(m.children())]


def _shape(x: Any) -> tuple[int, ...]:
    if isinstance(x, (tuple, list)) and x:
        x = x[0]
    return tuple(x.shape) if isinstance(x, torch.Tensor) else ()


def profile_layers(
    prepared: Prepared,
    device: str = "cpu",
    *,
    threads: int = 1,
    runs: int = 20,
    warmup: int = 5,
) -> list[LayerTime]:
    """Per-leaf-module times from forward pre/post hooks (median over `runs` forwards).

    Hooks time leaf modules only; work done in `forward` code outside leaves (residual adds, the
    SE multiply, reshapes, Python) is not attributed: callers show it as the gap between the
    end-to-end median and the sum of layers. CUDA is synchronised in every hook.
    """
    dev = check_host_device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    events: list[tuple[str, nn.Module, tuple, tuple, float]] = []
    starts: dict[int, float] = {}

    def pre(mod: nn.Module, args: Any) -> None:
        sync()
        starts[id(mod)] = time.perf_counter()

    def make_post(name: str) -> Callable:
        def post(mod: nn.Module, args: Any, out: Any) -> None:
            sync()
            elapsed = time.perf_counter() - starts.pop(id(mod))
            events.append((name, mod, _shape(args), _shape(out), elapsed))

        return post

    from lotto.flops import macs_by_module

    macs = macs_by_module(prepared.module, prepared.input)  # the project's one module counter
    handles = []
    for name, mod in _leaves(prepared.module):
        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(make_post(name)))
    per_run: list[list[tuple]] = []
    try:
        with pinned_threads(threads), torch.inference_mode():
            for i in range(warmup + runs):
                events.clear()
                prepared()
                if i >= warmup:
                    per_run.append(list(events))
    finally:
        for h in handles:
            h.remove()
    out = []
    for j, (name, mod, ins, outs, _) in enumerate(per_run[0]):
        ms = statistics.median(run[j][4] for run in per_run) * 1e3
        out.append(LayerTime(name, op_type(mod, ins, outs), ins, outs, macs.get(name, 0), ms))
    return out
