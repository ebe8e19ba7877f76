"""One way to run many independent trainings: in this process, in local worker processes, or on Ray.

`run_tasks(fn, tasks, backend=...)` calls `fn(task)` for every task and returns one `TaskResult`
per task, in the order given; a `Runner` does the same for many batches with the same workers.
Workers only compute and return values (metrics rows, CPU tensors); the driver process alone
writes run files, through `on_result(index, result)` as each task ends, so resume and atomic
writes keep their meaning and Ctrl-C keeps everything already finished.

A task that raises, whose worker dies (SIGKILL, out of memory, segfault) or that runs past
`timeout` becomes a failed result with its error text; the other tasks still run. A `LottoError`
raised by a task is a user mistake that every task would repeat: it stops the run and re-raises.

Backends:
- `serial`: `fn` runs here, one task after another (today's behaviour).
- `process`: `workers` spawned processes, each with `threads_per_worker` torch threads (default:
  cores // workers) and, on a GPU host, one GPU (CUDA_VISIBLE_DEVICES, by worker slot).
- `ray`: tasks on a Ray cluster (`address`: "auto", "ray://host:10001", "host:6379"; none = a
  local instance), at most `workers` in flight, each asking for `threads_per_worker` CPUs and
  (where the cluster has GPUs) one GPU. Ray is an optional extra, imported only here.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from lotto.config import check
from lotto.errors import LottoError

if TYPE_CHECKING:
    from rich.progress import Progress

BACKENDS = ("serial", "process", "ray")


@dataclass
class TaskResult:
    status: str  # "ok" or "failed"
    value: Any = None
    error: str = ""  # one line, e.g. "ValueError: bad shape" or "worker died (signal 9, SIGKILL)"
    seconds: float = 0.0
    traceback: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class ParallelConfig:
    """The validated `parallel:` section of a command's config."""

    backend: str = "serial"
    workers: int = 1
    threads_per_worker: int | None = None
    timeout: float | None = None
    address: str | None = None
    batch_replicas: bool = False

    def run_options(self) -> dict[str, Any]:
        """Keyword arguments for `run_tasks` (batch_replicas is the caller's business)."""
        return {
            "backend": self.backend,
            "workers": self.workers,
            "threads_per_worker": self.threads_per_worker,
            "timeout": self.timeout,
            "address": self.address,
        }


def parallel_config(section: Mapping[str, Any]) -> ParallelConfig:
    """Validate a `parallel:` config section; a bad value is a LottoError naming its key."""
    defaults = asdict(ParallelConfig())
    for key in section:
        if key not in defaults:
            raise LottoError(f"unknown config key parallel.{key}")
    values = {k: section.get(k, v) for k, v in defaults.items()}
    _check_options(**{k: v for k, v in values.items() if k != "batch_replicas"})
    batch = values["batch_replicas"]
    check(isinstance(batch, bool), "parallel.batch_replicas", f"{batch!r} must be true or false")
    _check_torchrun(values["backend"], values["workers"], batch)
    return ParallelConfig(**values)


def _check_torchrun(backend: str, workers: int, batch_replicas: bool = False) -> None:
    """Under torchrun every rank runs every unit as one data-parallel training: worker processes,
    Ray tasks or batched replicas would instead train each unit in full on every rank."""
    if not _under_torchrun():
        return
    asked = [what for what, on in (
        (f"parallel.workers={workers} (--workers)", workers != 1),
        (f"parallel.backend={backend}", backend != "serial"),
        ("parallel.batch_replicas=true", batch_replicas),
    ) if on]
    if asked:
        raise LottoError(
            f"{asked[0]} cannot run under torchrun, whose processes already train each unit "
            "together (data parallel): use torchrun or parallel workers, not both"
        )


def _check_options(
    backend: Any, workers: Any, threads_per_worker: Any, timeout: Any, address: Any
) -> None:
    def integer(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    choices = ", ".join(BACKENDS)
    check(backend in BACKENDS, "parallel.backend", f"{backend!r} is not one of {choices}")
    check(integer(workers) and workers >= 1, "parallel.workers", f"{workers!r} must be at least 1")
    check(
        threads_per_worker is None or (integer(threads_per_worker) and threads_per_worker >= 1),
        "parallel.threads_per_worker",
        f"{threads_per_worker!r} must be at least 1 (or null for cores // workers)",
    )
    check(
        timeout is None or ((integer(timeout) or isinstance(timeout, float)) and timeout > 0),
        "parallel.timeout",
        f"{timeout!r} must be a positive number of seconds (or null for none)",
    )
    check(address is None or isinstance(address, str), "parallel.address", "must be a string")
    # serial runs tasks in this process: it can neither run two at once nor stop a hung one,
    # and silently ignoring what the user asked for would be worse than saying so
    check(
        backend != "serial" or workers == 1,
        "parallel.workers",
        f"{workers} workers need parallel.backend=process or ray",
    )
    check(
        backend != "serial" or timeout is None,
        "parallel.timeout",
        "needs parallel.backend=process or ray (serial cannot stop a hung task)",
    )


def run_tasks(
    fn: Callable[[Any], Any],
    tasks: Sequence[Any],
    *,
    backend: str = "serial",
    workers: int = 1,
    threads_per_worker: int | None = None,
    timeout: float | None = None,
    address: str | None = None,
    progress: Progress | None = None,
    description: str = "tasks",
    on_result: Callable[[int, TaskResult], None] | None = None,
) -> list[TaskResult]:
    """Run `fn(task)` for every task with workers started for this call alone (see `Runner`)."""
    _check_options(backend, workers, threads_per_worker, timeout, address)
    workers = max(1, min(workers, len(tasks)))  # no idle workers: more threads for each
    with Runner(backend, workers, threads_per_worker, timeout, address) as runner:
        return runner.run(fn, tasks, progress=progress, description=description,
                          on_result=on_result)


_WARMING = -1  # a worker's `index` while it runs the warm-up job (`Runner.warm`)


class Runner:
    """Runs batches of tasks on one backend, keeping its workers from one `run` to the next.

    A command that runs many batches (a lottery round each) starts its worker processes once:
    `with Runner(**parallel_config(cfg.parallel).run_options()) as runner: runner.run(...)`.
    """

    def __init__(
        self,
        backend: str = "serial",
        workers: int = 1,
        threads_per_worker: int | None = None,
        timeout: float | None = None,
        address: str | None = None,
    ):
        _check_options(backend, workers, threads_per_worker, timeout, address)
        _check_torchrun(backend, workers)
        self.backend, self.workers, self.timeout, self.address = backend, workers, timeout, address
        self.threads = threads_per_worker
        self._slots: list[_Worker] = []  # process backend: one worker per slot, started lazily
        if backend == "process":
            self._ctx = mp.get_context("spawn")  # fork would copy the driver's threads and CUDA
            self._gpus = _gpu_ids()
            self._threads = threads_per_worker or max(1, _cores() // workers)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self,
        fn: Callable[[Any], Any],
        tasks: Sequence[Any],
        *,
        progress: Progress | None = None,
        description: str = "tasks",
        on_result: Callable[[int, TaskResult], Sequence[Any] | None] | None = None,
    ) -> list[TaskResult]:
        """Run `fn(task)` for every task; one result per task, in the order of `tasks`.

        `fn` must be a top-level function and the tasks picklable (except for `serial`).
        `on_result(index, result)` runs in this process as each task ends, in finishing order.
        It may return new tasks that the result made possible (a lottery's next round): they
        get the next indices (after every task given or added before). With one worker they run
        after the tasks still waiting (in the order given: a lottery finishes round by round);
        with several they run first, so a chain of dependent tasks keeps going while independent
        ones fill the other workers. `timeout` is seconds per task, counted from when a worker
        takes it (Ray: when the task starts running, not when it is submitted: it may wait in
        Ray's queue for a resource). On Ctrl-C or an error raised here, running tasks are
        abandoned and the workers stopped.
        """
        tasks = list(tasks)
        results: list[TaskResult | None] = [None] * len(tasks)
        todo = deque(range(len(tasks)))
        bar = progress.add_task(description, total=len(tasks)) if progress is not None else None

        def deliver(index: int, result: TaskResult) -> None:
            results[index] = result
            if progress is not None:
                progress.advance(bar)
            new = list(on_result(index, result) or ()) if on_result is not None else []
            if new:
                first = len(tasks)
                tasks.extend(new)
                results.extend([None] * len(new))
                added = range(first, len(tasks))
                if self.workers > 1:
                    todo.extendleft(reversed(added))
                else:
                    todo.extend(added)
                if progress is not None:
                    progress.update(bar, total=len(tasks))

        if self.backend == "serial":
            while todo:
                i = todo.popleft()
                deliver(i, _call(fn, tasks[i]))
        elif self.backend == "process":
            self._run_process(fn, tasks, todo, deliver)
        else:
            _run_ray(fn, tasks, todo, self.workers, self.threads, self.timeout, self.address,
                     deliver)
        return results  # type: ignore[return-value]  (every slot is filled by now)

    def warm(self, fn: Callable[[Any], Any], task: Any) -> None:
        """Start every worker now and give each `fn(task)` as its first job, its result dropped
        (process backend; nothing otherwise): the workers import torch and the task's module and
        load what tasks need (a command passes a task that loads the data) while this process
        does its own set-up, instead of after it. A warm-up that fails is ignored: a real task
        meets the same error and reports it."""
        if self.backend != "process":
            return
        payload = pickle.dumps((fn, task))
        self._start(self.workers)
        for w in self._slots:
            if w.index is None:
                w.conn.send_bytes(payload)  # read once the worker has imported torch
                w.index, w.started = _WARMING, time.monotonic()

    def close(self) -> None:
        """Stop the worker processes: idle ones cleanly (within seconds), others at once."""
        for w in self._slots:
            if w.ready and w.index is None:
                w.conn.close()  # an idle worker exits when its pipe closes
            else:
                w.proc.kill()  # busy (Ctrl-C, an error) or still starting
        deadline = time.monotonic() + 5  # one wait for all: they exit side by side
        for w in self._slots:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            w.kill()
        self._slots = []

    def _start(self, n: int) -> None:
        for k in range(len(self._slots), n):
            self._slots.append(self._worker(k))

    def _worker(self, slot: int) -> _Worker:
        gpu = self._gpus[slot % len(self._gpus)] if self._gpus else None
        return _Worker(self._ctx, slot, self._threads, gpu)

    def _run_process(
        self, fn: Callable, tasks: list[Any], todo: deque[int], deliver: Callable
    ) -> None:
        if not todo:
            return
        try:
            pickle.dumps(fn)
        except Exception as e:
            raise TypeError(f"fn must be a top-level function ({_describe(e)})") from None
        slots, timeout = self._slots, self.timeout

        def replace(w: _Worker, error: str | None) -> None:
            if error is not None and w.index != _WARMING:  # the task it was running fails
                index, w.index = w.index, None
                deliver(index, TaskResult("failed", None, error, time.monotonic() - w.started))
            w.kill()
            slots[w.slot] = self._worker(w.slot)

        try:
            while todo or any(w.index is not None for w in slots):
                # no idle workers: start one only for a task that has none (tasks that
                # `deliver` adds may need more workers later)
                self._start(min(self.workers, len(todo) + sum(w.index is not None for w in slots)))
                for w in slots:
                    while w.ready and w.index is None and todo:
                        i = todo.popleft()
                        try:
                            payload = pickle.dumps((fn, tasks[i]))
                        except Exception as e:
                            error = f"task not picklable: {_describe(e)}"
                            deliver(i, TaskResult("failed", None, error))
                            continue
                        w.conn.send_bytes(payload)
                        w.index, w.started = i, time.monotonic()
                busy = [w for w in slots if w.index is not None]
                wait_s = None
                if timeout is not None and busy:
                    wait_s = max(0.0, min(w.started for w in busy) + timeout - time.monotonic())
                ready = wait([w.conn for w in slots] + [w.proc.sentinel for w in slots], wait_s)
                for w in list(slots):
                    if w.conn in ready or w.proc.sentinel in ready:
                        msg = w.receive() if w.conn.poll() else None
                        if msg is None:  # the pipe is closed: the worker is gone
                            if not w.ready:
                                raise LottoError(f"a lotto worker process exited while starting "
                                                 f"({w.death()}); see its error output above")
                            replace(w, w.death() if w.index is not None else None)
                        elif msg[0] == "ready":
                            w.ready = True
                        elif w.index == _WARMING:  # a warm-up's result or error: dropped
                            w.index = None
                        elif msg[0] == "lotto_error":
                            raise LottoError(msg[2])
                        else:
                            status, value, error, tb, seconds = msg
                            index, w.index = w.index, None
                            deliver(index, TaskResult(status, value, error, seconds, tb))
                    elif w.index is not None and timeout is not None:
                        if time.monotonic() - w.started >= timeout:
                            replace(w, f"timed out after {timeout:g} s (parallel.timeout)")
        except BaseException:
            self.close()  # Ctrl-C or an error: running tasks are abandoned at once
            raise


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _call(fn: Callable[[Any], Any], task: Any) -> TaskResult:
    """Run one task here; an exception (a LottoError excepted) becomes a failed result."""
    return _call_on_every_rank(fn, task) if _under_torchrun() else _call_here(fn, task)


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _call_on_every_rank(fn: Callable[[Any], Any], task: Any) -> TaskResult:
    """`_call` under torchrun, where every rank runs the task (one data-parallel training): the
    ranks agree on its outcome (`lotto.distributed.settle`) before any of them delivers it, so
    that a unit failed on one rank is failed on all (no rank writes its row; a re-run retries it),
    with the failing rank's error, and a LottoError on one rank stops the run on all."""
    from lotto import distributed

    if not distributed.active():  # torchrun, but the process group was never joined
        return _call_here(fn, task)
    distributed.unit_begins()
    start, tb = time.perf_counter(), ""
    value, state, text = None, "done", ""
    try:
        value = fn(task)
    except LottoError as e:
        state, text = "stop", str(e)
    except distributed.PeerFailed:
        state = "peer"
    except Exception as e:
        if distributed.in_training():
            # the other ranks may wait in a collective of this training: no exchange can pair
            # with theirs, so the whole launch stops (torchrun ends the other ranks); nothing of
            # this unit is written, so a re-run retries it
            traceback.print_exc()
            print(f"rank {distributed.rank()}: {_describe(e)} during a data-parallel training: "
                  "stopping every rank (finished units are kept; re-run to retry)",
                  file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        state, text, tb = "failed", _describe(e), traceback.format_exc()
    states = distributed.settle(state, text)
    seconds = time.perf_counter() - start
    stops = [t for s, t in states if s == "stop"]
    if stops:
        raise LottoError(stops[0])
    failed = [(r, t) for r, (s, t) in enumerate(states) if s == "failed"]
    if failed:
        r, text = failed[0]
        return TaskResult("failed", None, f"rank {r}: {text}", seconds, tb)
    if any(s != "done" for s, _ in states):  # a rank ended the unit without training it
        return TaskResult("failed", None, "the ranks did not run this unit in step", seconds)
    return TaskResult("ok", value, "", seconds)


def _call_here(fn: Callable[[Any], Any], task: Any) -> TaskResult:
    start = time.perf_counter()
    try:
        value = fn(task)
    except LottoError:
        raise
    except Exception as e:
        return TaskResult("failed", None, _describe(e), time.perf_counter() - start,
                          traceback.format_exc())
    return TaskResult("ok", value, "", time.perf_counter() - start)


# ---- process backend ---------------------------------------------------------------------------


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset/cgroup limits, unlike cpu_count
    except AttributeError:
        return os.cpu_count() or 1


def _gpu_ids() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch or a broken driver: run on CPUs
        return []


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCHDOG_S = 1.0  # how often a worker checks that its driver is still its parent


def _die_with_parent(parent: int) -> None:
    """End this worker when the driver `parent` ends, even by SIGKILL (nothing else would stop
    a training running for hours on a GPU): Linux kills us on its death (PR_SET_PDEATHSIG, as
    torch's DataLoader workers get); a thread watching our parent pid is the fallback elsewhere,
    and covers a driver gone before the prctl. (The kernel signals when the *thread* that
    started us ends: workers are started by the thread that calls `Runner.run`, the main one.)"""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog still stops us
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCHDOG_S)
        os._exit(1)  # re-parented: the driver is gone

    threading.Thread(target=watch, name="lotto-parent-watchdog", daemon=True).start()


def _worker_main(conn: Any, threads: int, gpu: str | None, parent: int) -> None:
    """A worker process: set up once, then run tasks sent as pickled (fn, task) until EOF."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    if gpu is not None:  # before torch initialises CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    conn.send_bytes(pickle.dumps(("ready",)))
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):  # the driver closed our pipe (done, or gone)
            # skip the interpreter's teardown (seconds with torch loaded): a worker has nothing
            # to save, since the driver writes every file
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        start = time.perf_counter()
        try:
            fn, task = pickle.loads(payload)
            reply: tuple = ("ok", fn(task), "", "")
        except LottoError as e:
            reply = ("lotto_error", None, str(e), "")
        except Exception as e:
            reply = ("failed", None, _describe(e), traceback.format_exc())
        reply = (*reply, time.perf_counter() - start)
        try:
            out = pickle.dumps(reply)
        except Exception as e:
            out = pickle.dumps(("failed", None, f"result not picklable: {_describe(e)}", "",
                                reply[-1]))
        conn.send_bytes(out)


class _Worker:
    """One worker slot's process and its pipe; `index` is the task it is running, if any."""

    def __init__(self, ctx: Any, slot: int, threads: int, gpu: str | None):
        self.slot = slot
        self.conn, child = ctx.Pipe()
        # not a daemon: a task may start processes of its own (DataLoader workers)
        self.proc = ctx.Process(target=_worker_main, args=(child, threads, gpu, os.getpid()),
                                name=f"lotto-worker-{slot}")
        self.proc.start()
        child.close()
        self.ready = False
        self.index: int | None = None
        self.started = 0.0

    def receive(self) -> tuple | None:
        """The worker's next message, or None when its pipe is closed (the worker is gone)."""
        try:
            return pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            return None

    def death(self) -> str:
        self.proc.join()
        code = self.proc.exitcode
        if code is not None and code < 0:
            try:
                name = f", {signal.Signals(-code).name}"
            except ValueError:
                name = ""
            hint = "; killed, or out of memory" if -code == signal.SIGKILL else ""
            return f"worker died (signal {-code}{name}{hint})"
        return f"worker died (exit code {code})"

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.conn.close()


# ---- ray backend -------------------------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise LottoError(
            "parallel.backend=ray needs Ray, which is not installed: pip install -e '.[ray]'"
        ) from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail within seconds, naming the address, rather than wait on Ray's long retries."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host:
        host, port = hostport, "10001" if address.startswith("ray://") else "6379"
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise LottoError(f"Ray address {address} does not answer ({reason})") from None


def _ray_connect(ray: Any, address: str | None) -> None:
    # one connection per process: a local instance takes ~10 s to start, far too long per call
    if ray.is_initialized():
        return
    if address and address != "auto":
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address)
        else:
            ray.init(include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        where = f"Ray at {address}" if address else "a local Ray instance"
        raise LottoError(f"cannot connect to {where}: {_describe(e)}") from None


class _Deadlines:
    """Per-task timeouts counted from when each task starts running, not from its submission:
    a task queued for a CPU or a GPU that the cluster has not freed yet cannot time out."""

    def __init__(self, timeout: float | None):
        self.timeout = timeout
        self.started: dict[Any, float] = {}  # key -> time.monotonic() when it started

    def start(self, key: Any, now: float) -> None:
        self.started.setdefault(key, now)

    def forget(self, key: Any) -> None:
        self.started.pop(key, None)

    def seconds(self, key: Any, now: float) -> float:
        """How long `key` has run (0 if it has not started)."""
        return now - self.started[key] if key in self.started else 0.0

    def wait_s(self, now: float) -> float | None:
        """How long the driver may wait before the next timeout is due (None: no deadline)."""
        if self.timeout is None or not self.started:
            return None
        return max(0.0, min(self.started.values()) + self.timeout - now)

    def expired(self, now: float) -> list[Any]:
        if self.timeout is None:
            return []
        return [k for k, t in self.started.items() if now - t >= self.timeout]


def _ray_task(fn: Callable, task: Any, threads: int, board: Any, key: int) -> tuple[Any, float]:
    if board is not None:
        board.start.remote(key)  # the driver's timeout for this task counts from here
    import torch

    torch.set_num_threads(threads)  # Ray reuses its workers: set it for every task
    start = time.perf_counter()
    return fn(task), time.perf_counter() - start


def _start_board(ray: Any) -> Any:
    """A tiny actor through which each task tells the driver that it has started: the driver
    awaits `started(key)` (a reference that becomes ready when the task calls `start(key)`)."""
    import asyncio

    class StartBoard:
        def __init__(self) -> None:
            self.events: dict[int, asyncio.Event] = {}

        def _event(self, key: int) -> asyncio.Event:
            return self.events.setdefault(key, asyncio.Event())

        async def start(self, key: int) -> None:
            self._event(key).set()

        async def started(self, key: int) -> None:
            await self._event(key).wait()

    return ray.remote(num_cpus=0)(StartBoard).remote()


def _run_ray(
    fn: Callable,
    tasks: list[Any],
    todo: deque[int],
    workers: int,
    threads: int | None,
    timeout: float | None,
    address: str | None,
    deliver: Callable,
) -> None:
    if not todo:
        return
    ray = _import_ray()
    from ray.exceptions import RayError, RayTaskError

    _ray_connect(ray, address)
    resources = ray.cluster_resources()
    threads = threads or max(1, int(resources.get("CPU", 1)) // workers)
    gpus = 1 if resources.get("GPU", 0) >= 1 else 0
    # max_retries=0: a failed task is reported, and a re-run of the command retries exactly it
    remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(_ray_task)
    board = _start_board(ray) if timeout is not None else None
    running: dict[Any, int] = {}  # result reference -> task index
    starting: dict[Any, Any] = {}  # the board's `started` reference -> result reference
    clock = _Deadlines(timeout)
    try:
        while todo or running:
            while todo and len(running) < workers:
                i = todo.popleft()
                try:
                    ref = remote.remote(fn, tasks[i], threads, board, i)
                except Exception as e:  # cloudpickle could not serialise the task
                    deliver(i, TaskResult("failed", None, f"task not picklable: {_describe(e)}"))
                    continue
                running[ref] = i
                if board is not None:
                    starting[board.started.remote(i)] = ref
            if not running:
                continue
            waiting = list(running) + list(starting)
            done, _ = ray.wait(waiting, num_returns=1, timeout=clock.wait_s(time.monotonic()))
            now = time.monotonic()
            for ref in done:
                if ref in starting:  # a task has begun to run: its timeout counts from now
                    clock.start(starting.pop(ref), now)
                    continue
                i = running.pop(ref)
                seconds = clock.seconds(ref, now)
                clock.forget(ref)
                try:
                    value, seconds = ray.get(ref)
                    result = TaskResult("ok", value, "", seconds)
                except RayTaskError as e:  # fn raised: report its own exception
                    cause = e.cause if e.cause is not None else e
                    if isinstance(cause, LottoError):
                        raise LottoError(str(cause)) from None
                    result = TaskResult("failed", None, _describe(cause), seconds, str(e))
                except RayError as e:  # the worker or its node died, or the object was lost
                    result = TaskResult("failed", None, f"worker died ({_describe(e)})", seconds)
                deliver(i, result)
            for ref in clock.expired(time.monotonic()):
                ray.cancel(ref, force=True)  # kills the worker process
                i = running.pop(ref)
                seconds = clock.seconds(ref, time.monotonic())
                clock.forget(ref)
                deliver(i, TaskResult("failed", None,
                                      f"timed out after {timeout:g} s (parallel.timeout)",
                                      seconds))
            # a finished task's `started` reference is no longer awaited
            starting = {s: r for s, r in starting.items() if r in running}
    finally:
        for ref in running:  # Ctrl-C or an error: stop what still runs
            ray.cancel(ref, force=True)
        if board is not None:
            ray.kill(board)
