"""Run directories: names, atomic writes, resume checks, tensors and the metrics tables."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import DictConfig

from lotto.config import config_hash, default_run_name, load_config, to_yaml
from lotto.errors import LottoError
from lotto.runs import MetricsLog, RunDir, atomic_write, validate_name, write_text


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("name", ["a", "run-1", "my_run.v2", "A0"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["a/b", "..", "../x", "a..b", "", ".hidden", "a b", "/abs", "x" * 101]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(LottoError, match="run name"):
        validate_name(name)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.txt"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two"
    assert temp_files(tmp_path) == []


def test_failed_write_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    write_text(target, "good")

    def boom(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, boom)
    assert target.read_text() == "good"
    assert list(tmp_path.iterdir()) == [target]


def test_open_creates_default_named_dir_with_config(
    lottery_cfg: Callable[..., DictConfig], runs_dir: Path
) -> None:
    cfg = lottery_cfg()
    run = RunDir.open(cfg, "lottery")
    assert run.path == (runs_dir / "lottery" / default_run_name(cfg, "lottery")).resolve()
    assert (run.path / "config.yaml").exists()
    assert temp_files(runs_dir) == []
    named = RunDir.open(lottery_cfg("run.name=mine"), "lottery")
    assert named.path.name == "mine"


def test_open_resumes_same_config_and_refuses_different(
    lottery_cfg: Callable[..., DictConfig],
) -> None:
    run = RunDir.open(lottery_cfg("run.name=x"), "lottery")
    run.write_json("marker.json", {"a": 1})
    again = RunDir.open(lottery_cfg("run.name=x"), "lottery")
    assert again.has("marker.json")
    with pytest.raises(LottoError, match="different config") as info:
        RunDir.open(lottery_cfg("run.name=x", "train.lr=0.5", "lottery.prune_rate=0.3"),
                    "lottery")
    # the keys that differ, old -> new; placement keys (run.*) are not among them
    assert "(train.lr: 0.0012 -> 0.5, lottery.prune_rate: 0.2 -> 0.3)" in str(info.value)
    fresh = RunDir.open(lottery_cfg("run.name=x", "train.lr=0.5"), "lottery", force=True)
    assert not fresh.has("marker.json")
    assert "lr: 0.5" in fresh.file("config.yaml").read_text()


def test_open_refuses_bad_name(lottery_cfg: Callable[..., DictConfig], runs_dir: Path) -> None:
    for name in ("a/b", ".."):
        with pytest.raises(LottoError, match="run name"):
            RunDir.open(lottery_cfg(f"run.name='{name}'"), "lottery")
    assert not (runs_dir / "lottery").exists() or list((runs_dir / "lottery").iterdir()) == []


def test_unreadable_saved_config(lottery_cfg: Callable[..., DictConfig]) -> None:
    run = RunDir.open(lottery_cfg("run.name=x"), "lottery")
    run.file("config.yaml").write_text("train: [unclosed\n")
    with pytest.raises(LottoError, match="unreadable"):
        RunDir.open(lottery_cfg("run.name=x"), "lottery")


def test_tensors_round_trip_and_corruption(lottery_cfg: Callable[..., DictConfig]) -> None:
    run = RunDir.open(lottery_cfg(), "lottery")
    tensors = {"w": torch.randn(3, 4), "m": torch.ones(5, dtype=torch.bool)}
    run.save_tensors("seed0/a.safetensors", tensors)
    back = run.load_tensors("seed0/a.safetensors")
    assert set(back) == {"w", "m"}
    assert torch.equal(back["w"], tensors["w"]) and back["m"].dtype == torch.bool
    assert temp_files(run.path) == []
    path = run.file("seed0/a.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(LottoError, match=r"seed0/a\.safetensors is missing or corrupt"):
        run.load_tensors("seed0/a.safetensors")
    with pytest.raises(LottoError, match="missing or corrupt"):
        run.load_tensors("seed0/absent.safetensors")


def test_metrics_log_round_trip_and_find(lottery_cfg: Callable[..., DictConfig]) -> None:
    run = RunDir.open(lottery_cfg(), "lottery")
    log = MetricsLog(run)
    log.append({"round": 0, "variant": "ticket", "seed": 0, "acc": 0.5, "note": None})
    log.append(
        [
            {"round": 1, "variant": "ticket", "seed": 0, "acc": 0.75, "note": "x"},
            {"round": 1, "variant": "reinit", "seed": 0, "acc": 0.25, "note": "y"},
        ]
    )
    csv = pd.read_csv(run.file("metrics.csv"))
    parquet = pd.read_parquet(run.file("metrics.parquet"))
    assert len(csv) == len(parquet) == 3
    assert list(csv.columns) == list(parquet.columns) == ["round", "variant", "seed", "acc", "note"]
    assert csv.acc.tolist() == parquet.acc.tolist() == [0.5, 0.75, 0.25]
    assert temp_files(run.path) == []

    back = MetricsLog(run)  # reads the CSV back
    assert len(back.rows) == 3
    assert len(back.find(round=1)) == 2
    assert back.find(round=1, variant="reinit")[0]["acc"] == 0.25
    assert back.find(round=1.0, variant="ticket")[0]["acc"] == 0.75
    assert back.find(round=2) == []
    assert len(back.find(round=0, note=None)) == 1  # NaN read back matches None
    back.append({"round": 2, "variant": "ticket", "seed": 0, "acc": 1.0, "note": "z"})
    assert len(pd.read_csv(run.file("metrics.csv"))) == 4

    other = MetricsLog(run, "curves")
    assert other.csv.name == "curves.csv" and other.rows == []


def test_text_column_read_back_as_numbers_still_writes_parquet(
        lottery_cfg: Callable[..., DictConfig]) -> None:
    # netadapt's `block` column: "1", "3" read back from the CSV as floats, then "4,5" appended
    run = RunDir.open(lottery_cfg(), "lottery")
    MetricsLog(run).append([{"block": "1", "ms": 1.0}, {"block": "", "ms": 2.0}])
    back = MetricsLog(run)
    back.append({"block": "4,5", "ms": 3.0})
    parquet = pd.read_parquet(run.file("metrics.parquet"))
    assert parquet.block.tolist()[0] == "1" and parquet.block.tolist()[2] == "4,5"
    assert pd.isna(parquet.block.tolist()[1])


def test_corrupt_metrics_csv(lottery_cfg: Callable[..., DictConfig]) -> None:
    run = RunDir.open(lottery_cfg(), "lottery")
    run.file("metrics.csv").write_bytes(b'\x00\xff\x00garbage\n"unclosed')
    with pytest.raises(LottoError, match="metrics.csv is corrupt"):
        MetricsLog(run)


def test_write_json(lottery_cfg: Callable[..., DictConfig]) -> None:
    import json

    run = RunDir.open(lottery_cfg(), "lottery")
    run.write_json("summary.json", {"b": 1, "a": torch.tensor(0.5).item()})
    assert json.loads(run.file("summary.json").read_text()) == {"a": 0.5, "b": 1}


ROW = {"round": 0, "variant": "ticket", "seed": 0, "acc": 0.5}


def line(row: dict) -> bytes:
    return pd.DataFrame([row]).to_csv(header=False, index=False).encode()


def test_metrics_append_adds_lines_without_rewriting(
    lottery_cfg: Callable[..., DictConfig],
) -> None:
    run = RunDir.open(lottery_cfg(), "lottery")
    log = MetricsLog(run)
    log.append(ROW)  # the first rows write the file (and its header) whole
    path = run.file("metrics.csv")
    before = path.read_bytes()
    # a second name for this very file: a rewrite (temp + rename) would leave it behind
    link = run.path.parent / "metrics-link.csv"
    os.link(path, link)
    rows = [{**ROW, "round": r, "acc": r / 8} for r in range(1, 4)]
    for row in rows:
        log.append(row)
    assert path.samefile(link)
    assert link.read_bytes() == before + b"".join(line(r) for r in rows)  # grown by the new lines
    assert MetricsLog(run).rows[-1]["acc"] == 3 / 8
    assert len(pd.read_parquet(run.file("metrics.parquet"))) == 4


def test_metrics_new_column_or_drop_rewrites(lottery_cfg: Callable[..., DictConfig]) -> None:
    run = RunDir.open(lottery_cfg(), "lottery")
    log = MetricsLog(run)
    log.append([ROW, {**ROW, "round": 1}])
    log.append({**ROW, "round": 2, "extra": "x"})  # a column the header lacks: whole rewrite
    csv = pd.read_csv(run.file("metrics.csv"))
    assert list(csv.columns) == [*ROW, "extra"] and csv.extra.isna().tolist() == [1, 1, 0]
    log.drop(round=1)
    log.append({**ROW, "round": 3})
    assert pd.read_csv(run.file("metrics.csv"))["round"].tolist() == [0, 2, 3]
    assert [r["round"] for r in MetricsLog(run).rows] == [0, 2, 3]


def test_metrics_parquet_waits_for_flush(lottery_cfg: Callable[..., DictConfig]) -> None:
    run = RunDir.open(lottery_cfg(), "lottery")
    log = MetricsLog(run)
    log.append(ROW, flush=False)
    log.append({**ROW, "round": 1}, flush=False)
    assert len(pd.read_csv(run.file("metrics.csv"))) == 2
    assert not run.file("metrics.parquet").exists()
    log.flush()
    assert pd.read_parquet(run.file("metrics.parquet"))["round"].tolist() == [0, 1]


@pytest.mark.parametrize("length_file", [True, False])
def test_metrics_killed_mid_append_drops_the_partial_rows(
    lottery_cfg: Callable[..., DictConfig], length_file: bool
) -> None:
    run = RunDir.open(lottery_cfg(), "lottery")
    log = MetricsLog(run)
    log.append([ROW, {**ROW, "round": 1}])
    path = run.file("metrics.csv")
    good = path.read_bytes()
    if not length_file:  # a run directory written before the length was recorded
        run.file(".metrics.csv.length").unlink()
    # a kill in the middle of appending round 2: its line cut short
    partial = line({**ROW, "round": 2, "acc": 0.123456})[:-6]
    with open(path, "ab") as f:
        f.write(partial)
    back = MetricsLog(run)
    assert [r["round"] for r in back.rows] == [0, 1]
    assert path.read_bytes() == good  # cut from the file too, so appends line up again
    back.append({**ROW, "round": 2, "acc": 0.25})
    assert pd.read_csv(path)["acc"].tolist() == [0.5, 0.5, 0.25]


def test_metrics_uncommitted_whole_lines_are_dropped(
    lottery_cfg: Callable[..., DictConfig],
) -> None:
    """A multi-row append cut at a line end: its rows are not trusted, not half a unit."""
    run = RunDir.open(lottery_cfg(), "lottery")
    log = MetricsLog(run)
    log.append(ROW)
    with open(run.file("metrics.csv"), "ab") as f:
        f.write(line({**ROW, "round": 1}))  # the first of several rows, then the kill
    assert [r["round"] for r in MetricsLog(run).rows] == [0]


def test_stale_temp_files_are_removed_on_open(lottery_cfg: Callable[..., DictConfig]) -> None:
    run = RunDir.open(lottery_cfg(), "lottery")
    stale = run.file("seed0/.trained.safetensors.abc123.tmp")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    keep = run.file("seed0/init.safetensors")
    keep.write_bytes(b"x")
    RunDir.open(lottery_cfg(), "lottery")
    assert temp_files(run.path) == [] and keep.exists()


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_run_files_honour_the_umask(lottery_cfg: Callable[..., DictConfig], umask: int) -> None:
    """Every run file gets 0666 less the process's umask, as `open(path, "w")` gives (a temp
    file from mkstemp is 0600 and a rename keeps it: results only their owner could read)."""
    import matplotlib.pyplot as plt

    from lotto.report.plots import save

    old = os.umask(umask)
    try:
        run = RunDir.open(lottery_cfg(), "lottery")
        run.write_json("summary.json", {"a": 1})
        run.save_tensors("seed0/a.safetensors", {"w": torch.ones(2)})
        log = MetricsLog(run)
        log.append({"round": 0, "variant": "ticket", "seed": 0, "acc": 0.5})
        fig = plt.figure()
        save(fig, [run.file("fig.png")], write=atomic_write)
        plt.close(fig)
        write_text(run.file("config.yaml"), run.file("config.yaml").read_text())  # rewritten
    finally:
        os.umask(old)
    files = [p for p in run.path.rglob("*") if p.is_file()]
    names = {p.relative_to(run.path).as_posix() for p in files}
    assert {"config.yaml", "summary.json", "seed0/a.safetensors", "metrics.csv",
            "metrics.parquet", "fig.png"} <= names, names
    modes = {p.relative_to(run.path).as_posix(): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_default_names_are_readable_distinct_per_command_and_stable(runs_dir: Path) -> None:
    place = [f"run.runs_dir={runs_dir}"]
    names = {c: default_run_name(load_config(c, overrides=place), c)
             for c in ("lottery", "rethink", "search", "netadapt", "build-v3", "bench")}
    assert len(set(names.values())) == len(names), names  # no more one hash for every command
    assert names["search"].startswith("search-defaults-")
    tiny = load_config("lottery", overrides=[*place, "data.name=digits", "lottery.prune_rate=0.5"])
    name = default_run_name(tiny, "lottery")
    assert re.fullmatch(r"lottery-digits-prune_rate_0\.5-[0-9a-f]{8}", name), name
    # stable: the same config again, or placed elsewhere, gets the same name
    again = load_config("lottery", overrides=["data.name=digits", "lottery.prune_rate=0.5",
                                               "run.runs_dir=/elsewhere", "parallel.workers=2"])
    assert default_run_name(again, "lottery") == name
    # a difference past the shortened description still changes the hash
    more = [*place, "data.name=digits", "lottery.prune_rate=0.5", "train.lr=0.1",
            "train.gamma=0.5", "train.momentum=0.5", "train.warmup=1it"]
    other = [*more[:-1], "train.warmup=2it"]  # the 5th difference: not in the description
    a, b = (default_run_name(load_config("lottery", overrides=o), "lottery") for o in (more, other))
    assert a != b and a.rsplit("-", 1)[0] == b.rsplit("-", 1)[0]
    validate_name(a)


def test_run_named_by_the_old_bare_hash_still_resumes(
    lottery_cfg: Callable[..., DictConfig], runs_dir: Path
) -> None:
    cfg = lottery_cfg()
    legacy = runs_dir / "lottery" / config_hash(cfg, "lottery")
    legacy.mkdir(parents=True)
    (legacy / "config.yaml").write_text(to_yaml(cfg))
    assert RunDir.open(cfg, "lottery").path == legacy.resolve()
