"""Run directories: `runs/<command>/<name>/`, resumable, every file written atomically.

A run directory holds the resolved `config.yaml`, tidy metrics tables (`<stem>.csv`, appended
row by row, and `<stem>.parquet`, rewritten atomically after each finished unit of work), tensors
(safetensors) and `summary.json`. A finished unit (round, grid cell, candidate) is recorded by its
metrics row, written after its tensors: a unit without a row is simply recomputed.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lotto import distributed
from lotto.config import config_hash, default_run_name, differences, identity, to_yaml
from lotto.errors import LottoError
from lotto.files import replace_atomically

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def validate_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise LottoError(
            f"run name {name!r} must be letters, digits, '.', '_' or '-' (no '/', no '..')"
        )
    return name


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(tmp_path)` then rename onto `path`, so readers never see a half-written file.

    Under torchrun only rank 0 writes run files: on the other ranks this does nothing.
    """
    if distributed.is_main():
        replace_atomically(path, write)


def json_value(value: Any) -> Any:
    """A metrics cell as JSON: numpy scalars as Python numbers, NaN as null."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _default_name(cfg: DictConfig, command: str, parent: Path) -> str:
    """`default_run_name`, or the bare hash that named default runs before it, when a run of
    that name exists and none of the new name does (so that older runs still resume)."""
    name = default_run_name(cfg, command)
    legacy = config_hash(cfg, command)
    if not (parent / name).exists() and (parent / legacy / "config.yaml").exists():
        return legacy
    return name


class RunDir:
    """One run's directory. Use `RunDir.open` to create or resume it."""

    def __init__(self, path: Path, command: str, tensorboard: bool = False):
        self.path = path
        self.command = command
        self.tensorboard = tensorboard  # run.tensorboard: mirror metrics rows (lotto.tracking)
        self._mirror: Any = None

    def mirror(self) -> Any:
        """The TensorBoard mirror of this run (None when run.tensorboard is off)."""
        if self.tensorboard and self._mirror is None:
            from lotto.tracking import TensorBoardMirror

            self._mirror = TensorBoardMirror(self.path / "tensorboard")
        return self._mirror

    @staticmethod
    def locate(cfg: DictConfig, command: str) -> Path:
        """Where `open` puts the run of `cfg` (creating nothing): `runs_dir/command/name`."""
        root = Path(cfg.run.runs_dir).expanduser()
        name = cfg.run.name or _default_name(cfg, command, root / command)
        validate_name(str(name))
        path = (root / command / str(name)).resolve()
        if not path.is_relative_to((root / command).resolve()):
            raise LottoError(f"run name {name!r} escapes the runs directory")
        return path

    @staticmethod
    def conflict(cfg: DictConfig, path: Path) -> str | None:
        """Why the run directory `path` cannot resume `cfg` (None: it can, or it is new)."""
        saved = path / "config.yaml"
        if not saved.exists():
            return None
        try:
            old = identity(OmegaConf.load(saved))
        except Exception:
            return f"{saved} is unreadable; use --force to start this run afresh"
        new = identity(cfg)
        if old != new:
            return (f"run directory {path} holds a different config ({differences(old, new)}); "
                    "pick another --name or use --force to start it afresh")
        return None

    @classmethod
    def open(cls, cfg: DictConfig, command: str, force: bool = False) -> RunDir:
        """Create or resume `runs_dir/command/name`; refuse if a saved config differs."""
        path = cls.locate(cfg, command)
        saved = path / "config.yaml"
        main = distributed.is_main()  # under torchrun, rank 0 writes; the others only read
        if force and path.exists() and main:
            shutil.rmtree(path)
        if not force:  # (with --force, rank 0 may be deleting it now)
            why = cls.conflict(cfg, path)
            if why is not None:
                raise LottoError(why)
        run = cls(path, command, bool(cfg.run.get("tensorboard", False)))
        if main:
            path.mkdir(parents=True, exist_ok=True)
            for stale in path.rglob(".*.tmp"):  # left by a process killed mid-write: never trusted
                stale.unlink(missing_ok=True)
            write_text(saved, to_yaml(cfg))
            run.mirror()  # run.tensorboard without the package: an error before any training
        distributed.barrier()  # the other ranks read the directory only once it is set up
        return run

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> None:
        write_text(self.file(name), json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")

    def save_tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        atomic_write(self.file(name), lambda tmp: save_file(data, str(tmp)))

    def has(self, name: str) -> bool:
        return self.file(name).exists()

    def load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        path = self.file(name)
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise LottoError(
                f"checkpoint {path} is missing or corrupt ({str(e).splitlines()[0]}); "
                "use --force to start this run afresh"
            ) from None


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns that a resumed CSV read back as numbers (a column of "1", "2" becomes
    floats) and that later rows extend with strings hold mixed types, which Parquet refuses:
    such a column is written as text (missing values kept)."""
    for col in [c for c in frame.columns if frame[c].dtype == "object"]:
        kinds = {type(v) for v in frame[col] if not pd.isna(v)}
        if len(kinds) > 1 and str in kinds:
            frame[col] = [v if pd.isna(v) else
                          (str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
                          for v in frame[col]]
    return frame


class MetricsLog:
    """A tidy table: `<stem>.csv`, appended to, and `<stem>.parquet`, rewritten at unit ends.

    An append adds its rows to the CSV in one `write()`, fsync'd, then records the CSV's committed
    length in `.<stem>.csv.length`: a process killed mid-append leaves bytes past that length (or,
    without the length file, a partial last line), which the next load cuts off, so a unit is
    either wholly in the table or recomputed. The CSV is rewritten whole (atomically) only for its
    first rows, a new column, or after `drop`. `append` also rewrites the Parquet file unless
    `flush=False` (then call `flush()` when the unit is finished).
    """

    def __init__(self, run: RunDir, stem: str = "metrics"):
        self.csv = run.file(f"{stem}.csv")
        self.parquet = run.file(f"{stem}.parquet")
        self.length_file = run.file(f".{stem}.csv.length")
        self.stem, self.run = stem, run
        self.rows: list[dict] = []
        self.columns: list[str] = []  # the CSV header; empty while there is no CSV
        self._rewrite = True  # the next append writes the CSV whole
        if self.csv.exists():
            self._load()
        distributed.barrier()  # every rank has read the table before rank 0 appends to it

    def _load(self) -> None:
        raw = self.csv.read_bytes()
        committed = _read_length(self.length_file)
        if committed is None or committed > len(raw):
            committed = raw.rfind(b"\n") + 1  # no usable length: cut a partial last line
        try:
            frame = pd.read_csv(io.BytesIO(raw[:committed]))
        except Exception:
            raise LottoError(
                f"{self.csv} is corrupt; use --force to start this run afresh"
            ) from None
        if committed < len(raw):  # an append cut short (or never committed): drop it for good
            atomic_write(self.csv, lambda tmp: tmp.write_bytes(raw[:committed]))
        self.rows = frame.to_dict("records")
        self.columns = list(frame.columns)
        self._rewrite = False

    def append(self, rows: dict | Iterable[dict], flush: bool = True) -> None:
        new = [rows] if isinstance(rows, dict) else list(rows)
        self.rows.extend(new)
        if not new or not distributed.is_main():  # other torchrun ranks keep rows in memory
            return
        if self._rewrite or any(k not in self.columns for r in new for k in r):
            self._write_whole()
        else:
            text = pd.DataFrame(new, columns=self.columns).to_csv(header=False, index=False)
            block = text.encode()
            # one write of whole lines, on disk before its length is committed
            with open(self.csv, "ab") as f:
                f.write(block)
                f.flush()
                os.fsync(f.fileno())
                length = f.tell()
            write_text(self.length_file, f"{length}\n")
        if flush:
            self.flush()
        mirror = self.run.mirror() if isinstance(self.run, RunDir) else None
        if mirror is not None:
            mirror.rows(self.stem, new)

    def _write_whole(self) -> None:
        frame = self.frame()
        # a stale length must not cut the new file: remove it first, record the new one after
        self.length_file.unlink(missing_ok=True)
        atomic_write(self.csv, lambda tmp: frame.to_csv(tmp, index=False))
        self.columns = list(frame.columns)
        self._rewrite = False
        write_text(self.length_file, f"{self.csv.stat().st_size}\n")

    def flush(self) -> None:
        """Rewrite the Parquet copy of the table (at the end of a finished unit)."""
        if not distributed.is_main():
            return
        frame = _parquet_safe(self.frame())
        atomic_write(self.parquet, lambda tmp: frame.to_parquet(tmp, index=False))

    def drop(self, **key: Any) -> None:
        """Forget rows matching `key` (a unit to recompute); takes effect at the next append."""
        kept = [r for r in self.rows if not all(_same(r.get(k), v) for k, v in key.items())]
        if len(kept) < len(self.rows):
            self.rows, self._rewrite = kept, True

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def find(self, **key: Any) -> list[dict]:
        return [r for r in self.rows if all(_same(r.get(k), v) for k, v in key.items())]


def _read_length(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def mean_std(frame: pd.DataFrame, keys: list[str], cols: list[str]) -> pd.DataFrame:
    """Mean and std over seeds (`<col>_std`, 0 for one seed) and `seeds`, per `keys`."""
    grouped = frame.groupby(keys, sort=False)[cols]
    table = grouped.mean().join(grouped.std().fillna(0.0).add_suffix("_std"))
    table["seeds"] = grouped.size()
    return table.reset_index()


def _same(a: Any, b: Any) -> bool:
    # CSV round-trips turn ints into floats and None into NaN
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return a == b
    if a != a and b is None:  # NaN read back for a missing value
        return True
    return a == b
