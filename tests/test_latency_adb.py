"""`--device adb`: parsing the ExecuTorch runner's log, and the whole path through a STAND-IN adb.

There is no phone here. The stand-in `adb` below is a script that answers `adb devices`, `push`
and `shell` the way adb does, against a fake phone file system under a temp folder (getprop
values and cpufreq files written by the test), records every command it receives, and runs the
pushed "runner" on this host. The runner is also a stand-in: a script that loads the pushed
.pte with executorch.runtime and logs in the real executor_runner's format (ET_LOG, posix PAL:
`I 00:00:00.001000 executorch:executor_runner.cpp:NNN] Iteration i of n: t ms`,
`Model executed successfully n time(s) in t ms.`), taken from
examples/portable/executor_runner/executor_runner.cpp and runtime/platform/default/posix.cpp.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from lotto.cli import app
from lotto.errors import LottoError
from lotto.latency import predict
from lotto.latency.adb import (
    AdbSettings,
    connect,
    fastest_core,
    parse_devices,
    parse_runner_output,
    samples_ms,
)
from lotto.latency.xnnpack import available

needs_et = pytest.mark.skipif(not available(), reason="ExecuTorch is not installed "
                              "(pip install -e '.[device]'): the stand-in runner needs it")

# A real executor_runner log (format of ExecuTorch 1.x, posix PAL), 3 executions.
REAL_LOG = """\
I 00:00:00.000512 executorch:executor_runner.cpp:232] Model file model.pte is loaded.
I 00:00:00.000545 executorch:executor_runner.cpp:241] Using method forward
I 00:00:00.000551 executorch:executor_runner.cpp:289] Setting up planned buffer 0, size 602112.
I 00:00:00.003120 executorch:executor_runner.cpp:341] Model loaded in 2.514000 ms.
I 00:00:00.019884 executorch:executor_runner.cpp:519] Iteration 1 of 3: 16.702000 ms
I 00:00:00.031990 executorch:executor_runner.cpp:519] Iteration 2 of 3: 12.050000 ms
I 00:00:00.044001 executorch:executor_runner.cpp:519] Iteration 3 of 3: 11.950000 ms
I 00:00:00.044010 executorch:executor_runner.cpp:531] Model executed successfully 3 time(s) \
in 40.702000 ms.
I 00:00:00.044020 executorch:executor_runner.cpp:535] 1 outputs:
OutputX 0: tensor(sizes=[1, 1000], [-0.0123, 0.0456, ...])
"""
OLD_LOG = """\
I 00:00:00.003120 executorch:executor_runner.cpp:200] Model loaded in 2.514000 ms.
I 00:00:00.044010 executorch:executor_runner.cpp:230] Model executed successfully 4 time(s) \
in 48.000000 ms.
"""

STAND_IN_ADB = r'''#!{python}
# STAND-IN for Android's adb (tests only): a fake phone under $STANDIN_ROOT.
import json, os, shutil, subprocess, sys
root, log = os.environ["STANDIN_ROOT"], os.environ["STANDIN_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
args = sys.argv[1:]
devices = [d.split(":") for d in os.environ.get("STANDIN_DEVICES", "").split(",") if d]
if args == ["devices"]:
    print("List of devices attached")
    for serial, state in devices:
        print(f"{serial}\t{state}")
    print()
    sys.exit(0)
if args[0] == "-s":
    args = args[2:]
def local(p):
    return root + p if p.startswith(("/data/", "/sys/")) else p
if args[0] == "push":
    os.makedirs(os.path.dirname(local(args[2])), exist_ok=True)
    shutil.copy(args[1], local(args[2]))
    print(f"{args[1]}: 1 file pushed")
    sys.exit(0)
if args[0] == "shell":
    cmd = " ".join(args[1:]).replace("/data/", root + "/data/").replace("/sys/", root + "/sys/")
    prelude = ('getprop() { cat "' + root + '/props/$1" 2>/dev/null; }; '
               'taskset() { echo "$1" >> "' + root + '/taskset"; shift; "$@"; }; ')
    p = subprocess.run(["bash", "-c", prelude + cmd], capture_output=True, text=True)
    sys.stdout.write(p.stdout)
    sys.stderr.write(p.stderr)
    sys.exit(p.returncode)
sys.exit(f"stand-in adb: unsupported {args}")
'''

STAND_IN_RUNNER = r'''#!{python}
# STAND-IN for ExecuTorch's executor_runner (tests only): runs the .pte on this host with
# executorch.runtime and logs like the real runner (ET_LOG, posix PAL format).
import sys, time
flags = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:])
def log(msg, level="I"):
    sys.stderr.write(f"{level} 00:00:00.000100 executorch:executor_runner.cpp:519] {msg}\n")
if "fail_op" in flags:
    log(f"Missing operator: [0] {flags['fail_op']}", "E")
    log("Loading of method forward failed with status 0x14", "E")
    sys.exit(1)
import torch
from executorch.runtime import Runtime
method = Runtime.get().load_program(flags["model_path"]).load_method("forward")
x = torch.ones(method.metadata.input_tensor_meta(0).sizes())
n, total = int(flags["num_executions"]), 0.0
log(f"Model file {flags['model_path']} is loaded.")
for i in range(n):
    t0 = time.perf_counter(); method.execute([x]); ms = (time.perf_counter() - t0) * 1e3
    total += ms
    log(f"Iteration {i + 1} of {n}: {ms:f} ms")
log(f"Model executed successfully {n} time(s) in {total:f} ms.")
print("OutputX 0: tensor(sizes=[1, 4], [...])")
'''


def test_parse_real_runner_log():
    out = parse_runner_output(REAL_LOG)
    assert out.iterations_ms == [16.702, 12.05, 11.95] and out.total == (3, 40.702)
    assert samples_ms(out, 1) == ([12.05, 11.95], "per-iteration lines, warm-up dropped")
    old = parse_runner_output(OLD_LOG)  # builds without per-iteration lines
    assert old.iterations_ms == [] and samples_ms(old, 2)[0] == [12.0]
    with pytest.raises(LottoError, match="no timing line"):
        samples_ms(parse_runner_output("E 00:00:00.1 executorch:x.cpp:1] boom\n"), 0)
    with pytest.raises(LottoError, match="all warm-up"):
        samples_ms(out, 3)


def test_fastest_core_and_devices():
    text = ("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq 1785600\n"
            "/sys/devices/system/cpu/cpu4/cpufreq/cpuinfo_max_freq 2419200\n"
            "/sys/devices/system/cpu/cpu7/cpufreq/cpuinfo_max_freq 2841600\n"
            "/sys/devices/system/cpu/cpu6/cpufreq/cpuinfo_max_freq 2419200\n")
    assert fastest_core(text) == (7, 2841600) and fastest_core("") is None
    # ties at the top frequency go to the highest-numbered core, whatever the listing order
    # (first-listed, last-listed, lowest-numbered and text-ordered "10" < "9" rules all fail)
    tie = ("/sys/devices/system/cpu/cpu{}/cpufreq/cpuinfo_max_freq {}\n")
    cores = [(0, 1785600), (4, 2419200), (6, 2419200), (1, 1785600)]
    for order in (cores, cores[::-1]):
        assert fastest_core("".join(tie.format(c, f) for c, f in order)) == (6, 2419200)
    many = [(9, 2000000), (10, 2000000), (2, 1000000)]
    for order in (many, many[::-1]):
        assert fastest_core("".join(tie.format(c, f) for c, f in order)) == (10, 2000000)
    listed = "List of devices attached\nA1\tdevice\nB2\tunauthorized\n\n"
    assert parse_devices(listed) == [("A1", "device"), ("B2", "unauthorized")]


def test_parse_devices_ignores_adb_server_messages():
    # what `adb devices` prints when it replaces a server of another version (issue 16)
    text = ("adb server version (41) doesn't match this client (39); killing...\n"
            "* daemon started successfully\n"
            "List of devices attached\n"
            "emulator-5554\tdevice\n"
            "0123456789ABCDEF\tno permissions (user in plugdev group); see [http://x]\n\n")
    assert parse_devices(text) == [
        ("emulator-5554", "device"),
        ("0123456789ABCDEF", "no permissions (user in plugdev group); see [http://x]")]
    assert parse_devices("adb server version (41) doesn't match this client (39)\n") == []


@pytest.fixture
def phone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A stand-in adb on PATH, a fake phone file system and a stand-in runner."""
    bin_dir, root = tmp_path / "bin", tmp_path / "phone"
    bin_dir.mkdir()
    for name, text in (("adb", STAND_IN_ADB), ("runner", STAND_IN_RUNNER)):
        path = bin_dir / name
        path.write_text(text.replace("{python}", sys.executable))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    props = {"ro.product.model": "Pixel 1 (stand-in)", "ro.soc.model": "MSM8996",
             "ro.build.version.release": "10", "ro.build.version.sdk": "29",
             "ro.product.manufacturer": "Google", "ro.product.cpu.abi": "arm64-v8a"}
    (root / "props").mkdir(parents=True)
    for k, v in props.items():
        (root / "props" / k).write_text(v + "\n")
    for cpu, freq in ((0, 1593600), (1, 1593600), (2, 2150400), (3, 2150400)):
        d = root / "sys/devices/system/cpu" / f"cpu{cpu}" / "cpufreq"
        d.mkdir(parents=True)
        (d / "cpuinfo_max_freq").write_text(f"{freq}\n")
        (d / "scaling_governor").write_text("schedutil\n")
    log = tmp_path / "adb_calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_ROOT", str(root))
    monkeypatch.setenv("STANDIN_LOG", str(log))
    monkeypatch.setenv("STANDIN_DEVICES", "STANDIN01:device")
    return {"root": root, "log": log, "runner": str(bin_dir / "runner"), "bin": bin_dir}


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@needs_et
def test_measure_through_stand_in_adb(phone: dict):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                           nn.Flatten(), nn.Linear(8, 4))
    settings = {"runner": phone["runner"], "runs": 6, "repeats": 2}
    lat = predict(module, "adb", input_shape=(1, 3, 16, 16), warmup=2, adb=settings)
    assert lat.source == "measured" and lat.device == "adb:STANDIN01" and lat.ms > 0
    d = lat.detail
    assert d["n"] == 12 and d["samples"] == "per-iteration lines, warm-up dropped"
    fp = d["fingerprint"]
    assert fp["model"] == "Pixel 1 (stand-in)" and fp["soc"] == "MSM8996"
    assert fp["android"] == "10" and fp["sdk"] == "29" and fp["abi"] == "arm64-v8a"
    assert fp["core"] == 3 and fp["core_max_khz"] == 2150400  # fastest; ties -> highest cpu
    assert fp["governor"] == "schedutil" and len(fp["runner_sha256"]) == 64
    assert fp["exporter"].startswith("executorch ")
    calls = _calls(phone["log"])
    pushes = [c for c in calls if "push" in c]
    assert any(c[-1].endswith(".pte") for c in pushes)
    assert any(c[-1] == "/data/local/tmp/lotto/runner" for c in pushes)
    runs = [c for c in calls if c[:3] == ["-s", "STANDIN01", "shell"] and "taskset" in c[3]]
    assert len(runs) == 2  # repeats
    assert "taskset 8 " in runs[0][3] and "--num_executions=8" in runs[0][3]
    assert "--cpu_threads=1" in runs[0][3]
    assert (phone["root"] / "taskset").read_text().split() == ["8", "8"]


def test_bad_adb_setups(phone: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ok = AdbSettings(runner=phone["runner"])
    assert connect("adb", ok).serial == "STANDIN01"
    with pytest.raises(LottoError, match="no `adb-not-installed` executable on PATH"):
        connect("adb", AdbSettings(adb="adb-not-installed", runner=phone["runner"]))
    with pytest.raises(LottoError, match="needs a runner binary"):
        connect("adb", AdbSettings())
    with pytest.raises(LottoError, match="no such file"):
        connect("adb", AdbSettings(runner=str(tmp_path / "missing")))
    plain = tmp_path / "not_executable"
    plain.write_text("x")
    with pytest.raises(LottoError, match="not executable"):
        connect("adb", AdbSettings(runner=str(plain)))
    monkeypatch.setenv("STANDIN_DEVICES", "")
    with pytest.raises(LottoError, match="no Android device attached"):
        connect("adb", ok)
    monkeypatch.setenv("STANDIN_DEVICES", "A1:device,B2:device")
    with pytest.raises(LottoError, match="2 devices attached.*adb:SERIAL"):
        connect("adb", ok)
    assert connect("adb:B2", ok).serial == "B2"
    with pytest.raises(LottoError, match="no such device attached"):
        connect("adb:C3", ok)
    monkeypatch.setenv("STANDIN_DEVICES", "A1:unauthorized")
    with pytest.raises(LottoError, match="unauthorised"):
        connect("adb", ok)


@needs_et
def test_runner_failure_names_the_op(phone: dict):
    from lotto.latency.adb import Session

    session = Session("adb", "STANDIN01", AdbSettings(runner=phone["runner"], repeats=1,
                                                       extra_args=["fail_op=aten::foo.out"]),
                      Path(phone["runner"]))
    with pytest.raises(LottoError, match=r"runner failed on STANDIN01.*aten::foo\.out"):
        session._run(f"{phone['runner']} --model_path=x.pte fail_op=aten::foo.out 2>&1")


@pytest.mark.parametrize("devices, expect", [
    ("", "no Android device attached"),
    ("A1:device,B2:device", "2 devices attached"),
    ("A1:unauthorized", "unauthorised"),
])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(
        phone: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, devices: str, expect: str):
    if not available():
        pytest.skip("ExecuTorch is not installed: the missing-extra error comes first")
    monkeypatch.setenv("STANDIN_DEVICES", devices)
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["bench", "--device", "adb", "--model", "mobilenet_v3_small",
                                      "--runs-dir", str(runs), f"adb.runner={phone['runner']}"])
    assert result.exit_code == 2, result.output
    assert expect in result.output and len(result.output.strip().splitlines()) == 1
    assert not runs.exists()  # no run directory a later run could mistake for a measurement
