"""The Typer app and what every command shares: error handling and the common options."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from lotto.errors import LottoError

if TYPE_CHECKING:  # start-up: the CLI modules import nothing heavy at module level (issue 12)
    from omegaconf import DictConfig

app = typer.Typer(
    name="lotto",
    help="Experiment runner for efficient networks: lottery tickets, pruning, MobileNetV3.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="CPU threads for training (torch.set_num_threads); 1 avoids thread "
            "oversubscription on a busy machine. Default: torch's choice.",
        ),
    ] = None,
) -> None:
    """lotto: lottery tickets, pruning, MobileNetV3 construction and latency, from one CLI."""
    if threads is not None:
        if threads < 1:
            err_console.print("[bold red]error:[/] --threads must be at least 1")
            raise typer.Exit(2)
        import torch

        torch.set_num_threads(threads)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: join its group
        from lotto import distributed

        distributed.init_if_launched()
        if not distributed.is_main():
            console.quiet = True  # rank 0 alone prints tables and progress bars


# Tables are wide: when output goes to a file or a CI log (no terminal), don't crop at 80.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a batch scheduler, torchrun stopping its ranks), handled as Ctrl-C is:
    every cleanup path that runs on Ctrl-C (workers stopped, finished work kept) runs."""


def _terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (and receives the signal)
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def lotto_command(name: str, **kwargs: Any) -> Callable:
    """Register a command whose user mistakes print one line and exit with status 2, and that
    stops on Ctrl-C (exit 130) or SIGTERM (exit 143) keeping its finished work."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                with _sigterm_as_interrupt():
                    return fn(*args, **kw)
            except LottoError as e:
                err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt as e:
                what = "terminated" if isinstance(e, Terminated) else "interrupted"
                err_console.print(
                    f"{what}: finished work is kept; re-run the same command to resume"
                )
                raise typer.Exit(143 if isinstance(e, Terminated) else 130) from None

        app.command(name, **kwargs)(wrapper)
        return wrapper

    return decorate


# Options shared by the experiment commands (Annotated aliases keep the signatures short).
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file merged over the defaults.")
]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="key=value overrides, e.g. train.lr=0.01 data.name=mnist")
]
NameOpt = Annotated[
    str | None, typer.Option("--name", help="Run name (default: hash of the config).")
]
RunsDirOpt = Annotated[str | None, typer.Option("--runs-dir", help="Root of the run directories.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda or auto.")]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="Trainings at once: worker processes (parallel.backend=process, chosen for N > 1 "
        "when the backend is serial) or Ray tasks in flight. Default: parallel.workers (1).",
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Delete an existing run directory of that name and start afresh."),
]


def with_workers(cfg: DictConfig, workers: int | None) -> DictConfig:
    """`--workers N` > 1 on the serial backend means local worker processes."""
    if workers is not None and workers > 1 and cfg.parallel.backend == "serial":
        cfg.parallel.backend = "process"
    return cfg


def check_parallel(cfg: DictConfig) -> None:
    """Validate the `parallel:` section of a command that does not use it yet (one line, exit 2)."""
    from lotto.experiments.common import parallel_settings

    parallel_settings(cfg)


def report_failures(failures: list[dict], run_path: Path) -> None:
    """List the units that failed or were skipped; exit with status 1 if any failed."""
    if not failures:
        return
    for entry in failures:
        key = ",".join(f"{k}={v}" for k, v in entry.items() if k not in ("status", "error"))
        console.print(f"[bold red]{entry['status']}:[/] {key}: {entry['error']}",
                      highlight=False, soft_wrap=True)
    failed = sum(e["status"] == "failed" for e in failures)
    console.print(f"{failed} failed, {len(failures) - failed} skipped: listed in "
                  f"{run_path / 'failures.csv'}; re-run the same command to retry them "
                  "(finished units are kept)", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def thread_defaults() -> None:
    """Thread settings for a machine that also runs other work; call before torch is imported.

    OpenMP threads that spin-wait for work hold a core even while another process wants it, and
    then wait for each other: on 2 busy cores a LeNet-300-100 training ran 16x slower with torch's
    2 threads than with 1 (README, "Many trainings at once"). PASSIVE makes an idle thread sleep.
    `setdefault`: the user's own setting wins. Called by `lotto.cli` on import, since the
    `lotto` script imports the commands (and torch) before it calls `main`.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    from lotto import cli  # noqa: F401  (registers the commands)

    sys.exit(app())
