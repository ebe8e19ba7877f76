"""`lotto lottery`: iterative magnitude pruning with rewinding (Frankle & Carbin 2019).

Per seed: initialise theta_0 and save it; round 0 trains the dense network. Each later round
prunes a fraction of the surviving weights of the previous round's *trained ticket*, rewinds the
survivors to theta_0 (or theta_k), and trains again. Controls use the round's schedule and data
order: `reinit` (same mask, a fresh random init) and `random_mask` (a random mask with the same
per-layer density, the ticket's init).

Late rewinding (Frankle et al. 2020, OpenLTH): with `lottery.rewind` = k > 0 every pruned round,
controls included, trains the remaining iterations k..T from its start weights, with the
learning-rate schedule and batch order continuing from step k, and a fresh optimizer (momentum
and Adam moments are not rewound: OpenLTH saves and restores only the weights).

Files under the run directory, per seed `seed<S>/`: `init.safetensors` (theta_0),
`rewind.safetensors` (theta_k, late rewinding only), and per round `round<R>/mask.safetensors`
and `round<R>/trained.safetensors` (the trained ticket). A (seed, round, variant) is finished
when its row is in `metrics.csv`; the tensors are written before the row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig
from rich.progress import Progress
from torch import nn

from lotto.config import check
from lotto.data import Data, load_data
from lotto.errors import LottoError
from lotto.experiments.common import (
    RANDOM_STREAM,
    REINIT_STREAM,
    divergence_is_a_user_error,
    load_or_make,
    seeded_model,
    stream_seed,
)
from lotto.models import build_model, copy_state, load_state
from lotto.pruning import (
    Masks,
    density,
    global_groups,
    layer_rates,
    magnitude_prune,
    masked_state,
    ones_masks,
    random_masks_like,
)
from lotto.runs import MetricsLog, RunDir, mean_std
from lotto.train import check_train_config, parse_step, resolve_device, train

VARIANTS = ("ticket", "reinit", "random_mask")


@dataclass
class LotteryResult:
    run: RunDir
    metrics: pd.DataFrame  # one row per (seed, round, variant)
    table: pd.DataFrame  # per (round, variant): mean and std over seeds
    summary: dict


def validate(cfg: DictConfig) -> None:
    lot = cfg.lottery
    check(0 < lot.prune_rate < 1, "lottery.prune_rate", f"{lot.prune_rate} must be in (0, 1)")
    check(lot.rounds >= 1, "lottery.rounds", f"{lot.rounds} must be at least 1")
    check(lot.seeds >= 1, "lottery.seeds", "must be at least 1")
    for key in ("conv_rate_factor", "output_rate_factor"):
        check(
            0 <= lot[key] * lot.prune_rate < 1,
            f"lottery.{key}",
            "times prune_rate must be in [0, 1)",
        )
    check(lot.ranking in ("layerwise", "global"), "lottery.ranking", "layerwise or global")
    check(lot.min_weights_per_layer >= 0, "lottery.min_weights_per_layer", "must be at least 0")
    unknown = set(lot.controls) - set(VARIANTS[1:])
    check(not unknown, "lottery.controls", f"unknown {sorted(unknown)}; use reinit, random_mask")
    check_train_config(cfg.train)
    try:
        parse_step(lot.rewind, 1)
    except LottoError as e:
        raise LottoError(f"config key lottery.rewind: {e}") from None


def check_rewind(cfg: DictConfig, data: Data) -> None:
    per_epoch = max(1, len(data.train_x) // cfg.train.batch_size)
    rewind, total = (parse_step(v, per_epoch) for v in (cfg.lottery.rewind, cfg.train.iterations))
    check(
        rewind < total,
        "lottery.rewind",
        f"{cfg.lottery.rewind} is not before the end of training ({total} iterations)",
    )


class _Seed:
    """One replicate: the chain of rounds for one seed."""

    def __init__(
        self,
        cfg: DictConfig,
        seed: int,
        data: Data,
        run: RunDir,
        device: torch.device,
        metrics: MetricsLog,
        curves: MetricsLog,
        progress: Progress,
        step: Callable,
    ):
        self.cfg, self.seed, self.data, self.run, self.device = cfg, seed, data, run, device
        self.metrics, self.curves, self.progress, self.step = metrics, curves, progress, step
        self.dir = f"seed{seed}"

    def model(self, init_seed: int) -> nn.Module:
        return seeded_model(
            self.cfg.model.name, self.data, init_seed, dropout=self.cfg.model.dropout
        )

    def run_rounds(self) -> None:
        lot = self.cfg.lottery
        template = self.model(self.seed)
        theta_0 = load_or_make(
            self.run, f"{self.dir}/init.safetensors", lambda: copy_state(template)
        )
        load_state(template, theta_0, f"{self.run.path / self.dir / 'init.safetensors'}")
        per_epoch = max(1, len(self.data.train_x) // self.cfg.train.batch_size)
        rewind_it = parse_step(lot.rewind, per_epoch)
        # global ranking is one ranking over all hidden layers (OpenLTH's sparse_global), so
        # conv and FC layers share prune_rate there: conv_rate_factor is a layer-wise setting
        conv_factor = 1.0 if lot.ranking == "global" else lot.conv_rate_factor
        rates = layer_rates(template, lot.prune_rate, conv_factor, lot.output_rate_factor)
        groups = global_groups(template)
        masks: Masks = ones_masks(template)
        trained: dict[str, torch.Tensor] | None = None
        theta_k: dict[str, torch.Tensor] | None = None if rewind_it else theta_0

        for rnd in range(lot.rounds + 1):
            prev = trained
            if rnd > 0:
                masks = self.round_masks(rnd, masks, prev, rates, groups)
            if theta_k is None and self.done(0, "ticket"):
                theta_k = self.run.load_tensors(f"{self.dir}/rewind.safetensors")
            variants = ["ticket"] + (list(lot.controls) if rnd > 0 else [])
            trained = None
            for variant in variants:
                if self.done(rnd, variant):
                    self.step()
                    continue
                capture: dict[int, Callable] = {}
                if rnd == 0 and rewind_it:

                    def keep(model: nn.Module) -> None:
                        nonlocal theta_k
                        theta_k = copy_state(model)
                        self.run.save_tensors(f"{self.dir}/rewind.safetensors", theta_k)

                    capture[rewind_it] = keep
                start = theta_0 if rnd == 0 else theta_k
                model, used = self.start(variant, rnd, start, masks)
                what = f"round {rnd} ({variant}, seed {self.seed})"
                kept = f"{len(self.metrics.rows)} finished (round, variant) rows"
                with divergence_is_a_user_error(what, kept, self.run):
                    result = train(
                        model,
                        self.data,
                        self.cfg.train,
                        seed=self.seed * 1000 + rnd,
                        device=self.device,
                        masks=used,
                        checkpoints=capture,
                        progress=self.progress,
                        desc=f"seed {self.seed} round {rnd} {variant}",
                        # pruned rounds resume the dense run's schedule at the rewind point
                        start_iteration=0 if rnd == 0 else rewind_it,
                    )
                if variant == "ticket":
                    trained = copy_state(model)
                    if rnd == 0:
                        self.run.save_tensors(
                            f"{self.dir}/round0/mask.safetensors",
                            {k: v.bool() for k, v in masks.items()},
                        )
                    self.run.save_tensors(f"{self.dir}/round{rnd}/trained.safetensors", trained)
                self.record(rnd, variant, used, result)
                self.step()

    def round_masks(
        self, rnd: int, masks: Masks, prev: dict | None, rates: dict, groups: dict
    ) -> Masks:
        """Prune the previous round's trained ticket (or reload the mask a past run saved)."""
        path = f"{self.dir}/round{rnd}/mask.safetensors"
        if self.run.has(path):
            return {k: v.float() for k, v in self.run.load_tensors(path).items()}
        weights = self.trained(rnd - 1, prev)
        lot = self.cfg.lottery
        new = magnitude_prune(
            weights,
            masks,
            rates,
            lot.ranking,
            groups=groups,
            min_weights=lot.min_weights_per_layer,
        )
        self.run.save_tensors(path, {k: v.bool() for k, v in new.items()})
        return new

    def done(self, rnd: int, variant: str) -> bool:
        return bool(self.metrics.find(seed=self.seed, round=rnd, variant=variant))

    def trained(self, rnd: int, in_memory: dict | None) -> dict[str, torch.Tensor]:
        if in_memory is not None:
            return in_memory
        return self.run.load_tensors(f"{self.dir}/round{rnd}/trained.safetensors")

    def start(self, variant: str, rnd: int, start: dict, masks: Masks) -> tuple[nn.Module, Masks]:
        """The model a variant trains from, and the mask it trains under."""
        model = self.model(self.seed)
        if variant == "reinit":
            fresh = self.model(stream_seed(self.seed, REINIT_STREAM, rnd))
            load_state(model, masked_state(copy_state(fresh), masks), "reinit")
            return model, masks
        if variant == "random_mask":
            gen = torch.Generator().manual_seed(stream_seed(self.seed, RANDOM_STREAM, rnd))
            masks = random_masks_like(masks, gen)
        load_state(model, masked_state(start, masks), f"{self.run.path / self.dir}")
        return model, masks

    def record(self, rnd: int, variant: str, masks: Masks, result: object) -> None:
        remaining = density(masks)
        key = {"round": rnd, "variant": variant, "seed": self.seed, "density": remaining}
        self.curves.drop(round=rnd, variant=variant, seed=self.seed)  # a recomputed unit
        self.curves.append([{**key, **row} for row in result.history])
        self.metrics.append(
            {
                **key,
                "weights_remaining_pct": 100 * remaining,
                "weights_remaining": int(sum(m.sum().item() for m in masks.values())),
                "start_iteration": result.start_iteration,
                "iteration": result.iterations,
                "train_loss": result.train_loss,
                "val_loss": result.val_loss,
                "val_accuracy": result.val_accuracy,
                "test_accuracy": result.test_accuracy,
                "early_stop_iteration": result.early_stop_iteration,
                "early_stop_val_loss": result.early_stop_val_loss,
                "early_stop_test_accuracy": result.early_stop_test_accuracy,
                "seconds": result.seconds,
            }
        )


def round_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (round, variant)."""
    cols = ["weights_remaining_pct", "test_accuracy", "early_stop_test_accuracy",
            "early_stop_iteration", "seconds"]
    return mean_std(metrics, ["round", "variant"], cols).sort_values(["round", "variant"])


def smallest_within(table: pd.DataFrame, variant: str, dense: float, tol: float = 0.01) -> dict:
    """The smallest density down to which `variant` stays within `tol` of the dense accuracy."""
    rows = table[(table.variant == variant) | (table["round"] == 0)].sort_values("round")
    best = None
    for _, row in rows.iterrows():
        if row.early_stop_test_accuracy < dense - tol:
            break
        best = row
    if best is None or (variant != "ticket" and best["round"] == 0):
        return {"round": None, "weights_remaining_pct": None}
    return {
        "round": int(best["round"]),
        "weights_remaining_pct": float(best.weights_remaining_pct),
        "early_stop_test_accuracy": float(best.early_stop_test_accuracy),
    }


def summarize(table: pd.DataFrame) -> dict:
    dense = table[(table["round"] == 0) & (table.variant == "ticket")].iloc[0]
    out = {
        "dense_early_stop_test_accuracy": float(dense.early_stop_test_accuracy),
        "dense_test_accuracy": float(dense.test_accuracy),
        "dense_early_stop_iteration": float(dense.early_stop_iteration),
        "rounds_finished": int(table["round"].max()),
        "smallest_within_1pt": {
            v: smallest_within(table, v, float(dense.early_stop_test_accuracy))
            for v in table.variant.unique()
        },
    }
    # the paper's headline comparison: the round nearest 10% of weights remaining
    pruned = table[table["round"] > 0]
    if len(pruned):
        near = pruned.iloc[(pruned.weights_remaining_pct - 10).abs().argsort()].iloc[0]["round"]
        at = table[table["round"] == near].set_index("variant")
        out["near_10pct"] = {
            "round": int(near),
            **{
                f"{v}_{c}": float(at.loc[v, c])
                for v in at.index
                for c in (
                    "weights_remaining_pct",
                    "early_stop_test_accuracy",
                    "test_accuracy",
                    "early_stop_iteration",
                )
            },
        }
    return out


def plot(table: pd.DataFrame, metrics: pd.DataFrame, path: Path) -> None:
    """The paper's figure: accuracy and early-stop iteration against weights remaining."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    dense = table[table["round"] == 0]
    for variant in VARIANTS:
        rows = table[(table.variant == variant) | ((table["round"] == 0) & (variant != "ticket"))]
        if variant not in set(table.variant):
            continue
        rows = rows.sort_values("round")
        per_seed = metrics[(metrics.variant == variant) | (metrics["round"] == 0)]
        spread = (
            per_seed.groupby("round")
            .agg(
                lo_acc=("early_stop_test_accuracy", "min"),
                hi_acc=("early_stop_test_accuracy", "max"),
                lo_it=("early_stop_iteration", "min"),
                hi_it=("early_stop_iteration", "max"),
            )
            .loc[rows["round"]]
        )
        x = rows.weights_remaining_pct.to_numpy()
        for ax, col, lo, hi in (
            (axes[0], "early_stop_test_accuracy", "lo_acc", "hi_acc"),
            (axes[1], "early_stop_iteration", "lo_it", "hi_it"),
        ):
            scale = 100 if col.endswith("accuracy") else 1
            ax.plot(x, rows[col] * scale, marker="o", ms=3, label=variant)
            ax.fill_between(x, spread[lo] * scale, spread[hi] * scale, alpha=0.2)
    for ax, label in zip(axes, ("test accuracy at early stop (%)", "early-stop iteration")):
        ax.set_xscale("log")
        lowest = float(table.weights_remaining_pct.min())
        ax.set_xticks([t for t in (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1) if t >= lowest * 0.9])
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.invert_xaxis()
        ax.set_xlabel("weights remaining (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].axhline(
        float(dense[dense.variant == "ticket"].early_stop_test_accuracy.iloc[0]) * 100,
        color="gray",
        ls=":",
        lw=1,
    )
    axes[0].legend()
    fig.suptitle("Iterative magnitude pruning: mean over seeds, band = min..max")
    fig.tight_layout()
    from lotto.runs import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def run_lottery(cfg: DictConfig, *, force: bool = False, progress: Progress) -> LotteryResult:
    validate(cfg)
    device = resolve_device(cfg.device)
    data = load_data(cfg.data, device)
    check_rewind(cfg, data)
    build_model(
        cfg.model.name,
        data.in_channels,
        data.num_classes,
        data.image_size,
        dropout=cfg.model.dropout,
    )  # fail on a bad model before creating the run dir
    run = RunDir.open(cfg, "lottery", force=force)
    metrics, curves = MetricsLog(run), MetricsLog(run, "curves")
    lot = cfg.lottery
    per_seed = 1 + lot.rounds * (1 + len(lot.controls))
    overall = progress.add_task("lottery", total=per_seed * lot.seeds)

    def step() -> None:
        progress.advance(overall)

    for seed in range(cfg.seed, cfg.seed + lot.seeds):
        _Seed(cfg, seed, data, run, device, metrics, curves, progress, step).run_rounds()
    frame = metrics.frame()
    table = round_table(frame)
    summary = summarize(table)
    summary["run_dir"] = str(run.path)
    run.write_json("summary.json", summary)
    plot(table, frame, run.file("lottery.png"))
    return LotteryResult(run, frame, table, summary)
