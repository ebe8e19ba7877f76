"""`--device xnnpack`: a network exported to ExecuTorch with the XNNPACK delegate, timed here.

XNNPACK is the CPU kernel library that ExecuTorch (and TFLite) run on phones; timing an
ExecuTorch program on this host uses the same kernels, graph partitioning and fusions as a phone
does, on an x86 CPU. Steps:

1. Prepare: eval mode, BatchNorm folded into the convs (the partitioner fuses it anyway; a
   smaller graph exports about twice as fast).
2. Export: `torch.export.export` -> `to_edge_transform_and_lower(..., XnnpackPartitioner())`
   -> `to_executorch()`. fp32 by default; `dtype="int8"`: post-training quantisation (PT2E,
   XNNPACKQuantizer, symmetric per-channel weights, per-tensor activations) calibrated on a few
   batches (of the configured data, or standard-normal inputs when none is configured).
   An op the exporter or runtime cannot handle is a LottoError that names the op.
3. Run with `executorch.runtime` (the portable runtime's Python bindings) in a child process
   (`python -m lotto.latency.xnnpack`, with a timeout, retried once): the runtime's thread pool
   (not torch's) is sized to `threads` (default 1) before the program is loaded, as
   ExecuTorch's own runners do (see "Running" below for why the order matters).
4. Time: warm-up runs, then per-call timing for at least `min_run_time` seconds and 10 calls;
   median, quartiles (same statistics as host timing, `lotto.latency.measure.Timing`).

Exported programs are cached as `<cache_dir>/<key>.pte` (key: the spec, input shape, dtype and
ExecuTorch version), because export costs 10-70 s on a busy 2-core host; the same file is what
`--device adb` pushes to a phone.

ExecuTorch is an optional extra: `pip install -e '.[device]'` (executorch==1.5.1).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lotto.errors import LottoError

DTYPES = ("float32", "int8")
INSTALL_HINT = "pip install -e '.[device]' (executorch==1.5.1)"
# graph nodes of a lowered program that are plumbing, not compute left outside the delegate
_PLUMBING = ("executorch_call_delegate", "getitem", "alloc", "_to_dim_order_copy",
             "_clone_dim_order")


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 for a block: ExecuTorch's native code logs its thread-pool and
    cpuinfo probing there, and importing it logs a torch deprecation notice, which would turn
    lotto's one-line errors and tables into noise. Errors still raise as exceptions."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        try:
            sys.stderr.flush()
        except ValueError:
            pass
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def available() -> bool:
    try:
        with quiet_stderr():
            import executorch  # noqa: F401
            from executorch.runtime import Runtime  # noqa: F401
    except ImportError:
        return False
    return True


def require(device: str = "xnnpack") -> None:
    """LottoError (one line, exit 2) when ExecuTorch is not installed."""
    if not available():
        raise LottoError(f"--device {device} needs ExecuTorch with XNNPACK, which is not "
                         f"installed: {INSTALL_HINT}")


def version() -> str:
    require()
    from executorch import version as v

    return str(getattr(v, "__version__", "unknown"))


# ---------------------------------------------------------------------------------------------
# Export


@dataclass
class Exported:
    """An ExecuTorch program (`buffer`, the .pte bytes) and how it was made."""

    buffer: bytes
    dtype: str
    input_shape: tuple[int, ...]
    delegated: int  # XNNPACK delegate calls in the program
    outside: dict[str, int]  # ops left to the portable kernels (name -> count)
    export_s: float
    executorch: str
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"runtime": f"executorch {self.executorch} + xnnpack", "program_dtype": self.dtype,
                "delegated_calls": self.delegated, "ops_outside_delegate": dict(self.outside),
                "export_s": self.export_s, "program": str(self.path) if self.path else None,
                "program_bytes": len(self.buffer), **self.info}


_OP_PATTERNS = (
    r"(aten[.:]{1,2}[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)",
    r"[Oo]perator\s+['`\"]?([A-Za-z0-9_:.]+)",
    r"\bop\s+['`\"]?([A-Za-z0-9_:.]+)",
)


def op_in_message(message: str) -> str | None:
    """The first op name (aten.xxx / aten::xxx) mentioned in an exporter or runtime error."""
    for pattern in _OP_PATTERNS:
        m = re.search(pattern, message)
        if m:
            return m.group(1)
    return None


def _fail(stage: str, e: BaseException, hint: str = "") -> LottoError:
    text = str(e).strip()
    op = op_in_message(text)
    first = text.splitlines()[0][:200] if text else type(e).__name__
    what = f"op {op}" if op else first
    extra = f" ({first})" if op and first and op not in first else ""
    return LottoError(f"ExecuTorch {stage} failed on {what}{extra}{hint}")


def _quantize(model: nn.Module, example: torch.Tensor,
              calibration: list[torch.Tensor]) -> nn.Module:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True)
    quantizer = XNNPACKQuantizer().set_global(config)
    captured = torch.export.export(model, (example,)).module()
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for x in calibration or [example]:
            prepared(x)
    return convert_pt2e(prepared)


def export_program(module: nn.Module, input_shape: tuple[int, ...], *, dtype: str = "float32",
                   calibration: list[torch.Tensor] | None = None, fold: bool = True,
                   seed: int = 0) -> Exported:
    """Export `module` for ExecuTorch + XNNPACK; LottoError naming the op that cannot export."""
    require()
    if dtype not in DTYPES:
        raise LottoError(f"--device xnnpack: dtype {dtype!r} is not supported; choose one of "
                         f"{', '.join(DTYPES)}")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from lotto.latency.measure import fold_bn

    start = time.perf_counter()
    model = fold_bn(module)[0] if fold else module
    model = model.eval()
    example = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        if dtype == "int8":
            try:
                model = _quantize(model, example, calibration or [])
            except LottoError:
                raise
            except Exception as e:
                raise _fail("int8 quantisation", e) from None
        try:
            ep = torch.export.export(model, (example,))
        except Exception as e:
            raise _fail("export (torch.export)", e) from None
        try:
            lowered = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
            program = lowered.to_executorch()
        except Exception as e:
            raise _fail("lowering to XNNPACK", e) from None
    names = Counter()
    delegated = 0
    for node in program.exported_program().graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", None) or str(node.target)
        name = str(node.target) if "." in str(node.target) else name
        if "executorch_call_delegate" in name:
            delegated += 1
        elif not any(p in name for p in _PLUMBING):
            names[name] += 1
    return Exported(program.buffer, dtype, tuple(input_shape), delegated, dict(names),
                    time.perf_counter() - start, version())


def cache_key(spec_dict: dict[str, Any], input_shape: tuple[int, ...], dtype: str,
              extra: dict[str, Any] | None = None) -> str:
    blob = json.dumps({"spec": spec_dict, "shape": list(input_shape), "dtype": dtype,
                       "executorch": version(), "extra": extra or {}}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def exported_for(module: nn.Module, input_shape: tuple[int, ...], *, dtype: str = "float32",
                 calibration: Callable[[], list[torch.Tensor]] | None = None,
                 cache_dir: Path | None = None, key: str | None = None) -> Exported:
    """`export_program` through the on-disk cache (`<cache_dir>/<key>.pte` + `.json`)."""
    if cache_dir is not None and key is not None:
        pte, meta = Path(cache_dir) / f"{key}.pte", Path(cache_dir) / f"{key}.json"
        if pte.exists() and meta.exists():
            try:
                m = json.loads(meta.read_text())
                return Exported(pte.read_bytes(), m["dtype"], tuple(m["input_shape"]),
                                int(m["delegated"]), dict(m["outside"]), float(m["export_s"]),
                                str(m["executorch"]), pte, {"cached": True})
            except (OSError, KeyError, ValueError, json.JSONDecodeError):
                pass  # a broken cache entry is exported again
    calib = calibration() if (calibration is not None and dtype == "int8") else None
    exported = export_program(module, input_shape, dtype=dtype, calibration=calib)
    if cache_dir is not None and key is not None:
        from lotto.runs import write_text

        pte = Path(cache_dir) / f"{key}.pte"
        pte.parent.mkdir(parents=True, exist_ok=True)
        tmp = pte.with_suffix(".pte.tmp")
        tmp.write_bytes(exported.buffer)
        os.replace(tmp, pte)
        write_text(Path(cache_dir) / f"{key}.json", json.dumps({
            "dtype": exported.dtype, "input_shape": list(exported.input_shape),
            "delegated": exported.delegated, "outside": exported.outside,
            "export_s": exported.export_s, "executorch": exported.executorch}, indent=1) + "\n")
        exported.path = pte
    return exported


# ---------------------------------------------------------------------------------------------
# Running
#
# Root cause of the crashes (issue 16, one process in four died with SIGSEGV or a pthread mutex
# assertion): the XNNPACK delegate takes the raw pthreadpool of ExecuTorch's process-wide
# ThreadPool when a method is loaded (its runtime is created with that pool), and
# `_unsafe_reset_threadpool` replaces the pool by destroying the old one. lotto used to load the
# program first and resize the pool afterwards (from the cpu count, 2 here, to `threads`), so
# every later `execute` ran on a freed pthreadpool: use after free, which crashed when the freed
# memory had been reused. ExecuTorch's own runners (executor_runner, the llama and multimodal
# runners) set the pool size once, before any program is loaded; so does lotto now: a Program
# fixes the pool size before it loads, and the size can only change while no Program is alive.


_live: weakref.WeakSet = weakref.WeakSet()  # loaded Programs: they hold the current pool


def set_runtime_threads(threads: int) -> None:
    """Size ExecuTorch's thread pool (not torch's) to `threads`, before loading a program.

    Resizing destroys the old pool, which every loaded XNNPACK runtime still points at: so it is
    refused while a Program is alive (a LottoError, not a crash later in `execute`).
    """
    from executorch.extension.pybindings import portable_lib as pl

    if threads < 1:
        raise LottoError(f"--threads must be >= 1, got {threads}")
    with quiet_stderr():  # creating a pool probes cpuinfo, which logs to fd 2
        current = int(pl._threadpool_get_thread_count())
        if current == threads:
            return
        if len(_live):
            raise LottoError(f"ExecuTorch's thread pool has {current} threads and a loaded "
                             f"program uses it; {threads} threads need a new process")
        pl._unsafe_reset_threadpool(threads)


class Program:
    """A loaded ExecuTorch program on a `threads`-thread pool; `run(x)` returns the first
    output as a tensor."""

    def __init__(self, exported: Exported, threads: int = 1):
        require()
        from executorch.runtime import Runtime

        set_runtime_threads(threads)  # before loading: the delegate keeps the pool it sees
        self.threads = threads
        try:
            with quiet_stderr():
                runtime = Runtime.get()
                program = runtime.load_program(exported.buffer)
                self.method = program.load_method("forward")
        except Exception as e:
            raise _fail("runtime (loading the program)", e,
                        ": the runtime has no kernel for it") from None
        _live.add(self)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.execute([x])[0]


def time_program(program: Program, x: torch.Tensor, *, min_run_time: float = 1.0,
                 warmup: int = 10, min_runs: int = 10, core: int | None = None,
                 clock: str = "wall") -> Any:
    """Timing (lotto.latency.measure.Timing) of `program.run(x)`, one call at a time, on the
    program's pool (`program.threads`); torch's own pool is pinned to 1 meanwhile.

    clock `thread` (CPU time of this thread) is exact at 1 thread: with a pool of one, XNNPACK
    runs every kernel inline in the calling thread.
    """
    from lotto.latency.measure import _stats, clock_fn, pinned_threads

    threads = program.threads
    now = clock_fn(clock, torch.device("cpu"), threads)
    with pinned_threads(1, core):
        for _ in range(warmup):
            program.run(x)
        times: list[float] = []
        begin = time.perf_counter()
        while time.perf_counter() - begin < min_run_time or len(times) < min_runs:
            t0 = now()
            program.run(x)
            times.append(now() - t0)
    return _stats(times, 1, threads, "xnnpack")


def max_abs_diff(exported: Exported, module: nn.Module, x: torch.Tensor,
                 threads: int = 1) -> float:
    """Largest |ExecuTorch output - PyTorch eager output| on `x` (fp32 numerical parity)."""
    out = Program(exported, threads).run(x)
    with torch.inference_mode():
        ref = module.eval()(x)
    return float((out.float() - ref.float()).abs().max())


# ---------------------------------------------------------------------------------------------
# Timing in a child process
#
# With the pool sized before loading, no crash was seen in 100+ processes. The timing still runs
# in a child process (`python -m lotto.latency.xnnpack`, a fresh interpreter: no forked pool,
# no torch OpenMP pool of the parent) with a timeout, retried once and reported, so that a fault
# of the native runtime (a crash, a hang in `execute`) can never take lotto down or hang it.

CHILD_TIMEOUT_S = 600.0


@dataclass
class ChildResult:
    """What one timing child did: `timing` (a dict) on success, else why it failed."""

    timing: dict[str, Any] | None
    failure: str | None
    seconds: float


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def run_child(cmd: list[str], timeout: float) -> ChildResult:
    """Run one timing child; its last stdout line is a JSON timing. Never raises for a crash,
    a hang (killed at `timeout`) or garbage output: that is the `failure`."""
    start = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return ChildResult(None, f"timed out after {timeout:g} s (killed)",
                           time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if p.returncode != 0:
        err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        last = f": {err[-1][:200]}" if err else ""
        return ChildResult(None, describe_exit(p.returncode) + last, seconds)
    try:
        out = json.loads(p.stdout.strip().splitlines()[-1])
        return ChildResult(dict(out), None, seconds)
    except (IndexError, ValueError, TypeError):
        return ChildResult(None, "printed no timing", seconds)


def run_with_retry(cmd: list[str], timeout: float, what: str,
                   attempts: int = 2) -> tuple[dict[str, Any], list[str]]:
    """(timing dict, failures of the attempts before it); LottoError when all `attempts` fail."""
    failures: list[str] = []
    for _ in range(attempts):
        result = run_child(cmd, timeout)
        if result.timing is not None:
            return result.timing, failures
        failures.append(str(result.failure))
    raise LottoError(f"the ExecuTorch runtime failed {attempts} times timing {what} "
                     f"({'; '.join(failures)}); nothing was stored")


def child_command(pte: Path, input_shape: tuple[int, ...], *, threads: int, min_run_time: float,
                  warmup: int, core: int | None, clock: str) -> list[str]:
    cmd = [sys.executable, "-m", "lotto.latency.xnnpack", str(pte),
           "--shape", ",".join(map(str, input_shape)), "--threads", str(threads),
           "--min-run-time", repr(float(min_run_time)), "--warmup", str(warmup),
           "--clock", clock]
    if core is not None:
        cmd += ["--core", str(core)]
    return cmd


def _child_main(argv: list[str] | None = None) -> int:
    """Entry of the timing child: size the pool, load, time, print the Timing as JSON."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lotto.latency.xnnpack")
    ap.add_argument("pte", type=Path)
    ap.add_argument("--shape", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-run-time", type=float, default=1.0)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--clock", default="wall")
    ap.add_argument("--core", type=int, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)  # torch's pool stays out of the way of the runtime's
    shape = tuple(int(v) for v in a.shape.split(","))
    exported = Exported(a.pte.read_bytes(), "?", shape, 0, {}, 0.0, "?", a.pte)
    program = Program(exported, a.threads)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    timing = time_program(program, x, min_run_time=a.min_run_time, warmup=a.warmup,
                          core=a.core, clock=a.clock)
    print(json.dumps({**timing.summary(), "times_ms": list(timing.times_ms)}))
    return 0


def fingerprint(threads: int = 1) -> dict[str, Any]:
    from lotto.latency.measure import fingerprint as host

    info = host("cpu", threads)
    info.update(device="xnnpack", runtime=f"executorch {version()} + xnnpack")
    return info


def measure(module: nn.Module, input_shape: tuple[int, ...], *, threads: int = 1,
            min_run_time: float = 1.0, warmup: int = 10, dtype: str = "float32",
            core: int | None = None, clock: str = "wall", cache_dir: Path | None = None,
            key: str | None = None,
            calibration: Callable[[], list[torch.Tensor]] | None = None,
            timeout: float = CHILD_TIMEOUT_S) -> tuple[Any, dict]:
    """Export (or reuse the cached program), then load and time it in a child process (see
    above); returns (Timing, detail). A first failed child is retried once and reported in the
    detail (`runtime_failures`, and a warning); two failures are a LottoError."""
    from lotto.latency.measure import Timing, clock_fn, is_noisy, noisy_warning

    if threads < 1:
        raise LottoError(f"--threads must be >= 1, got {threads}")
    clock_fn(clock, torch.device("cpu"), threads)  # a bad clock is a user error, not a crash
    if clock == "paired":  # its reference network runs in torch, not in the runtime's process
        raise LottoError("clock 'paired' measures the cpu device only; use wall or thread")
    exported = exported_for(module, input_shape, dtype=dtype, calibration=calibration,
                            cache_dir=cache_dir, key=key)
    with tempfile.TemporaryDirectory(prefix="lotto_xnnpack_") as tmp:
        pte = exported.path
        if pte is None:
            pte = Path(tmp) / "program.pte"
            pte.write_bytes(exported.buffer)
        cmd = child_command(pte, tuple(input_shape), threads=threads,
                            min_run_time=min_run_time, warmup=warmup, core=core, clock=clock)
        what = f"a {'x'.join(map(str, input_shape))} program"
        out, failures = run_with_retry(cmd, timeout, what)
    times = tuple(float(t) for t in out.pop("times_ms"))
    out.pop("iqr_rel", None)
    timing = Timing(**out, times_ms=times)
    info = {**exported.summary(), "dtype": dtype, "clock": clock, "batch": int(input_shape[0]),
            "input_shape": list(input_shape), "bn_folded": True, "channels_last": None,
            "calibration": ("n/a" if dtype != "int8" else
                            "configured data" if calibration is not None else "normal noise"),
            "runtime_failures": failures, "noisy": is_noisy(timing.iqr_rel)}
    warnings = []
    if failures:
        warnings.append(f"the ExecuTorch runtime failed once ({failures[0]}); the timing is "
                        "from a second, clean process")
    if info["noisy"]:  # not re-measured here: each try is a new process (seconds of start-up)
        warnings.append(noisy_warning("xnnpack timing", timing.iqr_rel, 1))
    if warnings:
        info["warnings"] = warnings
    return timing, info


if __name__ == "__main__":
    sys.exit(_child_main())
