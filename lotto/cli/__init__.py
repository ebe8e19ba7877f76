"""Command-line interface: `lotto <command>`. Each module registers one command on `app`."""

from lotto.cli import bench  # noqa: F401
from lotto.cli import build_v3  # noqa: F401
from lotto.cli import lottery  # noqa: F401
from lotto.cli import rethink  # noqa: F401
from lotto.cli.app import app, main

__all__ = ["app", "main"]
