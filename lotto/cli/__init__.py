"""Command-line interface: `lotto <command>`. Each module registers one command on `app`."""

from lotto.cli import bench, build_v3, lottery, rethink  # noqa: F401  (register the commands)
from lotto.cli.app import app, main

__all__ = ["app", "main"]
