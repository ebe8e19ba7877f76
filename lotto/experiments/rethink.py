"""`lotto rethink`: the comparison grid of "Rethinking the Value of Network Pruning".

Per seed and learning rate, a dense baseline is trained from theta_0 (the seed's initial
weights). Each pruning (kind, method, ratio) then selects channels or weights from the trained
baseline, and every requested mode trains a pruned network:

- `finetune`: the baseline's trained weights under the pruned structure/mask, the fine-tuning
  budget at a small learning rate.
- `scratch_e`: a fresh init of the pruned network, the baseline's iterations.
- `scratch_b`: the same fresh init, the baseline's compute: iterations x FLOPs(full) /
  FLOPs(pruned) under `budget.scratch_b`; the learning rate steps at the same fractions.
- `ticket`: theta_0 restricted to the kept structure/mask (the winning-ticket init). With
  `--from` a lottery run that rewound to theta_k, theta_k instead, trained over iterations k..T
  as the lottery trains its pruned rounds.
- `reinit`: a second draw theta_0' from the dense model's init, restricted the same way: the
  ticket's control, differing only in the values (and trained over the ticket's iterations).
  scratch_e instead uses the pruned network's own init: for structured pruning He init at the
  pruned widths, for unstructured pruning Liu et al.'s re-initialisation (`scratch_init`).

The grid is a list of cells (pruning, method, ratio, mode, lr, seed); a cell is finished when its
row is in `metrics.csv`. Tensors reused by later cells (theta_0, trained baselines, selections)
are written before the row that finishes the cell, so an interrupted run resumes where it
stopped and never retrains a finished cell.

Execution: the baselines are one batch of tasks of `lotto.parallel` (`train_cell`), the pruned
cells a second one; this process builds every start network and writes every file. A failed cell
goes to `failures.csv` (a failed baseline skips its pruned cells) and is retried by the next run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress
from torch import nn

from lotto.config import check
from lotto.data import Data
from lotto.errors import LottoError
from lotto.experiments.common import (
    FRESH_STREAM,
    RANDOM_STREAM,
    REINIT_STREAM,
    FailureLog,
    divergence_is_a_user_error,
    finished_work_is_kept,
    inject,
    injected_fault,
    load_or_make,
    open_runner,
    parallel_settings,
    seeded_model,
    shared_data,
    stream_seed,
    task_function,
    unit_label,
)
from lotto.flops import count_macs, count_params
from lotto.models import build_model, copy_state, load_state
from lotto.parallel import Runner, TaskResult
from lotto.pruning import (
    Masks,
    global_groups,
    layer_kinds,
    magnitude_prune,
    masked_state,
    ones_masks,
    prunable,
    random_masks_like,
)
from lotto.runs import MetricsLog, RunDir, mean_std
from lotto.structured import METHODS as STRUCTURED_METHODS
from lotto.structured import (
    Keep,
    as_channel_model,
    prune_channels,
    select_channels,
    slimming_penalty,
)
from lotto.train import (
    TrainResult,
    check_train_config,
    eval_test_mode,
    parse_step,
    resolve_device,
    train,
)

MODES = ("baseline", "finetune", "scratch_e", "scratch_b", "ticket", "reinit")
PRUNED_MODES = MODES[1:]
KINDS = ("structured", "unstructured")
UNSTRUCTURED_METHODS = ("magnitude", "random", "imp")
METHODS = {"structured": STRUCTURED_METHODS, "unstructured": UNSTRUCTURED_METHODS}
SCRATCH_B_RULES = ("flops", "flops+finetune", "epochs")
DENSE = "none"  # pruning and method of the plain baseline rows


@dataclass(frozen=True)
class Cell:
    """One grid cell = one training run = one metrics row."""

    pruning: str
    method: str
    ratio: float
    mode: str
    lr: float
    seed: int

    def key(self) -> dict:
        return asdict(self)


@dataclass
class RethinkResult:
    run: RunDir
    metrics: pd.DataFrame  # one row per cell
    table: pd.DataFrame  # per (pruning, method, ratio, lr, mode): mean and std over seeds
    summary: dict
    failures: list[dict] = field(default_factory=list)  # this run's failed and skipped cells


# ----------------------------------------------------------------------------- configuration


def grid_lrs(cfg: DictConfig) -> list[float]:
    if cfg.grid.lrs is None:
        return [float(cfg.train.lr), round(float(cfg.train.lr) / 10, 12)]
    return [float(x) for x in cfg.grid.lrs]


def prunings(cfg: DictConfig) -> list[tuple[str, str, float]]:
    """(kind, method, ratio) of every pruned configuration, in run order."""
    return [
        (kind, str(method), float(ratio))
        for kind in cfg.pruning.kinds
        for method in cfg.pruning[kind].methods
        for ratio in cfg.pruning[kind].ratios
    ]


def validate(cfg: DictConfig) -> None:
    p = cfg.pruning
    kinds = list(p.kinds)
    check(bool(kinds) and set(kinds) <= set(KINDS), "pruning.kinds",
          f"{kinds} must be a non-empty list of structured, unstructured")
    for key in ("pruning.kinds", *(f"pruning.{k}.{f}" for k in KINDS
                                   for f in ("methods", "ratios", "modes")), "grid.lrs"):
        values = OmegaConf.select(cfg, key)
        if OmegaConf.is_list(values):  # a repeated entry would make two cells with one key
            items = [str(v) for v in values]
            check(len(set(items)) == len(items), key, f"{items} repeats an entry")
    for kind in kinds:
        sec = p[kind]
        for method in sec.methods:
            check(method in METHODS[kind], f"pruning.{kind}.methods",
                  f"unknown method {method!r}; choose one of {', '.join(METHODS[kind])}")
        check(len(sec.methods) > 0, f"pruning.{kind}.methods", "needs at least one method")
        check(len(sec.ratios) > 0, f"pruning.{kind}.ratios", "needs at least one ratio")
        for ratio in sec.ratios:
            ok = isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
            check(ok and 0 < ratio < 1, f"pruning.{kind}.ratios",
                  f"ratio {ratio!r} must be a number in (0, 1) (the fraction removed)")
        for mode in sec.modes:
            check(mode in PRUNED_MODES, f"pruning.{kind}.modes",
                  f"unknown mode {mode!r}; choose from {', '.join(PRUNED_MODES)}")
    if "imp" in p.unstructured.methods and "unstructured" in kinds:
        check(cfg["from"] is not None, "pruning.unstructured.methods",
              "imp reuses a lottery run's masks: give --from runs/lottery/<run>")
    check(p.structured.min_channels >= 1, "pruning.structured.min_channels", "must be at least 1")
    check(p.unstructured.ranking in ("global", "layerwise"), "pruning.unstructured.ranking",
          "global or layerwise")
    check(p.unstructured.min_weights_per_layer >= 0, "pruning.unstructured.min_weights_per_layer",
          "must be at least 0")
    check(p.slimming_l1 >= 0, "pruning.slimming_l1", "must be non-negative")
    if cfg.grid.lrs is not None:
        lrs = cfg.grid.lrs
        ok = isinstance(lrs, (list, tuple)) or OmegaConf.is_list(lrs)
        check(ok and len(lrs) > 0, "grid.lrs", f"{lrs!r} must be a non-empty list of numbers")
        for lr in lrs:
            ok = isinstance(lr, (int, float)) and not isinstance(lr, bool)
            check(ok and lr > 0, "grid.lrs", f"{lr!r} is not a positive learning rate")
    check(cfg.grid.seeds >= 1, "grid.seeds", "must be at least 1")
    ft = cfg.finetune
    if ft.lr is not None:
        ok = isinstance(ft.lr, (int, float)) and not isinstance(ft.lr, bool)
        check(ok and ft.lr > 0, "finetune.lr", f"{ft.lr!r} must be a positive number or null")
    check(0 < ft.lr_scale <= 1, "finetune.lr_scale", f"{ft.lr_scale} must be in (0, 1]")
    check(ft.schedule in ("constant", "step", "cosine"), "finetune.schedule",
          "constant, step or cosine")
    try:
        parse_step(ft.iterations, 1)
    except LottoError as e:
        raise LottoError(f"config key finetune.iterations: {e}") from None
    check(cfg.budget.scratch_b in SCRATCH_B_RULES, "budget.scratch_b",
          f"{cfg.budget.scratch_b!r}: choose one of {', '.join(SCRATCH_B_RULES)}")
    mf = cfg.budget.max_factor
    check(mf is None or (isinstance(mf, (int, float)) and mf >= 1), "budget.max_factor",
          f"{mf!r} must be null or a number >= 1")
    try:
        check_train_config(cfg.train)
    except LottoError as e:
        raise LottoError(f"{e}") from None


def finetune_lr(cfg: DictConfig, lr: float) -> float:
    """The fine-tuning learning rate: `finetune.lr`, or the cell's lr x `finetune.lr_scale`."""
    if cfg.finetune.lr is not None:
        return float(cfg.finetune.lr)
    return lr * float(cfg.finetune.lr_scale)


def scratch_b_iterations(
    base: int,
    flops_full: float,
    flops_pruned: float,
    rule: str,
    finetune: int = 0,
    max_factor: float | None = None,
) -> tuple[int, float]:
    """Scratch-B budget in iterations and the multiplier applied to the baseline's budget.

    `flops` (Liu et al.'s code: epochs x FLOPs(large) / FLOPs(small)); `flops+finetune` adds the
    fine-tuning iterations (the reading its critics argued for); `epochs` = Scratch-E.
    `max_factor` caps the multiplier.
    """
    if rule not in SCRATCH_B_RULES:
        raise LottoError(f"unknown Scratch-B rule {rule!r}; choose {', '.join(SCRATCH_B_RULES)}")
    factor = 1.0 if rule == "epochs" else flops_full / flops_pruned
    if max_factor is not None:
        factor = min(factor, float(max_factor))
    iterations = round(base * factor) + (finetune if rule == "flops+finetune" else 0)
    return iterations, iterations / base


def model_options(cfg: DictConfig) -> dict:
    if cfg["from"] is not None:
        # a lottery run builds its model with the factory defaults and only `dropout`
        return {"dropout": cfg.model.dropout}
    opts = {"dropout": cfg.model.dropout}
    if cfg.model.name == "vgg":
        opts["depth"] = cfg.model.depth
    if cfg.model.name in ("vgg", "resnet20", "resnet56"):
        opts["width"] = cfg.model.width
    return opts


# ----------------------------------------------------------------------------- lottery runs


class LotterySource:
    """A finished (or partly finished) `lotto lottery` run whose tensors the grid reuses."""

    def __init__(self, path: Path, cfg: dict):
        self.path, self.cfg = path, cfg

    @classmethod
    def open(cls, where: str) -> LotterySource:
        path = Path(where).expanduser()
        if not path.is_dir():
            raise LottoError(f"--from {where}: no such run directory")
        saved = path / "config.yaml"
        if not saved.exists():
            raise LottoError(f"--from {where}: not a run directory (no config.yaml)")
        try:
            cfg = yaml.safe_load(saved.read_text())
        except (OSError, yaml.YAMLError):
            raise LottoError(f"--from {where}: config.yaml is unreadable") from None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("lottery"), dict):
            raise LottoError(f"--from {where}: not a lottery run (no lottery section)")
        for key in ("data", "model", "train"):
            if not isinstance(cfg.get(key), dict):
                raise LottoError(f"--from {where}: its config has no {key} section")
        return cls(path.resolve(), cfg)

    def adopt(self, cfg: DictConfig) -> DictConfig:
        """`cfg` with the lottery run's data, model and training recipe, and its seeds."""
        lot = self.cfg
        out = OmegaConf.to_container(cfg, resolve=True)
        out["from"] = str(self.path)
        try:
            for key in ("data", "train"):
                for sub, value in lot[key].items():
                    if sub not in out[key]:
                        raise LottoError(f"--from {self.path}: incompatible run "
                                         f"(unknown key {key}.{sub})")
                    out[key][sub] = value
            out["model"]["name"] = lot["model"]["name"]
            out["model"]["dropout"] = float(lot["model"].get("dropout", 0.0))
            out["seed"] = int(lot["seed"])
        except (KeyError, TypeError, ValueError):
            raise LottoError(f"--from {self.path}: incompatible run (config is missing keys)") \
                from None
        # the grid's replicates are the lottery's seeds: at most as many as it ran
        out["grid"]["seeds"] = min(int(cfg.grid.seeds), int(lot["lottery"].get("seeds", 1)))
        return OmegaConf.create(out)

    @property
    def lr(self) -> float:
        return float(self.cfg["train"]["lr"])

    def _load(self, rel: str, what: str) -> dict[str, torch.Tensor]:
        path = self.path / rel
        if not path.exists():
            raise LottoError(f"--from {self.path}: missing {rel} ({what}); "
                             "finish that lottery run first")
        return RunDir(self.path, "lottery").load_tensors(rel)

    def init(self, seed: int) -> dict[str, torch.Tensor]:
        return self._load(f"seed{seed}/init.safetensors", "theta_0")

    def rewind_iteration(self, per_epoch: int) -> int:
        """k of the lottery's late rewinding (0: its tickets start from theta_0)."""
        try:
            return parse_step(self.cfg["lottery"].get("rewind", 0), per_epoch)
        except LottoError as e:
            raise LottoError(f"--from {self.path}: lottery.rewind: {e}") from None

    def rewind(self, seed: int) -> dict[str, torch.Tensor]:
        return self._load(f"seed{seed}/rewind.safetensors", "theta_k, the rewind point")

    def baseline(self, seed: int) -> tuple[dict[str, torch.Tensor], dict]:
        """Round 0's trained dense weights and its metrics row."""
        state = self._load(f"seed{seed}/round0/trained.safetensors", "the trained dense network")
        rows = []
        if (self.path / "metrics.csv").exists():
            frame = pd.read_csv(self.path / "metrics.csv")
            rows = frame[(frame["round"] == 0) & (frame["variant"] == "ticket")
                         & (frame["seed"] == seed)].to_dict("records")
        if not rows:
            raise LottoError(f"--from {self.path}: no finished round 0 for seed {seed}")
        return state, rows[0]

    def masks(self, seed: int) -> list[tuple[int, Masks]]:
        """(round, masks) of every pruned round saved for `seed`."""
        out = []
        rnd = 1
        while (self.path / f"seed{seed}/round{rnd}/mask.safetensors").exists():
            masks = self._load(f"seed{seed}/round{rnd}/mask.safetensors", "mask")
            out.append((rnd, {k: v.float() for k, v in masks.items()}))
            rnd += 1
        if not out:
            raise LottoError(f"--from {self.path}: method imp needs pruned rounds, and seed {seed} "
                             "has none")
        return out


# ----------------------------------------------------------------------------- the grid


class _Grid:
    """Runs the grid in two batches of tasks: the baselines, then the pruned cells (which need a
    trained baseline), skipping finished cells. Workers train; this process writes every file."""

    KEYS = ("pruning", "method", "ratio", "mode", "lr", "seed")

    def __init__(self, cfg: DictConfig, data: Data, run: RunDir, device: torch.device,
                 metrics: MetricsLog, progress: Progress, lottery: LotterySource | None):
        self.cfg, self.data, self.run, self.device = cfg, data, run, device
        self.metrics, self.progress, self.lottery = metrics, progress, lottery
        self.failures = FailureLog(run, metrics)
        self.starts: dict[int, dict[str, torch.Tensor]] = {}  # per seed: the ticket's start
        self.per_epoch = max(1, len(data.train_x) // cfg.train.batch_size)
        self.base_iterations = parse_step(cfg.train.iterations, self.per_epoch)
        self.ft_iterations = parse_step(cfg.finetune.iterations, self.per_epoch)
        # a late-rewinding lottery's tickets start at theta_k and train iterations k..T
        self.rewind_it = lottery.rewind_iteration(self.per_epoch) if lottery is not None else 0
        dense = self.dense(cfg.seed)
        self.dense_params = count_params(dense)
        self.dense_flops = count_macs(dense, data.in_channels, data.image_size)
        self.overall = progress.add_task("rethink", total=len(list(self.cells())))

    # the cells, in run order: per seed, per lr, the baseline(s) then each pruning's modes
    def cells(self) -> Iterator[Cell]:
        for seed in self.seeds():
            for lr in grid_lrs(self.cfg):
                yield from self.baseline_cells(lr, seed)
                for kind, method, ratio in prunings(self.cfg):
                    for mode in self.cfg.pruning[kind].modes:
                        yield Cell(kind, method, ratio, mode, lr, seed)

    def baseline_cells(self, lr: float, seed: int) -> list[Cell]:
        cells = [Cell(DENSE, DENSE, 0.0, "baseline", lr, seed)]
        if any(m == "slimming" for _, m, _ in prunings(self.cfg)):
            cells.append(Cell("structured", "slimming", 0.0, "baseline", lr, seed))
        return cells

    def seeds(self) -> range:
        return range(self.cfg.seed, self.cfg.seed + self.cfg.grid.seeds)

    def done(self, cell: Cell) -> bool:
        return bool(self.metrics.find(**cell.key()))

    def dense(self, init_seed: int) -> nn.Module:
        return seeded_model(self.cfg.model.name, self.data, init_seed, **model_options(self.cfg))

    def tensors(self, rel: str, make: Callable[[], dict]) -> dict[str, torch.Tensor]:
        return load_or_make(self.run, rel, make)

    def train_cfg(self, lr: float, iterations: int, schedule: str | None = None) -> DictConfig:
        cfg = OmegaConf.create(OmegaConf.to_container(self.cfg.train, resolve=True))
        cfg.lr, cfg.iterations = float(lr), int(iterations)
        if schedule is not None:
            cfg.schedule = schedule
        return cfg

    # ------------------------------------------------------------------ the two batches

    def run_all(self, runner: Runner) -> None:
        fn = task_function(train_cell, runner, self.progress)
        try:
            parents = self.run_baselines(runner, fn)
            self.run_pruned(runner, fn, parents)
        finally:
            self.failures.close(self.KEYS)

    def run_batch(self, runner: Runner, fn: Callable, pending: list[tuple[CellTask, dict]],
                  finish: Callable[[CellTask, dict, Any], None]) -> None:
        """Run the tasks; `finish(task, meta, (result, state))` writes a finished cell's files
        and row, a failed cell goes to failures.csv."""
        def on_result(index: int, result: TaskResult) -> None:
            task, meta = pending[index]
            if result.ok:
                finish(task, meta, result.value)
            else:
                self.failures.add(task.cell.key(), "failed", result.error)
            self.progress.advance(self.overall)

        kept = lambda: f"{len(self.metrics.rows)} finished cells"  # noqa: E731
        with finished_work_is_kept(kept, self.run):
            runner.run(fn, [task for task, _ in pending], on_result=on_result)

    def run_baselines(self, runner: Runner, fn: Callable) -> dict[tuple, dict | None]:
        """Every (seed, lr) baseline, plain and slimming: trained weights, None if it failed."""
        parents: dict[tuple, dict | None] = {}
        pending = []
        for seed in self.seeds():
            theta0 = self.theta0(seed)
            self.starts[seed] = self.ticket_init(seed, theta0)
            for lr in grid_lrs(self.cfg):
                for cell in self.baseline_cells(lr, seed):
                    rel = self.baseline_path(cell)
                    if self.done(cell):
                        parents[self.parent_key(cell)] = self.run.load_tensors(rel)
                        self.progress.advance(self.overall)
                    elif self.from_lottery(cell):
                        parents[self.parent_key(cell)] = self.adopt_baseline(cell, rel)
                        self.progress.advance(self.overall)
                    else:
                        pending.append(self.baseline_task(cell, theta0))

        def finish(task: CellTask, meta: dict, value: tuple) -> None:
            result, state = value
            self.run.save_tensors(self.baseline_path(task.cell), state)  # before the row
            parents[self.parent_key(task.cell)] = state
            self.record(task.cell, meta, self.outcome(task.cell.lr, result, 1.0))

        self.run_batch(runner, fn, pending, finish)
        return parents

    def run_pruned(self, runner: Runner, fn: Callable, parents: dict[tuple, dict | None]) -> None:
        pending = []
        for seed in self.seeds():
            for lr in grid_lrs(self.cfg):
                for kind, method, ratio in prunings(self.cfg):
                    todo = [Cell(kind, method, ratio, m, lr, seed)
                            for m in self.cfg.pruning[kind].modes]
                    self.progress.advance(self.overall, sum(map(self.done, todo)))
                    todo = [c for c in todo if not self.done(c)]
                    if not todo:
                        continue
                    base = Cell(kind if method == "slimming" else DENSE,
                                method if method == "slimming" else DENSE, 0.0, "baseline",
                                lr, seed)
                    parent = parents.get(self.parent_key(base))
                    if parent is None:  # its baseline failed: nothing to prune
                        why = f"needs the baseline ({unit_label(base.key())}), which failed"
                        for cell in todo:
                            self.failures.add(cell.key(), "skipped", why)
                        self.progress.advance(self.overall, len(todo))
                        continue
                    sel = self.selection(kind, method, ratio, lr, seed, parent)
                    pending += [self.pruned_task(c, sel, parent, self.starts[seed]) for c in todo]

        def finish(task: CellTask, meta: dict, value: tuple) -> None:
            result, _ = value
            self.record(task.cell, meta, self.outcome(task.train.lr, result, meta["factor"]))

        self.run_batch(runner, fn, pending, finish)

    # ------------------------------------------------------------------ baselines

    @staticmethod
    def parent_key(cell: Cell) -> tuple:
        return cell.seed, cell.lr, cell.method == "slimming"

    @staticmethod
    def baseline_path(cell: Cell) -> str:
        slimming = "-slimming" if cell.method == "slimming" else ""
        return f"seed{cell.seed}/lr{cell.lr:g}/baseline{slimming}.safetensors"

    def theta0(self, seed: int) -> dict[str, torch.Tensor]:
        rel = f"seed{seed}/init.safetensors"
        if self.lottery is not None:
            return self.tensors(rel, lambda: self.lottery.init(seed))
        return self.tensors(rel, lambda: copy_state(self.dense(seed)))

    def ticket_init(self, seed: int, theta0: dict) -> dict[str, torch.Tensor]:
        """The weights a ticket starts from: theta_0, or the lottery's rewind point theta_k."""
        if not self.rewind_it:
            return theta0
        return self.tensors(f"seed{seed}/rewind.safetensors", lambda: self.lottery.rewind(seed))

    def from_lottery(self, cell: Cell) -> bool:
        """The --from lottery run trained this baseline already (its round 0, at its lr)."""
        return (self.lottery is not None and cell.method != "slimming"
                and math.isclose(cell.lr, self.lottery.lr, rel_tol=1e-9))

    def adopt_baseline(self, cell: Cell, rel: str) -> dict[str, torch.Tensor]:
        state, row = self.lottery.baseline(cell.seed)
        model = self.dense(cell.seed)
        load_state(model, state, f"--from {self.lottery.path}")
        self.run.save_tensors(rel, state)
        self.record(cell, self.measure(model, None), {
            "train_lr": cell.lr, "iterations": int(row["iteration"]),
            "epochs": int(row["iteration"]) / self.per_epoch, "budget_factor": 1.0,
            "test_accuracy": row["test_accuracy"], "val_accuracy": row["val_accuracy"],
            "train_loss": row["train_loss"], "seconds": row["seconds"], "source": "lottery",
            "rewind_iteration": 0,
        })
        return state

    def baseline_task(self, cell: Cell, theta0: dict) -> tuple[CellTask, dict]:
        model = self.dense(cell.seed)
        load_state(model, theta0, f"{self.run.path}/seed{cell.seed}/init.safetensors")
        task = CellTask(self.cfg, cell, self.train_cfg(cell.lr, self.base_iterations),
                        copy_state(model), slimming=cell.method == "slimming", keep_state=True)
        return task, self.measure(model, None)

    # ------------------------------------------------------------------ pruned cells

    def selection(self, kind: str, method: str, ratio: float, lr: float, seed: int,
                  parent: dict) -> Keep | Masks:
        """The kept channels (structured) or the mask (unstructured), chosen from `parent`."""
        rel = f"seed{seed}/lr{lr:g}/{kind}-{method}-{ratio:g}/selection.safetensors"
        model = self.dense(seed)
        load_state(model, parent, "the trained baseline")
        gen = torch.Generator().manual_seed(stream_seed(seed, RANDOM_STREAM))
        if kind == "structured":
            def make() -> dict:
                keep = select_channels(model, method, ratio, generator=gen,
                                       min_channels=self.cfg.pruning.structured.min_channels)
                return {f"layer{i}": k for i, k in enumerate(keep)}
            saved = self.tensors(rel, make)
            return [saved[f"layer{i}"].long() for i in range(len(saved))]

        def make_masks() -> dict:
            if method == "imp":
                return {k: v.bool() for k, v in self.imp_masks(seed, ratio).items()}
            u = self.cfg.pruning.unstructured
            kinds = layer_kinds(model)
            rates = {n: 0.0 if kinds[n] == "output" and not u.prune_output else ratio
                     for n in prunable(model)}
            weights = {n: p.detach() for n, p in prunable(model).items()}
            masks = magnitude_prune(weights, ones_masks(model), rates, u.ranking,
                                    groups=global_groups(model),
                                    min_weights=u.min_weights_per_layer)
            if method == "random":  # same per-layer density as magnitude pruning
                masks = random_masks_like(masks, gen)
            return {k: v.bool() for k, v in masks.items()}

        saved = self.tensors(rel, make_masks)
        # in the model's order, as made: safetensors reloads keys sorted by name, and the
        # random draws of scratch_init follow the order of the masks
        return {k: saved[k].float() for k in _in_model_order(model, saved)}

    def imp_masks(self, seed: int, ratio: float) -> Masks:
        """The lottery round whose density is nearest to 1 - ratio."""
        rounds = self.lottery.masks(seed)

        def gap(item: tuple[int, Masks]) -> float:
            m = item[1]
            kept = sum(v.sum().item() for v in m.values()) / sum(v.numel() for v in m.values())
            return abs(kept - (1 - ratio))

        return min(rounds, key=gap)[1]

    def pruned_task(self, cell: Cell, sel: Keep | Masks, parent: dict,
                    ticket: dict) -> tuple[CellTask, dict]:
        """The task of one pruned cell; `ticket` is the ticket's start (theta_0 or theta_k)."""
        lr_ft = finetune_lr(self.cfg, cell.lr)
        full = self.dense(cell.seed)
        load_state(full, parent, "the trained baseline")
        masks: Masks | None = None
        widths = None
        if cell.pruning == "structured":
            keep: Keep = sel
            if cell.mode == "finetune":
                model = prune_channels(full, keep)
            elif cell.mode == "ticket":
                model = prune_channels(full, keep, state=ticket)
            elif cell.mode == "reinit":
                other = copy_state(self.dense(stream_seed(cell.seed, REINIT_STREAM)))
                model = prune_channels(full, keep, state=other)
            else:  # scratch: the pruned architecture's own fresh init
                torch.manual_seed(stream_seed(cell.seed, FRESH_STREAM))
                model = as_channel_model(full).with_channels([len(k) for k in keep])
            widths = [len(k) for k in keep]
        else:
            masks = sel
            model = full
            if cell.mode == "ticket":
                load_state(model, ticket, "the ticket's init")
            elif cell.mode == "reinit":
                model = self.dense(stream_seed(cell.seed, REINIT_STREAM))
            elif cell.mode in ("scratch_e", "scratch_b"):
                fresh = stream_seed(cell.seed, FRESH_STREAM)
                model = self.dense(fresh)
                scratch_init(model, masks, torch.Generator().manual_seed(fresh))
            load_state(model, masked_state(copy_state(model), masks), "the pruned network")
        factor = 1.0
        if cell.mode == "finetune":
            cfg = self.train_cfg(lr_ft, self.ft_iterations, self.cfg.finetune.schedule)
        elif cell.mode == "scratch_b":
            flops = count_macs(model, self.data.in_channels, self.data.image_size, masks)
            iterations, factor = scratch_b_iterations(
                self.base_iterations, self.dense_flops, flops, self.cfg.budget.scratch_b,
                self.ft_iterations, self.cfg.budget.max_factor)
            cfg = self.train_cfg(cell.lr, iterations)
        else:
            cfg = self.train_cfg(cell.lr, self.base_iterations)
        # the ticket and its reinit control train what the lottery's pruned rounds train
        start = self.rewind_it if cell.mode in ("ticket", "reinit") else 0
        task = CellTask(self.cfg, cell, cfg, copy_state(model), widths, masks,
                        start_iteration=start)
        return task, {**self.measure(model, masks), "factor": factor}

    # ------------------------------------------------------------------ rows

    def outcome(self, lr: float, result: TrainResult, factor: float) -> dict:
        return {
            "train_lr": float(lr), "iterations": result.iterations, "epochs": result.epochs,
            "budget_factor": factor, "test_accuracy": result.test_accuracy,
            "val_accuracy": result.val_accuracy, "train_loss": result.train_loss,
            "seconds": result.seconds, "source": "trained",
            "rewind_iteration": result.start_iteration,
        }

    def measure(self, model: nn.Module, masks: Masks | None) -> dict:
        """Size columns of a cell's row (they depend on the structure and mask, not on values)."""
        params = count_params(model, masks)
        flops = count_macs(model, self.data.in_channels, self.data.image_size, masks)
        # widths of the prunable layers ("-" for a model without channels: never NaN in the CSV)
        channels = getattr(model, "channels", None)
        return {
            "params": params,
            "params_pct": 100.0 * params / self.dense_params,
            "flops": flops,
            "flops_pct": 100.0 * flops / self.dense_flops,
            "channels": "-".join(map(str, channels)) if channels else "-",
        }

    def record(self, cell: Cell, meta: dict, outcome: dict) -> None:
        sizes = {k: v for k, v in meta.items() if k != "factor"}
        self.metrics.append({**cell.key(), **sizes, **outcome})


# ----------------------------------------------------------------------------- the task


@dataclass
class CellTask:
    """One cell's training, as sent to a worker: its recipe and start weights (CPU tensors)."""

    cfg: DictConfig  # the run's config: data, device, model, slimming strength
    cell: Cell
    train: DictConfig  # this cell's recipe: lr, iterations, schedule
    state: dict[str, torch.Tensor]  # the start weights (mask applied)
    widths: list[int] | None = None  # structured: the pruned network's channel widths
    masks: Masks | None = None  # unstructured: the mask it trains under
    slimming: bool = False  # the slimming baseline: L1 on the BN scales
    start_iteration: int = 0
    keep_state: bool = False  # baselines: send the trained weights back
    fault: str | None = None  # tests only: see `lotto.experiments.common.injected_fault`

    def __post_init__(self) -> None:
        self.fault = injected_fault(self.cell.key())  # read here, in the driver


def train_cell(task: CellTask, progress: Progress | None = None) -> tuple[TrainResult,
                                                                          dict | None]:
    """The task function (top-level, so that workers can unpickle it): the worker loads the data
    once (cached per process), builds the cell's network from the config and trains it."""
    cfg, cell = task.cfg, task.cell
    inject(task.fault)
    device = resolve_device(cfg.device)
    data = shared_data(cfg.data, device)
    model = seeded_model(cfg.model.name, data, cell.seed, **model_options(cfg))
    if task.widths is not None:
        model = as_channel_model(model).with_channels(list(task.widths))
    load_state(model, task.state, f"the start weights of {unit_label(cell.key())}")
    hook = slimming_penalty(model, cfg.pruning.slimming_l1) if task.slimming else None
    desc = f"seed {cell.seed} lr {cell.lr:g} {cell.method} {cell.ratio:g} {cell.mode}"
    with divergence_is_a_user_error(desc):
        result = train(model, data, task.train, seed=cell.seed, device=device, masks=task.masks,
                       after_backward=hook, progress=progress, desc=desc,
                       start_iteration=task.start_iteration, eval_test=eval_test_mode(task.train))
    return result, copy_state(model) if task.keep_state else None


def _in_model_order(model: nn.Module, names: Iterable[str]) -> list[str]:
    wanted = set(names)
    return [n for n, _ in model.named_parameters() if n in wanted]


@torch.no_grad()
def scratch_init(model: nn.Module, masks: Masks, generator: torch.Generator) -> None:
    """Liu et al.'s re-initialisation of an unstructured-pruned network for Scratch-E/B.

    Their weight-level code (cifar/weight-level/cifar_E.py and cifar_B.py) redraws every masked
    conv as N(0, 2/n) with n = surviving weights / in_channels: He init in fan-out mode, the
    fan-out (out_channels x kernel area) counted over the surviving weights only. Linear layers
    keep the model's own init: that code prunes and re-initialises convolutions only. The
    caller applies the mask.
    """
    modules = dict(model.named_modules())
    for name in _in_model_order(model, masks):  # one draw order, however `masks` is ordered
        mask = masks[name]
        module = modules[name.rsplit(".", 1)[0] if "." in name else ""]
        surviving = float(mask.sum())
        if not isinstance(module, nn.Conv2d) or surviving == 0:
            continue
        weight = module.weight
        fan_out = surviving / weight.shape[1]  # the mean surviving fan-out per input channel
        draw = torch.randn(weight.shape, generator=generator) * math.sqrt(2.0 / fan_out)
        weight.copy_(draw.to(weight.device, weight.dtype))


# ----------------------------------------------------------------------------- summaries


def grid_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (pruning, method, ratio, lr, mode)."""
    keys = ["pruning", "method", "ratio", "lr", "mode"]
    cols = ["test_accuracy", "params_pct", "flops_pct", "epochs", "budget_factor", "seconds"]
    return mean_std(metrics, keys, cols)


def summarize(table: pd.DataFrame, metrics: pd.DataFrame | None = None,
              num_classes: int | None = None) -> dict:
    """The paper's two questions, answered from the table (differences in accuracy points);
    with `metrics` and `num_classes`, a `warning` when the cells stayed at chance or diverged."""
    def acc(rows: pd.DataFrame, mode: str) -> tuple[float, float] | None:
        hit = rows[rows["mode"] == mode]
        if hit.empty:
            return None
        return 100 * float(hit.test_accuracy.iloc[0]), 100 * float(hit.test_accuracy_std.iloc[0])

    out: dict = {"baseline": {}, "comparisons": []}
    for lr, rows in table[table["mode"] == "baseline"].groupby("lr", sort=False):
        for r in rows.itertuples():
            name = "dense" if r.pruning == DENSE else f"{r.method}-trained"
            out["baseline"][f"{name}@lr={lr:g}"] = [100 * r.test_accuracy,
                                                     100 * r.test_accuracy_std]
    pruned = table[table["mode"] != "baseline"]
    for (kind, method, ratio, lr), rows in pruned.groupby(
            ["pruning", "method", "ratio", "lr"], sort=False):
        item = {"pruning": kind, "method": method, "ratio": float(ratio), "lr": float(lr),
                "params_pct": float(rows.params_pct.mean()),
                "flops_pct": float(rows.flops_pct.mean())}
        accs = {m: acc(rows, m) for m in PRUNED_MODES}
        item.update({m: v for m, v in accs.items() if v is not None})
        scratch = [accs[m][0] for m in ("scratch_e", "scratch_b") if accs[m] is not None]
        if accs["finetune"] is not None and scratch:
            item["best_scratch_minus_finetune"] = max(scratch) - accs["finetune"][0]
        if accs["ticket"] is not None and accs["reinit"] is not None:
            item["ticket_minus_reinit"] = accs["ticket"][0] - accs["reinit"][0]
        out["comparisons"].append(item)
    if metrics is not None and num_classes is not None:
        from lotto.experiments.sanity import warning

        base = table[(table["mode"] == "baseline") & (table["pruning"] == DENSE)]
        losses = metrics["train_loss"] if "train_loss" in metrics else ()
        out["warning"] = warning(metrics.test_accuracy, num_classes, losses,
                                 reference=float(base.test_accuracy.max()) if len(base) else None,
                                 what="cells")
    return out


def run_rethink(
    cfg: DictConfig, *, force: bool = False, progress: Progress, runner: Runner | None = None
) -> RethinkResult:
    """`runner`: workers to reuse (tests, scripts); default: a Runner made from `cfg.parallel`."""
    start = time.perf_counter()
    lottery = LotterySource.open(str(cfg["from"])) if cfg["from"] is not None else None
    if lottery is not None:
        cfg = lottery.adopt(cfg)
    validate(cfg)
    parallel_settings(cfg)  # a bad parallel section is a user error before the run directory
    device = resolve_device(cfg.device)
    data = shared_data(cfg.data, device)
    # fail on a bad model, or structured pruning of a model without channels, before the run dir
    model = build_model(cfg.model.name, data.in_channels, data.num_classes, data.image_size,
                        **model_options(cfg))
    if "structured" in cfg.pruning.kinds:
        as_channel_model(model, cfg.model.name)
    if lottery is not None:
        load_state(model, lottery.init(cfg.seed), f"--from {lottery.path}: seed{cfg.seed}/init")
    run = RunDir.open(cfg, "rethink", force=force)
    metrics = MetricsLog(run)
    grid = _Grid(cfg, data, run, device, metrics, progress, lottery)
    with open_runner(cfg) if runner is None else nullcontext(runner) as tasks:
        grid.run_all(tasks)
    frame = metrics.frame()
    table = grid_table(frame) if len(frame) else pd.DataFrame()
    summary = (summarize(table, frame, data.num_classes) if len(frame)
               else {"baseline": {}, "comparisons": []})
    summary["run_dir"] = str(run.path)
    summary["wall_seconds"] = time.perf_counter() - start
    summary["cells"] = len(frame)
    summary["failures"] = grid.failures.entries
    run.write_json("summary.json", summary)
    if len(frame):  # bars per pruning: fine-tune / scratch / ticket / reinit (lotto.report.plots)
        from lotto.report.plots import save_run_figure
        from lotto.runs import atomic_write

        save_run_figure("rethink", frame, run.file("rethink.png"), write=atomic_write)
    return RethinkResult(run, frame, table, summary, grid.failures.entries)
