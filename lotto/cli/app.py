"""The Typer app and what every command shares: error handling and the common options."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from lotto.errors import LottoError

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


# Tables are wide: when output goes to a file or a CI log (no terminal), don't crop at 80.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True)


def lotto_command(name: str, **kwargs: Any) -> Callable:
    """Register a command whose user mistakes print one line and exit with status 2."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except LottoError as e:
                err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                err_console.print(
                    "interrupted: finished work is kept; re-run the same command to resume"
                )
                raise typer.Exit(130) from None

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
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Delete an existing run directory of that name and start afresh."),
]


def main() -> None:
    from lotto import cli  # noqa: F401  (registers the commands)

    sys.exit(app())
