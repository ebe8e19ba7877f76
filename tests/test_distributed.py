"""torchrun: one training over 2 CPU processes (gloo) equals the 1-process training on the same
global batches, and only rank 0 writes run files.

One torchrun launch (each rank imports torch, which dominates the cost) runs a script that
trains LeNet-300-100 on digits at global batches of 64 (shards 32 + 32) and 63 (31 + 32), then
runs the real CLI: `lotto --threads 1 rethink` on a tiny grid, the same command again (resume)
and with --force. The 1-process reference is the same script, run in this process.

Tolerance: the runs differ only in floating-point summation order (per-shard sums, then an
all-reduce, instead of one mean over the batch): float32 rounding, ~1e-7 relative. Measured
over 40 steps: at most 1.1e-7 (batch 64) and 1.9e-7 (batch 63) in any loss, accuracies equal.
LOSS_TOL = 1e-5 leaves 50x margin yet catches real mistakes, measured: averaging the shards'
mean losses instead of the global mean (batch 63) moves the losses by 2e-3 to 5e-3; logging
rank 0's shard loss instead of the global one by 3e-2. Accuracies may differ by at most one
flipped prediction (a near-tie argmax).
"""

from __future__ import annotations

import io
import json
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import lotto.distributed as distributed
from lotto.config import load_config
from lotto.errors import LottoError
from lotto.runs import MetricsLog, RunDir

LOSS_TOL = 1e-5
BATCHES = (64, 63)
RETHINK = [
    "data.name=digits", "data.val_size=100", "model.width=0.0625", "train.iterations=6it",
    "train.batch_size=32", "finetune.iterations=2it", "grid.seeds=1", "grid.lrs=[0.1]",
    "pruning.unstructured.modes=[finetune,scratch_e,ticket,reinit]", "device=cpu",
]
# lottery with both controls: the fault hits rank 1's reinit unit; the random_mask unit after it
# is the one that rank 1 trained alone against rank 0's reinit before the fix (issue 16)
LOTTERY = [
    "data.name=digits", "train.iterations=20it", "train.eval_every=10it", "lottery.rounds=1",
    "lottery.controls=[reinit,random_mask]", "device=cpu",
]
FAULT_UNIT = "seed=0,round=1,variant=reinit"

SCRIPT = '''
import contextlib, hashlib, io, json, sys
from pathlib import Path

import torch

torch.set_num_threads(1)
from lotto import distributed
from lotto.config import load_config
from lotto.data import load_data
from lotto.models import build_model
from lotto.train import train

BATCHES = {batches!r}
RETHINK = {rethink!r}
LOTTERY = {lottery!r}
FAULT = {fault!r}


def fit(batch, out, tag=None):
    cfg = load_config("lottery", overrides=["data.name=digits", f"train.batch_size={{batch}}",
                      "train.iterations=40it", "train.eval_every=10it"])
    data = load_data(cfg.data)
    torch.manual_seed(0)
    if tag == "bn":  # BatchNorm: per-rank batch statistics on CPU, running stats synced
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32),
                                    torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                    torch.nn.Linear(32, 10))
    else:
        model = build_model("lenet_300_100", data.in_channels, data.num_classes, data.image_size)
    first = []  # the row sums of the first batch this process trains on

    def hook(module, args):
        if module.training and not first:
            first.append(args[0].flatten(1).sum(1).tolist())

    model.register_forward_pre_hook(hook)
    result = train(model, data, cfg.train, seed=0, device=torch.device("cpu"))
    digest = hashlib.sha256()
    for value in model.state_dict().values():
        digest.update(value.detach().numpy().tobytes())
    rows = [{{k: v for k, v in r.items() if k != "seconds"}} for r in result.history]
    (out / f"train{{tag or batch}}_rank{{distributed.rank()}}.json").write_text(json.dumps({{
        "history": rows, "first_batch": first[0], "keys": list(model.state_dict()),
        "weights": digest.hexdigest(), "n_val": len(data.val_y), "n_test": len(data.test_y)}}))


def cli(out, tag, *extra):
    from lotto import cli  # noqa: F401  (registers the commands)
    from lotto.cli.app import app

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            app(["--threads", "1", "rethink", "--runs-dir", str(out / "runs"), "--name", "t",
                 *extra, *RETHINK], prog_name="lotto")
        except SystemExit as e:
            code = e.code
    (out / f"cli_{{tag}}_rank{{distributed.rank()}}.json").write_text(
        json.dumps({{"code": code, "stdout": text.getvalue()}}))
    distributed.barrier()  # rank 0 has written everything before anyone looks
    if distributed.is_main():
        run = out / "runs" / "rethink" / "t"
        files = {{str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted(run.rglob("*")) if p.is_file()}}
        (out / f"files_{{tag}}.json").write_text(json.dumps(files))


def lottery(out, tag, *extra, fault=None):
    """`lotto lottery` (the fault, if any, on rank 1 only); its exit code, output and tables."""
    import os

    import lotto.experiments.common as common
    from lotto import cli  # noqa: F401  (registers the commands)
    from lotto.cli.app import app

    if fault and distributed.rank() == 1:
        os.environ[common.FAULT_ENV] = fault
    text, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(err):
        try:
            app(["--threads", "1", "lottery", "--runs-dir", str(out / "runs"), "--name", "lf",
                 *extra, *LOTTERY], prog_name="lotto")
        except SystemExit as e:
            code = e.code
    os.environ.pop(common.FAULT_ENV, None)
    run = out / "runs" / "lottery" / "lf"
    tables = {{f: (run / f).read_text() for f in ("metrics.csv", "failures.csv")
              if (run / f).exists()}} if distributed.is_main() else {{}}
    (out / f"lottery_{{tag}}_rank{{distributed.rank()}}.json").write_text(json.dumps(
        {{"code": code, "stdout": text.getvalue(), "stderr": err.getvalue(), **tables}}))
    distributed.barrier()


def main(out, full=True):
    out = Path(out)
    distributed.init_if_launched()
    for batch in BATCHES:
        fit(batch, out)
    fit(64, out, "bn")
    cli(out, "first")
    if full:
        cli(out, "resume")
        cli(out, "force", "--force")
        lottery(out, "fault", fault=FAULT)  # fails on rank 1 only
        lottery(out, "retry")
        for tag, extra in (("workers", ["--workers", "2"]),
                           ("batch", ["parallel.batch_replicas=true"])):
            lottery(out, tag, "--force", *extra)
    else:
        lottery(out, "reference")


if __name__ == "__main__":
    main(sys.argv[1])
'''


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(1-process outputs, 2-process outputs) of the script."""
    root = tmp_path_factory.mktemp("torchrun")
    script = root / "tiny.py"
    script.write_text(SCRIPT.format(batches=BATCHES, rethink=RETHINK, lottery=LOTTERY,
                                    fault=f"raise:{FAULT_UNIT}"))
    one, two = root / "one", root / "two"
    one.mkdir()
    two.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc_per_node", "2", str(script), str(two)]
    proc = subprocess.Popen(launch, env=env, cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    runpy.run_path(str(script))["main"](one, full=False)  # meanwhile: the 1-process reference
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    return one, two


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("batch", BATCHES)
def test_two_ranks_match_one_process(runs: tuple[Path, Path], batch: int) -> None:
    """The loss curve (train loss, val loss, accuracies at every evaluation) of 2 ranks is the
    1-process curve on the same global batches; the trained module keeps its own names."""
    one, two = runs
    ref, got = load(one / f"train{batch}_rank0.json"), load(two / f"train{batch}_rank0.json")
    assert [r["iteration"] for r in got["history"]] == [0, 10, 20, 30, 40]
    for a, b in zip(ref["history"], got["history"]):
        for key in ("train_loss", "val_loss"):
            if a["iteration"]:  # no train loss before the first step
                assert b[key] == pytest.approx(a[key], abs=LOSS_TOL), (key, a["iteration"])
        for key, n in (("val_accuracy", ref["n_val"]), ("test_accuracy", ref["n_test"])):
            assert abs(b[key] - a[key]) <= 1 / n + 1e-12, (key, a["iteration"])
    assert got["keys"] == ref["keys"]  # no DDP `module.` prefix left behind


@pytest.mark.parametrize("batch", BATCHES)
def test_each_rank_reads_its_contiguous_shard(runs: tuple[Path, Path], batch: int) -> None:
    """Rank r trains on rows [r*B/2, (r+1)*B/2) of the global batch that 1 process trains on."""
    one, two = runs
    full = load(one / f"train{batch}_rank0.json")["first_batch"]
    assert len(full) == batch
    shards = [load(two / f"train{batch}_rank{r}.json")["first_batch"] for r in (0, 1)]
    assert shards == [full[: batch // 2], full[batch // 2 :]]


@pytest.mark.parametrize("batch", [*BATCHES, "bn"])
def test_every_rank_sees_the_same_numbers(runs: tuple[Path, Path], batch: int | str) -> None:
    """Same evaluations, same train loss and bit-identical weights and buffers on both ranks,
    also with BatchNorm (whose running statistics each rank updates from its own shard)."""
    _, two = runs
    r0, r1 = (load(two / f"train{batch}_rank{r}.json") for r in (0, 1))
    assert r1["history"] == r0["history"]
    assert r1["weights"] == r0["weights"]


def test_only_rank_zero_writes_and_prints(runs: tuple[Path, Path]) -> None:
    """`lotto rethink` under torchrun leaves exactly the files of a 1-process run (no temp
    files, no rows written twice, same columns and cells), and rank 1 prints nothing."""
    one, two = runs
    ref, got = load(one / "files_first.json"), load(two / "files_first.json")
    assert sorted(got) == sorted(ref)
    assert not [f for f in got if f.endswith(".tmp")]
    run_one, run_two = (d / "runs" / "rethink" / "t" for d in (one, two))
    a, b = pd.read_csv(run_one / "metrics.csv"), pd.read_csv(run_two / "metrics.csv")
    assert list(b.columns) == list(a.columns)
    key = ["pruning", "method", "ratio", "mode", "lr", "seed"]
    assert b[key].values.tolist() == a[key].values.tolist()  # each cell once, in order
    assert pd.read_parquet(run_two / "metrics.parquet")[key].equals(b[key])
    logs = [load(two / f"cli_first_rank{r}.json") for r in (0, 1)]
    assert [log["code"] for log in logs] == [0, 0]
    assert "ticket" in logs[0]["stdout"] and logs[1]["stdout"] == ""


def test_resume_and_force_under_torchrun(runs: tuple[Path, Path]) -> None:
    """A re-run recomputes nothing (metrics byte-identical); --force starts afresh once."""
    two = runs[1]
    first, resume, force = (load(two / f"files_{t}.json") for t in ("first", "resume", "force"))
    assert resume["metrics.csv"] == first["metrics.csv"]  # same rows, same seconds: no retraining
    assert sorted(force) == sorted(first)
    rows = [len(pd.read_csv(d / "runs" / "rethink" / "t" / "metrics.csv")) for d in runs]
    assert rows[1] == rows[0]  # after the forced re-run: each cell once
    assert force["metrics.csv"] != first["metrics.csv"]  # retrained (new wall-clock seconds)
    assert [load(two / f"cli_{t}_rank{r}.json")["code"] for t in ("resume", "force")
            for r in (0, 1)] == [0, 0, 0, 0]


def lottery_rows(log: dict) -> pd.DataFrame:
    frame = pd.read_csv(io.StringIO(log["metrics.csv"]))
    return frame.set_index(["seed", "round", "variant"]).sort_index()


def assert_same_training(got: pd.Series, ref: pd.Series) -> None:
    """One unit's row: the 1-process numbers up to float32 summation order."""
    for key in ("train_loss", "val_loss"):
        assert got[key] == pytest.approx(ref[key], abs=LOSS_TOL), key
    for key in ("val_accuracy", "test_accuracy"):
        assert abs(got[key] - ref[key]) <= 0.002, key  # one flipped prediction at most


def test_unit_failed_on_one_rank_fails_on_every_rank_and_is_retried(
    runs: tuple[Path, Path],
) -> None:
    """A fault on rank 1 alone (issue 16): no rank writes the unit's row, failures.csv names
    rank 1's error, both ranks exit 1, the next unit is trained by both ranks together (its row
    is the 1-process row, not rank 0's reinit mixed with rank 1's random_mask), and a re-run
    retries exactly the failed unit, which then matches the 1-process row too."""
    one, two = runs
    ref = lottery_rows(load(one / "lottery_reference_rank0.json"))
    logs = [load(two / f"lottery_fault_rank{r}.json") for r in (0, 1)]
    assert [log["code"] for log in logs] == [1, 1], [log["stderr"][-2000:] for log in logs]
    rows = lottery_rows(logs[0])
    assert sorted(rows.index) == [(0, 0, "ticket"), (0, 1, "random_mask"), (0, 1, "ticket")]
    for unit in rows.index:
        assert_same_training(rows.loc[unit], ref.loc[unit])
    failures = pd.read_csv(io.StringIO(logs[0]["failures.csv"]))
    assert failures[["seed", "round", "variant", "status"]].values.tolist() == [
        [0, 1, "reinit", "failed"]]
    assert failures.error[0].startswith("rank 1: RuntimeError: injected fault")
    assert FAULT_UNIT in logs[0]["stdout"] and "1 failed" in logs[0]["stdout"]

    retry = load(two / "lottery_retry_rank0.json")
    assert retry["code"] == 0 and "failures.csv" not in retry
    again = lottery_rows(retry)
    assert sorted(again.index) == sorted(ref.index)
    assert again.drop(index=(0, 1, "reinit")).equals(rows)  # finished rows are kept as they are
    assert_same_training(again.loc[(0, 1, "reinit")], ref.loc[(0, 1, "reinit")])


@pytest.mark.parametrize(("tag", "needle"), [("workers", "parallel.workers=2 (--workers)"),
                                             ("batch", "parallel.batch_replicas=true")])
def test_parallel_workers_are_refused_under_torchrun(
    runs: tuple[Path, Path], tag: str, needle: str
) -> None:
    """Worker processes or batched replicas would train every unit in full on every rank."""
    for r in (0, 1):
        log = load(runs[1] / f"lottery_{tag}_rank{r}.json")
        assert log["code"] == 2, log["stderr"][-2000:]
        message = log["stderr"].strip()
        assert message.count("\n") == 0 and message.startswith("error:"), message
        assert needle in message and "torchrun" in message


def test_parallel_config_refuses_workers_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    from lotto.parallel import Runner, parallel_config

    monkeypatch.setenv("WORLD_SIZE", "2")
    for section in ({"workers": 2, "backend": "process"}, {"backend": "ray"},
                    {"batch_replicas": True}):
        with pytest.raises(LottoError, match="under torchrun"):
            parallel_config(section)
    with pytest.raises(LottoError, match="under torchrun"):
        Runner("process", workers=2)
    assert parallel_config({}).backend == "serial"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert parallel_config({"workers": 2, "backend": "process"}).workers == 2


# ------------------------------------------------------------------ in-process, no launch


@pytest.fixture
def as_rank(monkeypatch: pytest.MonkeyPatch):
    """Pretend to be rank r of 2 (no process group: barriers are no-ops)."""

    def become(r: int) -> None:
        monkeypatch.setattr(distributed, "rank", lambda: r)
        monkeypatch.setattr(distributed, "world", lambda: 2)
        monkeypatch.setattr(distributed, "barrier", lambda: None)

    return become


def test_other_ranks_write_nothing_but_read_rank_zero(tmp_path: Path, as_rank) -> None:
    cfg = load_config("rethink", overrides=[f"run.runs_dir={tmp_path}", "run.name=t"])
    as_rank(1)
    run = RunDir.open(cfg, "rethink")
    MetricsLog(run).append({"a": 1})
    run.write_json("summary.json", {"a": 1})
    run.save_tensors("x.safetensors", {"x": torch.ones(2)})
    assert not tmp_path.joinpath("rethink").exists()

    as_rank(0)
    run = RunDir.open(cfg, "rethink")
    MetricsLog(run).append({"a": 1})
    run.save_tensors("x.safetensors", {"x": torch.ones(2)})
    before = {p: p.read_bytes() for p in run.path.rglob("*")}

    as_rank(1)  # resumes from what rank 0 wrote, changes nothing
    run = RunDir.open(cfg, "rethink")
    metrics = MetricsLog(run)
    assert metrics.rows == [{"a": 1}]
    assert run.load_tensors("x.safetensors")["x"].tolist() == [1.0, 1.0]
    metrics.append({"a": 2})
    assert metrics.rows == [{"a": 1}, {"a": 2}]  # kept in memory, like rank 0's
    run.write_json("summary.json", {"a": 2})
    RunDir.open(cfg, "rethink", force=True)  # --force: rank 0 deletes, the others must not
    assert {p: p.read_bytes() for p in run.path.rglob("*")} == before


def test_shards_cover_each_global_batch_once(as_rank) -> None:
    order = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    for batch in (64, 63, 2):
        per_epoch = 200 // batch
        parts = []
        for r in (0, 1):
            as_rank(r)
            rows = distributed.shard_rows(batch)
            parts.append(distributed.shard_order(order, per_epoch, batch, rows)
                         .view(per_epoch, -1))
        assert abs(parts[0].shape[1] - parts[1].shape[1]) <= 1
        together = torch.cat(parts, dim=1)
        assert together.equal(order[: per_epoch * batch].view(per_epoch, batch))
    with pytest.raises(LottoError, match="cannot be split"):
        distributed.shard_rows(1)


def test_one_process_is_untouched() -> None:
    assert distributed.world() == 1 and distributed.is_main()
    assert distributed.shard_rows(64) is None
    model = torch.nn.Linear(2, 2)
    net, unwrap = distributed.data_parallel(model, torch.device("cpu"))
    unwrap()
    assert net is model
    loss = torch.tensor(3.0)
    assert distributed.mean_over_ranks(loss) is loss


MID_TRAINING = '''
import sys

from lotto import cli, distributed  # noqa: F401  (registers the commands)
from lotto.cli.app import app

calls = [0]
real = distributed.sync_buffers


def failing(model):  # rank 1 fails inside its second training, between two collectives
    calls[0] += 1
    if distributed.rank() == 1 and calls[0] == 5:
        raise RuntimeError("injected mid-training fault")
    return real(model)


distributed.sync_buffers = failing
app(["--threads", "1", "lottery", "--runs-dir", sys.argv[1], "--name", "mid", *sys.argv[2:]],
    prog_name="lotto")
'''


def test_failure_inside_a_training_stops_every_rank_without_a_row(tmp_path: Path) -> None:
    """A rank failing between two collectives cannot be paired again with the others: the whole
    launch stops (no rank waits forever, none trains on), the unit has no row (a re-run retries
    it) and the finished unit before it is kept."""
    script = tmp_path / "mid.py"
    script.write_text(MID_TRAINING)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    args = [*LOTTERY[:-2], "lottery.controls=[reinit]", "device=cpu"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(tmp_path / "runs"), *args],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # a hang (the bug) must not leave its ranks behind
    )
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert "rank 1: RuntimeError: injected mid-training fault during a data-parallel training" \
        in stderr, stderr[-3000:]
    metrics = pd.read_csv(tmp_path / "runs" / "lottery" / "mid" / "metrics.csv")
    assert metrics[["round", "variant"]].values.tolist() == [[0, "ticket"]]
