"""Command-line interface: `lotto <command>`. Each module registers one command on `app`."""

from lotto.cli.app import thread_defaults

# before the command modules import torch: OpenMP reads its wait policy when torch loads it
# (the `lotto` script imports this package before it calls `main`)
thread_defaults()

from lotto.cli import (  # noqa: E402, F401  (register commands)
    bench,
    build_v3,
    compare,
    lottery,
    netadapt,
    pipeline,
    rethink,
    runs,
    search,
)
from lotto.cli.app import app, main  # noqa: E402

__all__ = ["app", "main"]
