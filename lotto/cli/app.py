"""The Typer app and what every command shares: error handling and the common options."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from lotto.errors import LottoError

if TYPE_CHECKING:  # start-up: the CLI modules import nothing heavy at module level (issue 12)
    from omegaconf import DictConfig

app = typer.Typer(
    name="lotto",
    help="Experiment runner for efficient networks: lottery tickets, pruning, MobileNetV3.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="CPU threads for training (torch.set_num_threads); 1 avoids thread "
            "oversubscription on a busy machine. Default: torch's choice.",
        ),
    ] = None,
) -> None:
    """lotto: lottery tickets, pruning, MobileNetV3 construction and latency, from one CLI."""
    if threads is not None:
        if threads < 1:
            err_console.print("[bold red]error:[/] --threads must be at least 1")
            raise typer.Exit(2)
        import torch

        torch.set_num_threads(threads)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: join its group
        from lotto import distributed

        distributed.init_if_launched()
        if not distributed.is_main():
            console.quiet = True  # rank 0 alone prints tables and progress bars


# Tables are wide: when output goes to a file or a CI log (no terminal), don't crop at 80.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True)


# --help: each option's default, read from the command's YAML (lotto/configs/<command>.yaml) when
# help is shown (the options default to None so that a command knows what was given). Options
# named alike in every command map through COMMON_KEYS; a command's own names win.
COMMON_KEYS = {"seed": "seed", "device": "device", "runs_dir": "run.runs_dir",
               "workers": "parallel.workers"}
HELP_KEYS: dict[str, dict[str, str | tuple[str, ...]]] = {
    "lottery": {"prune_rate": "lottery.prune_rate", "rounds": "lottery.rounds",
                "seeds": "lottery.seeds", "from_": "model.name"},
    "rethink": {"pruning": "pruning.kinds",
                "method": ("pruning.structured.methods", "pruning.unstructured.methods"),
                "ratio": ("pruning.structured.ratios", "pruning.unstructured.ratios"),
                "modes": ("pruning.structured.modes", "pruning.unstructured.modes"),
                "lrs": "grid.lrs", "seeds": "grid.seeds", "from_run": "from"},
    "search": {"device": "latency.device", "target_latency": "target_latency", "w": "reward.w",
               "constraint": "reward.constraint", "controller": "search.controller",
               "samples": "search.samples", "preset": "reward.preset"},
    "netadapt": {"from_": "from", "pretrained": "pretrained", "device": "latency.device",
                 "target": "latency.target", "metric": "netadapt.metric",
                 "delta": "netadapt.delta", "long_ft": "netadapt.long_ft"},
    "build-v3": {"variant": "variant", "from_": "from", "export": "export",
                 "pretrained": "pretrained", "resolution": "resolution"},
    "bench": {"model": "model", "arch": "arch", "resolution": "resolution",
              "width_mult": "width_mult", "source": "source", "threads": "threads",
              "space": "lut.space"},
    "pipeline": {"targets": "targets", "seeds": "seeds", "methods": "methods",
                 "device": "latency.device"},
}
# The overrides argument's example, per command: keys of that command's YAML (a test loads them).
OVERRIDE_EXAMPLES = {
    "lottery": "train.lr=0.01 lottery.rounds=5 data.name=mnist",
    "rethink": "train.iterations=5ep grid.seeds=1 data.name=cifar10",
    "search": "search.samples=48 train.lr=0.01 data.subset=5000",
    "netadapt": "netadapt.max_steps=10 netadapt.short_ft=30it",
    "build-v3": "changes.se=false train_steps=final resolution=192",
    "bench": "measure.min_run_time=2 dtype=bfloat16 width_mult=0.75",
    "pipeline": "final.iterations=1000it search.search.samples=24 netadapt.seed_train=300it",
}


def _shown(value: Any) -> str:
    """A YAML default as --help shows it."""
    if value is None:
        return "null (automatic)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def annotate_help(command: Any, name: str) -> None:
    """Fill in the defaults, the overrides example and the epilog of `command` (a click
    command) from `lotto/configs/<name>.yaml`: called only when --help is shown."""
    from omegaconf import OmegaConf

    from lotto.config import defaults_path, load_defaults

    if not defaults_path(name).exists():  # runs, compare: no YAML
        return
    defaults = load_defaults(name)
    keys = {**COMMON_KEYS, **HELP_KEYS.get(name, {})}
    for param in command.params:
        if param.name == "overrides" and name in OVERRIDE_EXAMPLES:
            param.help = (f"key=value overrides of any key in the command's YAML, e.g. "
                          f"{OVERRIDE_EXAMPLES[name]}")
            continue
        key = keys.get(param.name or "")
        if key is None or getattr(param, "is_flag", False):
            continue
        paths = (key,) if isinstance(key, str) else key
        values = [OmegaConf.select(defaults, k, default=_MISSING) for k in paths]
        if any(v is _MISSING for v in values):
            continue  # a common option name this command's YAML does not hold
        shown = [_shown(OmegaConf.to_container(v) if OmegaConf.is_config(v) else v)
                 for v in values]
        # the option's own default stays None (so a command knows what was given): this is
        # only the text --help shows
        param.default = (shown[0] if len(paths) == 1 else
                         "; ".join(f"{k.split('.')[-2]}: {v}" for k, v in zip(paths, shown)))
        param.show_default = True
    if name in OVERRIDE_EXAMPLES:
        command.epilog = (f"Every default: lotto/configs/{name}.yaml; any key there can be set "
                          f"as key=value or in a --config YAML file.")


_MISSING = object()


def _help_class(name: str) -> type:
    from typer.core import TyperCommand

    class LottoCommand(TyperCommand):
        def format_help(self, ctx: Any, formatter: Any) -> None:
            annotate_help(self, name)
            super().format_help(ctx, formatter)

    return LottoCommand


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a batch scheduler, torchrun stopping its ranks), handled as Ctrl-C is:
    every cleanup path that runs on Ctrl-C (workers stopped, finished work kept) runs."""


def _terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (and receives the signal)
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def lotto_command(name: str, **kwargs: Any) -> Callable:
    """Register a command whose user mistakes print one line and exit with status 2, and that
    stops on Ctrl-C (exit 130) or SIGTERM (exit 143) keeping its finished work."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                with _sigterm_as_interrupt():
                    return fn(*args, **kw)
            except LottoError as e:
                err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt as e:
                what = "terminated" if isinstance(e, Terminated) else "interrupted"
                err_console.print(
                    f"{what}: finished work is kept; re-run the same command to resume"
                )
                raise typer.Exit(143 if isinstance(e, Terminated) else 130) from None

        app.command(name, cls=_help_class(name), **kwargs)(wrapper)
        return wrapper

    return decorate


# Options shared by the experiment commands (Annotated aliases keep the signatures short).
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file merged over the defaults.")
]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="key=value overrides of the command's YAML defaults.")
]
NameOpt = Annotated[
    str | None,
    typer.Option("--name", help="Run name (default: <command>-<what differs from the "
                 "defaults>-<hash>)."),
]
RunsDirOpt = Annotated[str | None, typer.Option("--runs-dir", help="Root of the run directories.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda or auto.")]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="Trainings at once: worker processes (parallel.backend=process, chosen for N > 1 "
        "when the backend is serial) or Ray tasks in flight (parallel.workers).",
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Delete an existing run directory of that name and start afresh."),
]


DryRunOpt = Annotated[
    bool,
    typer.Option("--dry-run", help="Print the resolved config, the trainings / measurements "
                 "planned, what a past run would reuse and a rough time estimate; train and "
                 "measure nothing, create no run directory."),
]


def _duration(seconds: float) -> str:
    if seconds != seconds:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def show_plan(plan: Any) -> None:
    """Print a `lotto.experiments.plan.Plan` (the --dry-run of every experiment command)."""
    from lotto.config import to_yaml

    say = functools.partial(console.print, highlight=False, markup=False, soft_wrap=True)
    doing = "trained or measured" if plan.command in ("search", "netadapt", "build-v3", "bench",
                                                      "pipeline") \
        else "trained"
    say(f"# lotto {plan.command} --dry-run: the resolved config (nothing is {doing} and no run "
        "directory is created)")
    say(to_yaml(plan.cfg).rstrip())
    units = plan.trainings if plan.unit == "trainings" else plan.measurements
    n, reused = len(units), sum(u.done for u in units)
    if plan.conflict is not None:
        say(f"run directory: {plan.run_path}: cannot be resumed: {plan.conflict}")
    elif plan.exists:
        say(f"run directory: {plan.run_path} (exists: {reused} of {n} "
            f"{plan.unit_name or plan.unit} finished there are reused)")
    else:
        say(f"run directory: {plan.run_path} (new)")
    for note in plan.notes:
        say(note)
    todo, parts, detail = plan.todo, [], []
    workers = f" on {plan.workers} workers" if plan.workers > 1 and todo else ""
    if plan.trainings:
        steps = sum(t.steps for t in todo)
        evals = sum(t.evals for t in todo)
        word = plan.unit_name if plan.unit == "trainings" and plan.unit_name else "trainings"
        m = len(plan.trainings)
        say(f"{word}: {m} planned, {m - len(todo)} reused, {len(todo)} to train "
            f"({steps:,} steps, {evals:,} evaluations of {plan.eval_examples:,} examples)")
        parts.append(f"trainings {_duration(plan.training_seconds() if todo else 0.0)}{workers}")
        if todo:
            recipe = plan.cfg.get("train") or plan.cfg.final  # pipeline: final trainings
            detail.append(f"one training step of {plan.timed or plan.cfg.model.name} at batch "
                          f"{recipe.batch_size} took {1000 * plan.step_seconds:.1f} ms "
                          f"here just now, one evaluation {plan.eval_seconds:.2f} s")
        else:
            detail.append("nothing left to train")
    if plan.measurements:
        left = plan.to_measure
        m = len(plan.measurements)
        each = max((x.seconds for x in left), default=0.0)
        unknown = sum(not x.estimated for x in left)
        say(f"measurements: {m} planned, {m - len(left)} reused, {len(left)} to measure"
            + (f" (about {each:.1f} s each here)" if each > 0 else " (not estimated)" if unknown
               else " (instant)" if left else ""))
        parts.append(f"measurements {_duration(sum(x.seconds for x in left))}")
        detail.append(f"one measurement about {each:.1f} s: a quick real one just now, scaled "
                      "to the configured run time" if each > 0 else
                      f"{unknown} measurement(s) not estimated" if unknown else
                      "nothing left to measure" if not left else
                      "the measurements need no timing here (a model or table prices them)")
    if plan.stage_seconds:
        parts.insert(0, f"stages {_duration(plan.stage_seconds)}")
    if len(parts) > 1:  # say what each part takes
        detail.insert(0, ", ".join(parts))
        workers = ""
    if not parts:
        say("time: nothing to train or measure")
    else:
        loading = ", without data loading" if plan.trainings else ""
        say(f"time: about {_duration(plan.seconds())}{workers} (rough{loading}: "
            f"{'; '.join(detail)})")
    for caveat in plan.caveats:
        say(f"rough: {caveat}")


def with_workers(cfg: DictConfig, workers: int | None) -> DictConfig:
    """`--workers N` > 1 on the serial backend means local worker processes."""
    if workers is not None and workers > 1 and cfg.parallel.backend == "serial":
        cfg.parallel.backend = "process"
    return cfg


def check_parallel(cfg: DictConfig) -> None:
    """Validate the `parallel:` section of a command that does not use it yet (one line, exit 2)."""
    from lotto.experiments.common import parallel_settings

    parallel_settings(cfg)


def report_failures(failures: list[dict], run_path: Path) -> None:
    """List the units that failed or were skipped; exit with status 1 if any failed."""
    if not failures:
        return
    for entry in failures:
        key = ",".join(f"{k}={v}" for k, v in entry.items() if k not in ("status", "error"))
        console.print(f"[bold red]{entry['status']}:[/] {key}: {entry['error']}",
                      highlight=False, soft_wrap=True)
    failed = sum(e["status"] == "failed" for e in failures)
    console.print(f"{failed} failed, {len(failures) - failed} skipped: listed in "
                  f"{run_path / 'failures.csv'}; re-run the same command to retry them "
                  "(finished units are kept)", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def thread_defaults() -> None:
    """Thread settings for a machine that also runs other work; call before torch is imported.

    OpenMP threads that spin-wait for work hold a core even while another process wants it, and
    then wait for each other: on 2 busy cores a LeNet-300-100 training ran 16x slower with torch's
    2 threads than with 1 (README, "Many trainings at once"). PASSIVE makes an idle thread sleep.
    `setdefault`: the user's own setting wins. Called by `lotto.cli` on import, since the
    `lotto` script imports the commands (and torch) before it calls `main`.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    from lotto import cli  # noqa: F401  (registers the commands)

    sys.exit(app())
