"""The execution layer: same numbers on every backend, failures as results, never a hang."""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from omegaconf import OmegaConf

from lotto.errors import LottoError
from lotto.parallel import (
    ParallelConfig,
    Runner,
    TaskResult,
    _cores,
    _Deadlines,
    parallel_config,
    run_tasks,
)

if TYPE_CHECKING:
    from rich.progress import Progress

# Ray is imported only by the tests that use it: every spawned worker imports this module
HAVE_RAY = importlib.util.find_spec("ray") is not None


_REMEMBERED: list[object] = []  # in a worker: what its warm-up jobs left


def work(task: tuple) -> object:
    """Every test task: ("train", seed), ("ok", x), ("raise", x), ("kill", _), ("hang", s)..."""
    kind, arg = task
    if kind == "train":
        return train(arg)
    if kind == "ok":
        return arg, torch.get_num_threads(), os.environ.get("CUDA_VISIBLE_DEVICES")
    if kind == "raise":
        raise ValueError(f"bad task {arg}")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        time.sleep(arg)
    if kind == "lotto":
        raise LottoError(f"no data at {arg}")
    if kind == "remember":  # a warm-up job: what later tasks in this worker find
        _REMEMBERED.append(arg)
        return arg
    if kind == "recall":
        return list(_REMEMBERED), os.getpid()
    if kind == "stamp":  # (name, seconds): when it started, then busy for that long
        started = time.time()
        time.sleep(arg[1])
        return arg[0], started
    return None


def train(seed: int) -> dict:
    """A few SGD steps of a small MLP on random data, all seeded by `seed`."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {"loss": loss.item(), "weights": weights}


def assert_same_training(a: list[TaskResult], b: list[TaskResult]) -> None:
    assert [r.status for r in a] == [r.status for r in b]
    for ra, rb in zip(a, b):
        assert ra.value["loss"] == rb.value["loss"]
        assert torch.equal(ra.value["weights"], rb.value["weights"])


def test_serial_keeps_order_reports_failures_and_progress(quiet: Progress) -> None:
    seen: list[int] = []
    tasks = [("ok", 0), ("raise", 1), ("ok", 2)]
    results = run_tasks(work, tasks, progress=quiet, on_result=lambda i, r: seen.append(i))
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert [r.value[0] for r in results if r.ok] == [0, 2]
    assert results[1].error == "ValueError: bad task 1"
    assert "bad task 1" in results[1].traceback
    assert seen == [0, 1, 2]
    assert quiet.tasks[0].total == 3 and quiet.tasks[0].completed == 3


def test_lotto_error_in_a_task_stops_the_run() -> None:
    # a user mistake (missing data) would fail every task alike: one clear line instead
    with pytest.raises(LottoError, match="no data at /nowhere"):
        run_tasks(work, [("lotto", "/nowhere"), ("ok", 1)])


@pytest.fixture(scope="module")
def pool() -> Iterator[Runner]:
    """Two process workers shared by the tests below (each new worker imports torch: seconds)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CUDA_VISIBLE_DEVICES", "7,8")  # pretend to be a 2-GPU host
        runner = Runner("process", workers=2)  # GPUs are read here
    with runner:
        yield runner


def pids(runner: Runner) -> list[int]:
    return [w.proc.pid for w in runner._slots]


def test_same_numbers_whatever_backend_and_worker_count(pool: Runner) -> None:
    tasks = [("train", seed) for seed in (0, 1, 2)]
    serial = run_tasks(work, tasks)
    assert not torch.equal(serial[0].value["weights"], serial[1].value["weights"])  # seeds matter
    assert_same_training(serial, run_tasks(work, tasks, backend="process", workers=1))
    assert_same_training(serial, pool.run(work, tasks))
    before = pids(pool)
    assert_same_training(serial, pool.run(work, tasks[::-1])[::-1])
    assert pids(pool) == before  # a Runner keeps its workers from one batch to the next


def test_tasks_added_by_on_result_run_first_with_several_workers_last_with_one(
    pool: Runner,
) -> None:
    """A result can add tasks (a lottery's next round): with one worker they queue behind the
    waiting tasks (rounds finish in order); with several they go first (the chain keeps going
    while the waiting tasks fill the other workers)."""
    tasks = [("stamp", ("chain0", 0.4))] + [("stamp", (f"side{i}", 0.4)) for i in range(3)]

    def run(runner: Runner) -> tuple[list[str], dict[str, float]]:
        added = [("stamp", ("chain1", 0.4))]
        results = runner.run(work, tasks, on_result=lambda i, r: added if i == 0 else None)
        assert all(r.ok for r in results)
        return [r.value[0] for r in results], {r.value[0]: r.value[1] for r in results}

    with Runner("serial") as serial:
        names, started = run(serial)
    assert names == ["chain0", "side0", "side1", "side2", "chain1"]  # the added one: index 4
    assert sorted(started, key=started.get) == names
    names, started = run(pool)
    assert names == ["chain0", "side0", "side1", "side2", "chain1"]
    # two workers: chain0 + side0, then chain1 (added, first) + side1, then side2
    assert started["chain1"] < started["side2"]


def test_warm_up_runs_first_in_every_worker_and_its_result_is_dropped(pool: Runner) -> None:
    pool.warm(work, ("remember", "data"))
    results = pool.run(work, [("recall", i) for i in range(4)])
    assert len(results) == 4 and all(r.ok for r in results)
    assert all(r.value[0][-1] == "data" for r in results)  # a worker ran it before any task
    with Runner("serial") as serial:  # nothing to warm in this process
        serial.warm(work, ("kill", 0))


@pytest.mark.parametrize("warm_up", [("kill", 0), ("raise", 0), ("lotto", "/nowhere")])
def test_a_failing_warm_up_fails_no_task(pool: Runner, warm_up: tuple) -> None:
    """A worker killed in its warm-up is replaced; an error in it is dropped, not raised."""
    pool.warm(work, warm_up)
    seen: list[int] = []
    results = pool.run(work, [("ok", i) for i in range(3)], on_result=lambda i, r: seen.append(i))
    assert [r.status for r in results] == ["ok"] * 3
    assert sorted(seen) == [0, 1, 2]  # no result delivered for a warm-up
    assert [r.value[0] for r in results] == [0, 1, 2]
    assert len(pool._slots) == 2 and all(w.proc.is_alive() for w in pool._slots)


def test_process_faults_become_failed_results(
    pool: Runner, quiet: Progress, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "timeout", 5)  # more than a quick task takes on a loaded machine
    tasks = [("ok", 0), ("raise", 1), ("kill", 2), ("hang", 120), ("ok", lambda: 4), ("ok", 5)]
    seen: list[int] = []
    start = time.monotonic()
    results = pool.run(work, tasks, progress=quiet, on_result=lambda i, r: seen.append(i))
    assert time.monotonic() - start < 60  # the hung task was ended, not waited for
    assert [r.status for r in results] == ["ok", "failed", "failed", "failed", "failed", "ok"]
    assert results[1].error == "ValueError: bad task 1"
    assert results[2].error.startswith("worker died (signal 9, SIGKILL")
    assert results[3].error == "timed out after 5 s (parallel.timeout)"
    assert results[4].error.startswith("task not picklable")
    assert sorted(seen) == list(range(6)) and quiet.tasks[0].completed == 6
    assert results[5].value[0] == 5
    for r in (results[0], results[5]):
        value, threads, gpu = r.value
        assert threads == max(1, _cores() // 2)  # N x threads <= cores
        assert gpu in ("7", "8")  # one GPU per worker, not both
    # the killed and the hung workers were replaced: the pool still has two live workers
    assert len(pool._slots) == 2 and all(w.proc.is_alive() for w in pool._slots)
    assert pool.run(work, [("ok", 6), ("ok", 7)])[1].value[0] == 7


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Python's own SIGINT handler for the test: a shell starts a background job (`make test &`)
    with SIGINT ignored, and Python then leaves it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_reaps_workers_and_keeps_finished_results(pool: Runner, ctrl_c_raises: None
                                                         ) -> None:
    delivered: list[int] = []

    def on_result(index: int, result: TaskResult) -> None:
        delivered.append(index)
        # Ctrl-C a moment later, while the driver waits on the hung task
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pool.run(work, [("hang", 120), ("ok", 1)], on_result=on_result)
    assert time.monotonic() - start < 60  # the hanging worker was killed, not waited for
    assert delivered == [1]
    assert mp.active_children() == []


def test_lotto_error_in_a_worker_stops_the_run(pool: Runner) -> None:
    with pytest.raises(LottoError, match="no data at /nowhere"):
        pool.run(work, [("lotto", "/nowhere")])
    assert mp.active_children() == []  # the workers were stopped, not left behind
    with pytest.raises(TypeError, match="top-level function"):
        run_tasks(lambda t: t, [1], backend="process")


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"backend": "threads"}, "parallel.backend"),
        ({"backend": "process", "workers": 0}, "parallel.workers"),
        ({"backend": "serial", "workers": 2}, "parallel.workers"),
        ({"backend": "process", "threads_per_worker": 0}, "parallel.threads_per_worker"),
        ({"backend": "process", "timeout": -1}, "parallel.timeout"),
        ({"backend": "serial", "timeout": 10}, "parallel.timeout"),
        ({"backend": "ray", "address": 6379}, "parallel.address"),
        ({"batch_replicas": "yes"}, "parallel.batch_replicas"),
        ({"backend": "process", "worker": 2}, "parallel.worker"),
    ],
)
def test_bad_parallel_settings_name_the_key(section: dict, key: str) -> None:
    with pytest.raises(LottoError, match=f"config key {key}\\b"):
        parallel_config(section)
    if key not in ("parallel.batch_replicas", "parallel.worker"):  # not run_tasks arguments
        with pytest.raises(LottoError, match=f"^config key {key}:"):  # checked before starting
            run_tasks(work, [("ok", 0)], **section)


def test_parallel_config_reads_a_section() -> None:
    section = OmegaConf.create({"backend": "process", "workers": 2, "timeout": 30.5})
    cfg = parallel_config(section)
    assert cfg == ParallelConfig(backend="process", workers=2, timeout=30.5)
    assert cfg.run_options()["workers"] == 2 and "batch_replicas" not in cfg.run_options()


def test_ray_missing_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(LottoError, match=r"needs Ray.*pip install -e '\.\[ray\]'"):
        run_tasks(work, [("ok", 0)], backend="ray")


needs_ray = pytest.mark.skipif(
    not HAVE_RAY, reason="Ray is not installed (pip install -e '.[ray]')"
)


@needs_ray
@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("ray://127.0.0.1:1", "Ray address ray://127.0.0.1:1 does not answer"),
        ("127.0.0.1:1", "Ray address 127.0.0.1:1 does not answer"),
        ("auto", "cannot connect to Ray at auto: ConnectionError"),  # no cluster running here
    ],
)
def test_ray_address_that_does_not_answer_fails_fast(address: str, message: str) -> None:
    import ray

    assert not ray.is_initialized()  # or the address would not even be tried
    start = time.monotonic()
    with pytest.raises(LottoError, match=message):
        run_tasks(work, [("ok", 0)], backend="ray", address=address)
    assert time.monotonic() - start < 5


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray instance of one CPU for the tests below (it takes many seconds to start)."""
    import ray

    with pytest.MonkeyPatch.context() as patch:
        # Ray's workers import this module by name: let the local instance find it
        tests = str(Path(__file__).parent)
        patch.setenv("PYTHONPATH", os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
        ray.init(num_cpus=1, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


@needs_ray
def test_ray_local_instance_same_numbers_and_failures(local_ray: None) -> None:
    tasks = [("train", 0), ("train", 1), ("raise", 2), ("kill", 3)]
    results = run_tasks(work, tasks, backend="ray", workers=2)
    assert_same_training(run_tasks(work, tasks[:2]), results[:2])
    assert results[2].status == "failed" and results[2].error == "ValueError: bad task 2"
    assert results[3].status == "failed" and results[3].error.startswith("worker died (")


# --- the driver killed: no worker outlives it ---------------------------------------------------


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> set[int]:
    found, todo = set(), [root]
    while todo:
        parent = todo.pop()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in found:
                if parent_of(int(entry.name)) == parent:
                    found.add(int(entry.name))
                    todo.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that never comes counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def in_task(pid: int) -> bool:
    """A lottery worker is in its task once it has loaded scikit-learn (the `digits` loader):
    an idle worker would exit anyway when the driver's end closes its pipe."""
    try:
        return "sklearn" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_killing_the_driver_ends_its_workers(tmp_path: Path, sig: signal.Signals) -> None:
    """A real `lotto lottery --workers 2`, killed while both workers train (issue 16): no worker
    survives it (SIGKILL: PR_SET_PDEATHSIG or the parent watchdog), and SIGTERM is handled as
    Ctrl-C (exit 143, finished work kept)."""
    args = ["data.name=digits", "train.iterations=1000000it", "train.eval_every=1000000it",
            "lottery.rounds=1", "lottery.controls=[]", "lottery.seeds=2", "device=cpu"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:  # a file, not a pipe: surviving workers would hold a pipe open
        driver = subprocess.Popen(
            [sys.executable, "-m", "lotto", "--threads", "1", "lottery", "--workers", "2",
             "--runs-dir", str(tmp_path / "runs"), *args],
            env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while time.monotonic() < deadline and driver.poll() is None:
            workers = {p for p in descendants(driver.pid) if in_task(p)}
            if len(workers) >= 2:
                break
            time.sleep(0.2)
        assert len(workers) >= 2, log.read_text()[-3000:]
        time.sleep(1)  # both are now training their seed's dense round
        assert all(alive(p) for p in workers)
        os.kill(driver.pid, sig)
        driver.wait(timeout=60)
        end = time.monotonic() + 15
        while any(alive(p) for p in workers) and time.monotonic() < end:
            time.sleep(0.1)
        assert [p for p in workers if alive(p)] == []
    finally:
        driver.kill()
        driver.wait()
        for p in workers:
            if alive(p):
                os.kill(p, signal.SIGKILL)
    err = log.read_text()
    if sig == signal.SIGTERM:
        assert driver.returncode == 143, err[-2000:]
        assert "terminated: finished work is kept" in err
    else:
        assert driver.returncode == -signal.SIGKILL


# --- Ray timeouts count from a task's start ------------------------------------------------------


def test_deadlines_count_from_start_not_submission() -> None:
    clock = _Deadlines(10.0)
    assert clock.wait_s(0.0) is None and clock.expired(1e6) == []  # queued: no deadline yet
    clock.start("a", 100.0)
    clock.start("a", 105.0)  # a repeated start keeps the first
    assert clock.wait_s(104.0) == 6.0 and clock.expired(109.9) == []
    clock.start("b", 108.0)
    assert clock.expired(110.0) == ["a"] and clock.seconds("b", 110.0) == 2.0
    clock.forget("a")
    assert clock.wait_s(110.0) == 8.0 and clock.seconds("a", 110.0) == 0.0
    assert _Deadlines(None).wait_s(0.0) is None


@needs_ray
def test_ray_task_queued_for_a_cpu_does_not_time_out(local_ray: None) -> None:
    """One CPU, two tasks in flight of 3 s each, timeout 4.5 s: the second waits ~3 s in Ray's
    queue, then runs 3 s (6 s after its submission): it must not time out; a task that runs
    past the timeout still does."""
    run_tasks(work, [("ok", 0)], backend="ray")  # a warm worker: start-up is not measured
    tasks = [("hang", 3), ("hang", 3), ("hang", 60)]
    start = time.monotonic()
    results = run_tasks(work, tasks, backend="ray", workers=2, timeout=4.5)
    elapsed = time.monotonic() - start
    assert [r.status for r in results] == ["ok", "ok", "failed"], [r.error for r in results]
    assert results[2].error == "timed out after 4.5 s (parallel.timeout)"
    assert 4.5 <= results[2].seconds < 10 and elapsed < 40
