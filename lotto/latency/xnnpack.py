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
3. Run with `executorch.runtime` (the portable runtime's Python bindings). Its thread pool is not
   torch's: it is pinned to `threads` (default 1) for the timing and restored afterwards.
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
import time
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


@contextlib.contextmanager
def runtime_threads(threads: int) -> Iterator[None]:
    """Pin ExecuTorch's thread pool (not torch's) to `threads` for the block.

    The pool is resized only when its size differs and is not restored afterwards: resizing a
    pool that has run work and is then resized again aborts the process in pthreadpool
    (observed with executorch 1.5.1), so lotto leaves it at the last size asked for.
    """
    from executorch.extension.pybindings import portable_lib as pl

    if threads < 1:
        raise LottoError(f"--threads must be >= 1, got {threads}")
    with quiet_stderr():
        if int(pl._threadpool_get_thread_count()) != threads:
            pl._unsafe_reset_threadpool(threads)
    yield


class Program:
    """A loaded ExecuTorch program; `run(x)` returns the first output as a tensor."""

    def __init__(self, exported: Exported):
        require()
        from executorch.runtime import Runtime

        try:
            with quiet_stderr():
                runtime = Runtime.get()
                program = runtime.load_program(exported.buffer)
                self.method = program.load_method("forward")
        except Exception as e:
            raise _fail("runtime (loading the program)", e,
                        ": the runtime has no kernel for it") from None
        self._ran = False

    def run(self, x: torch.Tensor) -> torch.Tensor:
        if not self._ran:  # the first call sets up XNNPACK's thread pool, which logs to fd 2
            self._ran = True
            with quiet_stderr():
                return self.method.execute([x])[0]
        return self.method.execute([x])[0]


def time_program(program: Program, x: torch.Tensor, *, threads: int = 1,
                 min_run_time: float = 1.0, warmup: int = 10, min_runs: int = 10,
                 core: int | None = None, clock: str = "wall") -> Any:
    """Timing (lotto.latency.measure.Timing) of `program.run(x)`, one call at a time.

    clock `thread` (CPU time of this thread) is exact at 1 thread: with a pool of one, XNNPACK
    runs every kernel inline in the calling thread.
    """
    from lotto.latency.measure import _stats, clock_fn, pinned_threads

    now = clock_fn(clock, torch.device("cpu"), threads)
    with pinned_threads(1, core), runtime_threads(threads):
        for _ in range(warmup):
            program.run(x)
        times: list[float] = []
        begin = time.perf_counter()
        while time.perf_counter() - begin < min_run_time or len(times) < min_runs:
            t0 = now()
            program.run(x)
            times.append(now() - t0)
    return _stats(times, 1, threads, "xnnpack")


def max_abs_diff(exported: Exported, module: nn.Module, x: torch.Tensor) -> float:
    """Largest |ExecuTorch output - PyTorch eager output| on `x` (fp32 numerical parity)."""
    program = Program(exported)
    with runtime_threads(1):
        out = program.run(x)
    with torch.inference_mode():
        ref = module.eval()(x)
    return float((out.float() - ref.float()).abs().max())


def fingerprint(threads: int = 1) -> dict[str, Any]:
    from lotto.latency.measure import fingerprint as host

    info = host("cpu", threads)
    info.update(device="xnnpack", runtime=f"executorch {version()} + xnnpack")
    return info


def measure(module: nn.Module, input_shape: tuple[int, ...], *, threads: int = 1,
            min_run_time: float = 1.0, warmup: int = 10, dtype: str = "float32",
            core: int | None = None, clock: str = "wall", cache_dir: Path | None = None,
            key: str | None = None,
            calibration: Callable[[], list[torch.Tensor]] | None = None) -> tuple[Any, dict]:
    """Export (or reuse the cached program), load, time; returns (Timing, detail)."""
    exported = exported_for(module, input_shape, dtype=dtype, calibration=calibration,
                            cache_dir=cache_dir, key=key)
    program = Program(exported)
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    timing = time_program(program, x, threads=threads, min_run_time=min_run_time,
                          warmup=warmup, core=core, clock=clock)
    info = {**exported.summary(), "dtype": dtype, "clock": clock, "batch": int(input_shape[0]),
            "input_shape": list(input_shape), "bn_folded": True, "channels_last": None,
            "calibration": ("n/a" if dtype != "int8" else
                            "configured data" if calibration is not None else "normal noise")}
    return timing, info
