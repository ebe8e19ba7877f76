"""Host measurement: preparation (BN folding, NHWC), thread pinning, statistics, per-layer hooks.

No timing values are asserted (this machine is shared): only structure and invariants.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lotto.latency.measure as measure_mod
from lotto.arch import preset
from lotto.arch.build import build_network
from lotto.errors import LottoError
from lotto.latency import predict
from lotto.latency.measure import (
    count_bn,
    fingerprint,
    fold_bn,
    pinned_threads,
    prepare,
    profile_layers,
    time_callable,
)


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)


@pytest.fixture(scope="module")
def small():
    spec = preset("mobilenet_v3_small", resolution=64)
    model = build_network(spec).eval()
    _randomise_bn(model)
    return spec, model


def test_fold_bn_keeps_outputs_and_names(small):
    _, model = small
    folded, n = fold_bn(model)
    assert n == count_bn(model) > 0 and count_bn(folded) == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    assert {n for n, _ in folded.named_modules()} >= {"stem", "blocks.0.dw", "head"}
    assert count_bn(model) == n  # the original is untouched


def test_fold_bn_falls_back_to_fx_outside_sequentials():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x))

    net = Net().eval()
    _randomise_bn(net)
    folded, n = fold_bn(net)
    assert n == 1 and count_bn(folded) == 0
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)


def test_prepare_is_eval_nhwc_and_recorded(small):
    _, model = small
    p = prepare(model, (1, 3, 64, 64), "cpu")
    assert not p.module.training
    assert p.input.is_contiguous(memory_format=torch.channels_last)
    assert p.info["bn_folded"] > 0 and p.info["bn_left"] == 0 and p.info["channels_last"]
    with pytest.raises(LottoError):
        prepare(model, (1, 3, 64, 64), "cpu", dtype="float16")
    with pytest.raises(LottoError):
        prepare(model, (1, 3, 64, 64), "cpu", dtype="int4")


def test_pinned_threads_restores():
    before = torch.get_num_threads()
    with pinned_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(LottoError):
        with pinned_threads(0):
            pass


def test_timing_statistics_are_ordered():
    layer = nn.Linear(32, 32)
    x = torch.randn(4, 32)
    t = time_callable(lambda: layer(x), "cpu", min_run_time=0.02, warmup=2)
    assert t.n >= 1 and t.number_per_run >= 1 and t.threads == 1
    assert 0 < t.p25_ms <= t.median_ms <= t.p75_ms
    assert t.iqr_rel >= 0 and set(t.summary()) >= {"median_ms", "p25_ms", "p75_ms", "n", "iqr_rel"}


def test_measured_latency_has_provenance(small):
    spec, _ = small
    lat = predict(spec, "cpu", min_run_time=0.05, warmup=2)
    d = lat.detail
    assert lat.source == "measured" and lat.device == "cpu" and lat.ms > 0
    assert d["threads"] == 1 and d["n"] >= 1 and d["bn_folded"] > 0
    assert d["fingerprint"]["torch"] == torch.__version__
    assert lat.expected_error == pytest.approx(d["iqr_rel"])
    assert "measured" in lat.provenance()


def test_per_layer_hooks_cover_the_convs(small):
    spec, model = small
    p = prepare(model, (1, 3, 64, 64), "cpu")
    rows = profile_layers(p, "cpu", runs=2, warmup=1)
    conv_macs = sum(r.macs for r in rows)
    assert conv_macs == spec.macs()  # every conv and FC is a hooked leaf
    assert {r.op for r in rows} >= {"conv", "pw", "dw", "fc", "hswish"}
    assert all(r.ms >= 0 for r in rows)


def test_cuda_without_gpu_is_a_user_error(small):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    spec, _ = small
    with pytest.raises(LottoError, match="no CUDA GPU"):
        predict(spec, "cuda")


def test_fingerprint_fields():
    fp = fingerprint("cpu", 1)
    assert fp["device"] == "cpu" and fp["threads"] == 1 and fp["torch"] == torch.__version__
    assert fp["cpu"] and fp["allocator"] in ("steady", "default")


def test_steady_allocator_keeps_large_blocks_in_the_heap(monkeypatch: pytest.MonkeyPatch):
    """glibc's defaults map a large activation fresh and page-fault it in, or not, depending on
    the allocation history; the timing helpers ask for blocks up to 32 MiB from the heap and no
    trimming (measured effect on a host table: docs/benchmarks.md). Checked through a stand-in
    libc: the setting is process-wide and cannot be undone inside the test process."""
    import ctypes

    calls: list[tuple[int, int]] = []

    class FakeLibc:
        def __init__(self, answer: int):
            self.answer = answer

        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return self.answer

    monkeypatch.setattr(measure_mod, "_STEADY", [])
    monkeypatch.setattr(measure_mod.platform, "system", lambda: "Linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc(1))
    assert measure_mod.steady_allocator() is True
    assert calls == [(-3, 32 << 20), (-1, 1 << 30)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    assert measure_mod.steady_allocator() is True and len(calls) == 2  # once per process
    assert fingerprint("cpu", 1)["allocator"] == "steady"
    monkeypatch.setattr(measure_mod, "_STEADY", [])
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc(0))  # a libc that refuses
    assert measure_mod.steady_allocator() is False
    assert fingerprint("cpu", 1)["allocator"] == "default"


def test_thread_clock_is_for_one_cpu_thread(small):
    spec, _ = small
    lat = predict(spec, "cpu", min_run_time=0.02, warmup=1, clock="thread")
    assert lat.detail["clock"] == "thread" and lat.ms > 0
    with pytest.raises(LottoError, match="1 thread"):
        predict(spec, "cpu", threads=2, min_run_time=0.02, clock="thread")
    with pytest.raises(LottoError, match="clock"):
        predict(spec, "cpu", min_run_time=0.02, clock="sundial")


def test_noisy_timing_is_measured_again_then_flagged(monkeypatch: pytest.MonkeyPatch):
    """IQR/median over 10%: measured again (at most twice more, the least noisy kept); still
    noisy: flagged with a warning the user sees (issue 16: 78 ms shown for a 9.3 ms network)."""
    import lotto.latency.measure as m

    def timing(iqr: float) -> m.Timing:
        return m.Timing(10.0, 10.0 - 5 * iqr, 10.0 + 5 * iqr, 10.0, 1.0, 20, 1, 1, "cpu")

    queue: list[float] = []
    monkeypatch.setattr(m, "time_callable", lambda *a, **k: timing(queue.pop(0)))
    net = nn.Sequential(nn.Linear(4, 4))
    queue[:] = [1.2, 0.5, 0.02, 0.9]  # noisy, noisier... clean: stops there
    t, info = m.measure_module(net, (1, 4))
    assert info["measurements"] == 3 and not info["noisy"] and t.iqr_rel == pytest.approx(0.02)
    assert "warnings" not in info and queue == [0.9]
    queue[:] = [1.2, 0.5, 0.9, 0.01]  # noisy three times: the least noisy kept, flagged
    t, info = m.measure_module(net, (1, 4))
    assert info["measurements"] == 3 and info["noisy"] and t.iqr_rel == pytest.approx(0.5)
    assert "noisy measurement (IQR/median 50% after 3 measurements" in info["warnings"][0]
    queue[:] = [0.03]
    assert m.measure_module(net, (1, 4))[1]["measurements"] == 1  # clean: measured once


def test_build_v3_table_marks_a_noisy_host_timing():
    """Where the user reads it: a `!` next to the cpu ms in build-v3's table, and a warning."""
    from types import SimpleNamespace

    import pandas as pd

    from lotto.cli import build_v3 as cli
    from lotto.cli.app import console, err_console

    frame = pd.DataFrame({"step": [0, 1], "change": ["seed", "se"], "params": [10, 12],
                          "madds": [5e7, 6e7], "latency_ms_host": [78.0, 9.3],
                          "host_device": "cpu", "host_source": "measured",
                          "host_error": [1.22, 0.02]})
    result = SimpleNamespace(metrics=frame, run=SimpleNamespace(path="runs/x"), summary={
        "variant": "v", "seed_network": "a", "final_network": "b", "equals_published": True,
        "published": "b"})
    with console.capture() as out, err_console.capture() as err:
        cli.show(result)
    table = out.get()
    assert "78.00 !" in table and "9.30 !" not in table and "9.30" in table
    assert "step 0 is noisy" in err.get()
