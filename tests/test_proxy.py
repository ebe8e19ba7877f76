"""`lotto.proxy`: the proxy task search and netadapt both train on, in process (`train_spec`)
and as a task (`Job` + `run_job`), and the commands' wrappers around it."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest
import torch

from lotto.arch import load_spec
from lotto.arch.build import build_network
from lotto.config import load_config
from lotto.errors import LottoError
from lotto.proxy import Job, proxy_spec, run_job, train_spec
from lotto.tasks import shared_data
from lotto.train import evaluate as evaluate_model
from lotto.train import resolve_device

SPEC = """\
name: tiny
resolution: 64
stem: {channels: 16, kernel: 3, stride: 2, act: hswish}
blocks: [ir_k3_s1_e32_c16_re, ir_k3_s2_e48_c24_se0.25_re]
head: {conv: 64, hidden: 0, act: hswish, dropout: 0.0}
"""


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def setup(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC)
    cfg = load_config("search", None, ["data.name=digits", "data.val_size=200",
                                       "train.iterations=6it", "train.warmup=1it",
                                       "train.batch_size=32"])
    return load_spec(path), cfg


def job(spec, cfg, **kw):
    return Job(spec, cfg.data, cfg.train, 3, "cpu", bn_momentum=0.1, min_output=2, **kw)


def test_a_job_from_scratch_is_train_spec_in_a_task(setup):
    spec, cfg = setup
    out = run_job(job(spec, cfg))
    data = shared_data(cfg.data, resolve_device("cpu"))
    ref = train_spec(spec, data, cfg.train, seed=3, device=resolve_device("cpu"),
                     bn_momentum=0.1, min_output=2)
    assert (out.val_accuracy, out.val_loss, out.iterations) == (
        ref.val_accuracy, ref.val_loss, ref.iterations) == (out.val_accuracy, out.val_loss, 6)
    assert out.state == {} and out.test_accuracy is None
    assert out.trained == proxy_spec(spec, data, 0.1, 2) == ref.trained
    # picklable for a worker, and the same numbers there
    again = run_job(pickle.loads(pickle.dumps(job(spec, cfg))))
    assert (again.val_accuracy, again.val_loss) == (out.val_accuracy, out.val_loss)


def test_a_job_from_weights_keeps_them_and_reads_the_test_split(setup):
    spec, cfg = setup
    start = run_job(job(spec, cfg, keep_state=True)).state
    out = run_job(job(spec, cfg, iterations=4, state=start, keep_state=True, test=True))
    assert out.iterations == 4 and out.state.keys() == start.keys()
    assert any(not torch.equal(out.state[k], start[k]) for k in start)  # it trained from them
    data = shared_data(cfg.data, resolve_device("cpu"))
    model = build_network(out.trained)
    model.load_state_dict(out.state)
    assert out.test_accuracy == evaluate_model(model, data.test_x, data.test_y)[1]
    assert (out.val_loss, out.val_accuracy) == evaluate_model(model, data.val_x, data.val_y)
    # 0 iterations: the given weights, evaluated only
    same = run_job(job(spec, cfg, iterations=0, state=out.state, keep_state=True, test=True))
    assert (same.val_accuracy, same.val_loss, same.test_accuracy, same.iterations) == (
        out.val_accuracy, out.val_loss, out.test_accuracy, 0)
    with pytest.raises(ValueError, match="state=None"):
        run_job(job(spec, cfg, iterations=0))


def test_faults_and_divergence_per_command(setup, monkeypatch):
    """The injected fault fires in the task; a diverged loss fails one search sample (a
    RuntimeError: a failed task) but stops a netadapt run (a LottoError)."""
    from lotto.experiments import netadapt
    from lotto.search.evaluate import evaluate, sample_job

    spec, cfg = setup
    with pytest.raises(RuntimeError, match="injected fault"):
        run_job(job(spec, cfg, fault="raise"))
    nan = load_config("search", None, ["data.name=digits", "data.val_size=200",
                                       "train.iterations=6it", "train.warmup=1it",
                                       "train.batch_size=32", "train.lr=1e30"])
    sample = sample_job(spec, nan.data, nan.train, nan.proxy, 0, "cpu", "s")
    with pytest.raises(RuntimeError, match="NaN/inf loss"):
        evaluate(sample)
    ok = evaluate(sample_job(spec, cfg.data, cfg.train, cfg.proxy, 0, "cpu", "s"))
    assert set(ok) == {"val_accuracy", "val_loss", "train_seconds", "proxy_params",
                       "proxy_macs"}
    unit = netadapt.Job(spec, nan.data, nan.train, 0, "cpu", 6, kind="proposal", step=1,
                        proposal="block0.expand")
    with pytest.raises(LottoError, match="NaN/inf loss in proposal block0.expand .step 1."):
        netadapt.train_job(unit)
    assert isinstance(replace(unit, step=2), netadapt.Job)
