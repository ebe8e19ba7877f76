"""`--device adb` / `adb:SERIAL`: an exported ExecuTorch program timed on an Android phone.

Protocol (the MobileNetV3 / MnasNet one: a mobile runtime, one big core, batch 1):

1. `adb devices`: exactly one usable phone, or the one named by `adb:SERIAL`; an unauthorised
   or offline phone, none, or several without a serial is a one-line error.
2. Fingerprint: `getprop` (model, SoC, Android release and SDK, ABI); the fastest core from
   `/sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq` (ties: the highest-numbered), its
   governor; the runner's sha256 and the ExecuTorch version that exported the program.
3. Push the program (`.pte`) and the runner to `remote_dir`, then run
   `taskset <mask of that core> <runner> --model_path=... --num_executions=<warmup + runs>
   --cpu_threads=<threads>`, `repeats` times.
4. Parse the runner's log: the ExecuTorch `executor_runner` (examples/portable/executor_runner,
   built for arm64 with the XNNPACK backend linked) logs through ET_LOG, whose posix PAL format is
   `I 00:00:01.234567 executorch:executor_runner.cpp:NNN] <message>`, with the messages
   `Iteration 3 of 60: 12.345000 ms` (one per execution, newer builds) and
   `Model executed successfully 60 time(s) in 740.700000 ms.` (every build). Per-iteration
   lines: the first `warmup` of each invocation are dropped, the rest are the samples. Only the
   total line (older builds): one sample per invocation, total / executions, warm-up included
   (said in the detail). The runner must be built with the posix PAL (the default; the
   android preset's PAL logs to logcat instead), see the README.

Nothing is written to the run directory until a timing parsed; every failure is a LottoError.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lotto.errors import LottoError

ITERATION = re.compile(r"Iteration (\d+) of (\d+): ([0-9.eE+-]+) ms")
TOTAL = re.compile(r"Model executed successfully (\d+) time\(s\) in ([0-9.eE+-]+) ms")
LOG_LINE = re.compile(r"^([DIEF]) \d+:\d\d:\d\d\.\d+ executorch:([^\]]+)\] (.*)$")
CPUFREQ = re.compile(r"/cpu(\d+)/cpufreq/cpuinfo_max_freq\s+(\d+)")
PROPS = {"model": "ro.product.model", "manufacturer": "ro.product.manufacturer",
         "soc": "ro.soc.model", "platform": "ro.board.platform",
         "android": "ro.build.version.release", "sdk": "ro.build.version.sdk",
         "abi": "ro.product.cpu.abi"}


@dataclass
class AdbSettings:
    """`bench.adb` in the config."""

    adb: str = "adb"  # the adb executable: a name on PATH or a path
    runner: str | None = None  # local path of the arm64 runner binary (executor_runner + XNNPACK)
    remote_dir: str = "/data/local/tmp/lotto"
    runs: int = 50  # timed executions per invocation (after the warm-up ones)
    repeats: int = 3  # runner invocations
    threads_flag: str | None = "--cpu_threads"  # null for runner builds without it
    core: int | None = None  # pin to this core; null = the fastest by cpuinfo_max_freq
    timeout: float = 600.0  # seconds per adb call
    extra_args: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdbSettings:
        known = {k: v for k, v in dict(d).items() if k in cls.__dataclass_fields__}
        if "extra_args" in known:
            known["extra_args"] = [str(a) for a in (known["extra_args"] or [])]
        s = cls(**known)
        if s.runs < 1 or s.repeats < 1:
            raise LottoError("bench.adb.runs and bench.adb.repeats must be >= 1")
        return s


# ---------------------------------------------------------------------------------------------
# Parsing


@dataclass
class RunnerOutput:
    iterations_ms: list[float]
    total: tuple[int, float] | None  # (executions, ms)
    errors: list[str]


def parse_runner_output(text: str) -> RunnerOutput:
    """Timings and error lines from executor_runner's log (see the module docstring)."""
    iterations: list[float] = []
    total = None
    errors: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        m = ITERATION.search(line)
        if m:
            iterations.append(float(m.group(3)))
            continue
        m = TOTAL.search(line)
        if m:
            total = (int(m.group(1)), float(m.group(2)))
            continue
        log = LOG_LINE.match(line)
        if log and log.group(1) in "EF":
            errors.append(log.group(3))
    return RunnerOutput(iterations, total, errors)


def samples_ms(out: RunnerOutput, warmup: int) -> tuple[list[float], str]:
    """Timed samples of one invocation and how they were read."""
    if out.iterations_ms:
        kept = out.iterations_ms[warmup:]
        if not kept:
            raise LottoError(f"the runner logged {len(out.iterations_ms)} executions, all "
                             f"warm-up ({warmup}); raise bench.adb.runs")
        return kept, "per-iteration lines, warm-up dropped"
    if out.total is not None and out.total[0] > 0:
        return [out.total[1] / out.total[0]], "total / executions (warm-up included)"
    raise LottoError("the runner printed no timing line ('Iteration i of n: t ms' or 'Model "
                     "executed successfully n time(s) in t ms')" +
                     (f"; its last error: {out.errors[-1]}" if out.errors else
                      "; is it executor_runner built with the posix PAL (see README)?"))


def fastest_core(cpufreq_text: str) -> tuple[int, int] | None:
    """(cpu, max kHz) with the highest cpuinfo_max_freq (ties: highest cpu), or None."""
    cores = [(int(f), int(c)) for c, f in CPUFREQ.findall(cpufreq_text)]
    if not cores:
        return None
    freq, cpu = max(cores)
    return cpu, freq


def parse_devices(text: str) -> list[tuple[str, str]]:
    """(serial, state) from `adb devices`.

    A device line is `<serial><TAB><state>` (state: device, unauthorized, offline, "no
    permissions (...)", ...). Everything else adb prints there is not a device: its banner,
    "* daemon started successfully", and "adb server version (41) doesn't match this client
    (39); killing..." when an old server is replaced, so only tab-separated lines count.
    """
    out = []
    for line in text.splitlines():
        serial, tab, state = line.strip().partition("\t")
        serial, state = serial.strip(), state.strip()
        if not tab or not serial or not state or any(c.isspace() for c in serial):
            continue
        out.append((serial, state))
    return out


# ---------------------------------------------------------------------------------------------
# A connected phone


def _which(adb: str) -> str:
    path = shutil.which(adb) if os.sep not in adb else (adb if os.access(adb, os.X_OK) else None)
    if not path:
        raise LottoError(f"--device adb: no `{adb}` executable on PATH; install Android "
                         "platform-tools or set bench.adb.adb to its path")
    return path


def check_runner(runner: str | None) -> Path:
    if not runner:
        raise LottoError("--device adb needs a runner binary: set bench.adb.runner to your arm64 "
                         "build of ExecuTorch's executor_runner with XNNPACK (see README)")
    path = Path(runner).expanduser()
    if not path.is_file():
        raise LottoError(f"bench.adb.runner {runner}: no such file")
    if not os.access(path, os.X_OK):
        raise LottoError(f"bench.adb.runner {runner}: not executable (chmod +x it)")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Session:
    """One phone over adb."""

    def __init__(self, adb: str, serial: str, settings: AdbSettings, runner: Path):
        self.adb, self.serial, self.settings, self.runner = adb, serial, settings, runner
        self.device = f"adb:{serial}"
        self._fingerprint: dict[str, Any] | None = None

    def call(self, *args: str, what: str | None = None) -> str:
        cmd = [self.adb, "-s", self.serial, *args]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True,
                               timeout=self.settings.timeout)
        except subprocess.TimeoutExpired:
            raise LottoError(f"adb {what or args[0]} on {self.serial} timed out after "
                             f"{self.settings.timeout:g} s") from None
        if p.returncode != 0:
            out = (p.stderr.strip() or p.stdout.strip()).splitlines()
            raise LottoError(f"adb {what or args[0]} on {self.serial} failed (exit "
                             f"{p.returncode}): {out[-1] if out else 'no output'}")
        return p.stdout

    def shell(self, command: str, what: str | None = None) -> str:
        return self.call("shell", command, what=what or "shell")

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is not None:
            return self._fingerprint
        text = self.shell("; ".join(f"echo {k}=$(getprop {p})" for k, p in PROPS.items()),
                          "getprop")
        info: dict[str, Any] = {"device": "adb", "serial": self.serial}
        for line in text.splitlines():
            k, _, v = line.partition("=")
            if k in PROPS:
                info[k] = v.strip() or None
        freq_text = self.shell(
            "for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq; do "
            "echo $f $(cat $f 2>/dev/null); done", "cpufreq")
        fast = fastest_core(freq_text)
        core = self.settings.core
        if core is None and fast is not None:
            core = fast[0]
        info["core"] = core
        info["core_max_khz"] = fast[1] if fast and core == fast[0] else None
        info["core_rule"] = ("bench.adb.core" if self.settings.core is not None else
                             "fastest cpuinfo_max_freq" if fast else
                             "cpufreq unreadable: not pinned")
        if core is not None:
            gov = self.shell(f"cat /sys/devices/system/cpu/cpu{core}/cpufreq/scaling_governor "
                             "2>/dev/null || true", "governor").strip()
            info["governor"] = gov or None
        info["runner"] = self.runner.name
        info["runner_sha256"] = _sha256(self.runner)
        self._fingerprint = info
        return info

    def measure(self, exported: Any, *, threads: int = 1, warmup: int = 10) -> tuple[Any, dict]:
        """Push program + runner, run pinned, parse; returns (Timing, detail)."""
        from lotto.latency.measure import _stats

        s = self.settings
        fp = self.fingerprint()
        remote = s.remote_dir.rstrip("/")
        with tempfile.TemporaryDirectory() as tmp:
            local = exported.path
            if local is None:
                local = Path(tmp) / "model.pte"
                local.write_bytes(exported.buffer)
            digest = hashlib.sha256(exported.buffer).hexdigest()[:16]
            pte = f"{remote}/model_{digest}.pte"
            runner = f"{remote}/{self.runner.name}"
            self.shell(f"mkdir -p {shlex.quote(remote)}", "mkdir")
            self.call("push", str(local), pte, what="push (program)")
            self.call("push", str(self.runner), runner, what="push (runner)")
            self.shell(f"chmod 755 {shlex.quote(runner)}", "chmod")
        args = [runner, f"--model_path={pte}", f"--num_executions={warmup + s.runs}"]
        if s.threads_flag:
            args.append(f"{s.threads_flag}={threads}")
        args += s.extra_args
        core = fp.get("core")
        prefix = f"taskset {1 << int(core):x} " if core is not None else ""
        command = prefix + " ".join(shlex.quote(a) for a in args) + " 2>&1"
        times: list[float] = []
        how = ""
        for _ in range(s.repeats):
            text = self._run(command)
            kept, how = samples_ms(parse_runner_output(text), warmup)
            times.extend(kept)
        timing = _stats([t / 1e3 for t in times], 1, threads, self.device)
        detail = {"fingerprint": {**fp, "exporter": f"executorch {exported.executorch}"},
                  "runs": s.runs, "repeats": s.repeats, "warmup": warmup, "samples": how,
                  "command": command, "threads": threads}
        return timing, detail

    def _run(self, command: str) -> str:
        cmd = [self.adb, "-s", self.serial, "shell", command]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True,
                               timeout=self.settings.timeout)
        except subprocess.TimeoutExpired:
            raise LottoError(f"the runner on {self.serial} timed out after "
                             f"{self.settings.timeout:g} s") from None
        text = p.stdout + p.stderr
        if p.returncode != 0:
            out = parse_runner_output(text)
            last = out.errors[-1] if out.errors else (text.strip().splitlines() or ["-"])[-1]
            from lotto.latency.xnnpack import op_in_message

            ops = [op for op in map(op_in_message, out.errors or [last]) if op]
            op = ops[0] if ops else None
            raise LottoError(f"the runner failed on {self.serial} (exit {p.returncode})"
                             + (f" on op {op}" if op else "") + f": {last[:200]}")
        return text


def connect(device: str, settings: AdbSettings | None = None) -> Session:
    """Check adb, the runner and the phone before anything is exported or written."""
    from lotto.latency.devices import adb_serial

    settings = settings or AdbSettings()
    adb = _which(settings.adb)
    runner = check_runner(settings.runner)
    try:
        p = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LottoError(f"`adb devices` failed: {e}") from None
    if p.returncode != 0:
        raise LottoError(f"`adb devices` failed: {(p.stderr or p.stdout).strip()[:200]}")
    devices = parse_devices(p.stdout)
    serial = adb_serial(device)
    if serial is not None:
        states = dict(devices)
        if serial not in states:
            listed = ", ".join(s for s, _ in devices) or "none"
            raise LottoError(f"--device adb:{serial}: no such device attached (attached: "
                             f"{listed})")
        chosen = [(serial, states[serial])]
    else:
        if not devices:
            raise LottoError("--device adb: no Android device attached (`adb devices` lists "
                             "none); connect one with USB debugging on")
        if len(devices) > 1:
            listed = ", ".join(f"{s} ({st})" for s, st in devices)
            raise LottoError(f"--device adb: {len(devices)} devices attached ({listed}); "
                             "choose one with --device adb:SERIAL")
        chosen = devices
    serial, state = chosen[0]
    if state == "unauthorized":
        raise LottoError(f"device {serial} is unauthorised: unlock it and accept the USB "
                         "debugging prompt, then retry")
    if state != "device":
        raise LottoError(f"device {serial} is {state}, not ready (reconnect it)")
    return Session(adb, serial, settings, runner)
