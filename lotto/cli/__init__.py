"""Command-line interface: `lotto <command>`. Each module registers one command on `app`."""

from lotto.cli import lottery  # noqa: F401
from lotto.cli.app import app, main

__all__ = ["app", "main"]
