"""Atomic file writes, without torch (the report code uses them too)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def _new_temp(path: Path) -> Path:
    """An empty, new temp file next to `path`, created with mode 0666 less the umask.

    Not `tempfile.mkstemp`: it creates 0600 files, and a rename keeps that mode, so every result
    would be private to its owner (colleagues and web servers could not read it). `os.open`
    with 0o666 lets the kernel apply the process's umask, as `open(path, "w")` does.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temp name next to {path}")


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` then rename onto `path`, so readers never see a half-written file.

    The file gets the mode a plain `open(path, "w")` would give it (0666 less the umask).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        mode = tmp.stat().st_mode & 0o777  # 0666 less the umask, as the kernel applied it
        write(tmp)
        if tmp.stat().st_mode & 0o777 != mode:  # e.g. safetensors recreates its file as 0600
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
