"""`--device xnnpack`: export to ExecuTorch + XNNPACK, numerical parity, timing, the CLI, the ONNX
Runtime check, and bad input (an op that cannot export, the extra not installed).

Export costs 10-40 s per network on this busy 2-core machine, so one tiny spec (stem, one SE
block, head) is exported once and shared; the CLI test finds it in its cache.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from lotto.arch import preset
from lotto.arch.build import build_network
from lotto.cli import app
from lotto.errors import LottoError
from lotto.latency import xnnpack

needs_et = pytest.mark.skipif(not xnnpack.available(), reason="ExecuTorch is not installed "
                              "(pip install -e '.[device]')")
FAST = ["measure.min_run_time=0.05", "measure.warmup=2"]


def tiny_spec():
    base = preset("mobilenet_v3_small", 0.5, 32)
    return base.replace(blocks=base.blocks[:1], name="tiny_v3").validate()


def order_one(module: nn.Module, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """`module` (eval) with outputs of order 1, so that parity checks mean something.

    Freshly initialised, BN running statistics are mean 0 / var 1 while the activations they
    see are not: a random MnasNet-A1 outputs at most ~2e-10, and any program, one returning
    zeros included, would match it within 1e-6. So: BN statistics from a few random batches
    (cumulative average), then the classifier scaled to a largest |output| of 2.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    module.train()
    with torch.no_grad():
        for _ in range(4):
            module(torch.randn((8, *shape[1:]), generator=gen))
    module.eval()
    last = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    with torch.no_grad():
        peak = float(module(torch.randn(shape, generator=gen)).abs().max())
        last.weight.mul_(2.0 / peak)
        if last.bias is not None:
            last.bias.mul_(2.0 / peak)
    return module


def assert_parity(out: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4) -> None:
    """fp32 parity on outputs of order 1: a zero (or constant) output cannot pass."""
    assert out.shape == ref.shape
    assert float(ref.abs().max()) > 0.5 and float(ref.std()) > 0.05, "outputs are not O(1)"
    assert float((out - ref).abs().max()) <= rtol * float(ref.abs().max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    spec = tiny_spec()
    shape = (1, 3, 32, 32)
    module = order_one(build_network(spec), shape)
    cache = tmp_path_factory.mktemp("xnnpack_cache")
    key = xnnpack.cache_key(spec.to_dict(), shape, "float32")
    ex = xnnpack.exported_for(module, shape, cache_dir=cache, key=key)
    return {"spec": spec, "module": module, "exported": ex, "cache": cache, "shape": shape}


@needs_et
def test_parity_delegation_and_timing(exported: dict):
    ex, module = exported["exported"], exported["module"]
    assert ex.delegated >= 1 and ex.outside == {}  # everything runs in XNNPACK
    x = torch.randn(exported["shape"], generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = module(x)
    out = xnnpack.Program(ex).run(x)
    assert_parity(out, ref)
    with pytest.raises(AssertionError):
        assert_parity(torch.zeros_like(ref), ref)  # a program returning zeros fails
    assert xnnpack.max_abs_diff(ex, module, x) <= 1e-4 * float(ref.abs().max())
    timing = xnnpack.time_program(xnnpack.Program(ex), x, min_run_time=0.05, warmup=2)
    assert timing.n >= 10 and 0 < timing.p25_ms <= timing.median_ms <= timing.p75_ms
    from executorch.extension.pybindings import portable_lib

    assert portable_lib._threadpool_get_thread_count() == 1  # pinned, not torch's pool


@needs_et
def test_cli_xnnpack_measures_from_the_cached_program(exported: dict, runs_dir: Path,
                                                      tmp_path: Path):
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(exported["spec"].to_dict()))
    shutil.copytree(exported["cache"], runs_dir / "bench" / "xnnpack")
    result = CliRunner().invoke(app, ["bench", "--device", "xnnpack", "--arch", str(spec_file),
                                      "--json", "--runs-dir", str(runs_dir), *FAST])
    assert result.exit_code == 0, result.output
    s = json.loads(result.output.strip().splitlines()[-1])
    assert s["device"] == "xnnpack" and s["source"] == "measured" and s["latency_ms"] > 0
    assert s["detail"]["cached"] is True  # the program exported by the fixture
    assert s["detail"]["runtime"].startswith("executorch 1.") and s["detail"]["n"] >= 10
    assert s["fingerprint"]["device"] == "xnnpack" and s["fingerprint"]["threads"] == 1
    assert "source=measured(xnnpack" in s["provenance"]
    run = next(p for p in (runs_dir / "bench").iterdir() if p.name != "xnnpack")
    metrics = (run / "metrics.csv").read_text()
    assert "xnnpack,measured" in metrics


@needs_et
def test_op_that_cannot_export_is_named(runs_dir: Path):
    class Det(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.det(x[0, :2, :2, :2])

    with pytest.raises(LottoError, match=r"op aten\._linalg_det"):
        xnnpack.export_program(Det(), (1, 3, 8, 8))


def test_missing_extra_is_one_line_exit_2(runs_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(xnnpack, "available", lambda: False)
    for device in ("xnnpack", "adb"):
        result = CliRunner().invoke(app, ["bench", "--device", device, "--model",
                                          "mobilenet_v3_small", "--runs-dir", str(runs_dir)])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "pip install" in lines[0] and "executorch" in lines[0]
    assert not runs_dir.exists()
    result = CliRunner().invoke(app, ["bench", "--device", "cpu", "--runs-dir", str(runs_dir),
                                      "dtype=int8"])
    assert result.exit_code == 2  # int8 is for the mobile runtimes only


@needs_et
def test_int8_post_training_quantisation():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    gen = torch.Generator().manual_seed(2)
    calibration = [torch.randn(1, 3, 16, 16, generator=gen) for _ in range(8)]
    ex = xnnpack.export_program(module, (1, 3, 16, 16), dtype="int8", calibration=calibration)
    assert ex.dtype == "int8" and ex.delegated >= 1
    x = calibration[0]
    with torch.inference_mode():
        ref = module(x)
    out = xnnpack.Program(ex).run(x)
    err = float((out - ref).abs().max() / ref.abs().max())
    assert 0 < err < 0.1  # quantised (not bit-exact), yet close to fp32


@pytest.mark.skipif(not __import__("lotto.latency.onnx_check", fromlist=["x"]).available(),
                    reason="onnx / onnxruntime not installed (pip install -e '.[onnx,device]')")
def test_onnx_runtime_parity():
    from lotto.latency.onnx_check import onnx_parity

    shape = (1, 3, 32, 32)
    module = order_one(build_network(tiny_spec()), shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))  # onnx_parity's input
    with torch.inference_mode():
        ref = module(x)
    result = onnx_parity(module, shape)
    assert float(ref.abs().max()) > 0.5 and float(ref.std()) > 0.05  # outputs of order 1
    assert result["shape"] == [1, 1000] and result["max_abs_diff"] <= 1e-4 * float(
        ref.abs().max()) and result["max_rel_diff"] < 1e-4
    assert result["onnxruntime"].count(".") >= 1


# ---------------------------------------------------------------------------------------------
# The thread pool (issue 16: one process in four crashed) and the timing child


@needs_et
def test_pool_is_sized_before_the_program_loads(exported: dict,
                                                 monkeypatch: pytest.MonkeyPatch):
    """The XNNPACK delegate keeps the pool it sees at load time; resizing afterwards frees that
    pool under it (the crash). So: resize first, then load, and no resize while one is loaded."""
    import gc

    from executorch.extension.pybindings import portable_lib as pl
    from executorch.runtime import Runtime

    gc.collect()  # Programs of earlier tests
    xnnpack.set_runtime_threads(2)  # a pool of another size than the one asked for below
    events: list[str] = []
    reset, load = pl._unsafe_reset_threadpool, Runtime.load_program
    monkeypatch.setattr(pl, "_unsafe_reset_threadpool",
                        lambda n: (events.append(f"resize {n}"), reset(n))[1])
    monkeypatch.setattr(Runtime, "load_program",
                        lambda self, *a, **k: (events.append("load"), load(self, *a, **k))[1])
    program = xnnpack.Program(exported["exported"], 1)
    assert events == ["resize 1", "load"]
    assert pl._threadpool_get_thread_count() == 1
    with pytest.raises(LottoError, match="loaded program uses it"):
        xnnpack.set_runtime_threads(2)  # would free the pool under the loaded program
    assert pl._threadpool_get_thread_count() == 1
    x = torch.randn(exported["shape"])
    assert program.run(x).shape == (1, 1000)
    del program
    gc.collect()
    xnnpack.set_runtime_threads(2)  # nothing loaded any more: allowed
    xnnpack.set_runtime_threads(1)


CRASH = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
TIMING = ('import json; print(json.dumps({"median_ms": 1.0, "p25_ms": 1.0, "p75_ms": 1.0, '
          '"mean_ms": 1.0, "std_ms": 0.0, "n": 1, "number_per_run": 1, "threads": 1, '
          '"device": "xnnpack", "times_ms": [1.0]}))')


def test_a_crashing_or_hanging_child_is_retried_once_then_one_line(tmp_path: Path):
    import sys

    # a real SIGSEGV in the first child only: retried, reported, the second one's timing kept
    marker = tmp_path / "crashed_once"
    once = (f"import os, pathlib, signal\np = pathlib.Path({str(marker)!r})\n"
            "if not p.exists():\n    p.touch(); os.kill(os.getpid(), signal.SIGSEGV)\n"
            + TIMING)
    timing, failures = xnnpack.run_with_retry([sys.executable, "-c", once], 60, "x")
    assert timing["median_ms"] == 1.0 and len(failures) == 1 and "SIGSEGV" in failures[0]
    # crashing every time: a LottoError naming both failures, not a crash of lotto
    with pytest.raises(LottoError, match=r"failed 2 times .*SIGSEGV.*SIGSEGV"):
        xnnpack.run_with_retry([sys.executable, "-c", CRASH], 60, "x")
    # a hang (as in Method.execute on CI): killed at the timeout, twice, then one line
    with pytest.raises(LottoError, match="timed out after 2 s"):
        xnnpack.run_with_retry([sys.executable, "-c", "import time; time.sleep(60)"], 2, "x")
    aborted = xnnpack.run_child([sys.executable, "-c", "import os; os.abort()"], 60)
    assert aborted.timing is None and "SIGABRT" in str(aborted.failure)


MNASNET_SETTINGS = [(r, w) for r in (96, 128, 160, 192, 224) for w in (0.35, 0.5, 0.75, 1.0, 1.4)]


@needs_et
def test_25_mnasnet_settings_each_in_its_own_process_without_a_crash(tmp_path: Path):
    """Issue 16's reproduction (6 of 25 processes died), kept fast: MnasNet-A1 at each of the 25
    resolution x width settings, cut to stem + first block + head (export is the slow part),
    each timed in its own process. Zero crashes: no child failed, none needed its retry."""
    from concurrent.futures import ThreadPoolExecutor

    modules = {}
    for r, w in MNASNET_SETTINGS:  # torch.export is not thread-safe: export here, in turn
        base = preset("mnasnet_a1", w, r)
        torch.manual_seed(0)
        modules[r, w] = build_network(base.replace(blocks=base.blocks[:1]).validate()).eval()
        xnnpack.exported_for(modules[r, w], (1, 3, r, r), cache_dir=tmp_path, key=f"a1_{r}_{w}")

    def one(setting: tuple[int, float]) -> tuple[tuple[int, float], object, dict]:
        r, w = setting  # the cached program, timed in a child process of its own
        timing, info = xnnpack.measure(modules[r, w], (1, 3, r, r), min_run_time=0.01,
                                       warmup=1, cache_dir=tmp_path, key=f"a1_{r}_{w}")
        return setting, timing, info

    with ThreadPoolExecutor(2) as pool:  # two child processes at a time on two cores
        results = list(pool.map(one, MNASNET_SETTINGS))
    assert [s for s, _, _ in results] == MNASNET_SETTINGS
    crashed = {s: info["runtime_failures"] for s, _, info in results if info["runtime_failures"]}
    assert crashed == {}
    for _, timing, info in results:
        assert timing.n >= 10 and timing.median_ms > 0 and info["delegated_calls"] >= 1
