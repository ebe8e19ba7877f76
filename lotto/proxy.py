"""The proxy task `search` and `netadapt` train on: a spec trained briefly on the configured data.

Latency is priced at the spec's own resolution on the target device (`lotto.latency.pricer`);
accuracy comes from this proxy task (as in MnasNet and NetAdapt): the same widths and blocks
with the data's channels and classes, and early strides cut until the last feature map is at
least `min_output` px (`adapt_to_resolution`, as `build-v3 --train` does). Fewer cut strides are
the cheapest knob: at 28 px, `min_output: 1` keeps MobileNetV3-Small's strides
(28 -> 14 -> 7 -> 4 -> 2 -> 1), about 16x fewer multiply-adds per image than `min_output: 4`.

`train_spec` trains one proxy in this process. `Job` + `run_job` are the same training as a
task of `lotto.parallel` (picklable, data cached per worker): search trains each sample from
scratch and reads its validation accuracy; netadapt starts from given (truncated) weights,
keeps the trained state and, for its final comparisons, also reads the test accuracy. What a
command does with a diverged loss (a failed sample, or a stopped run) is its own wrapper's
choice: `run_job` raises `lotto.train.TrainingDiverged` as the trainer does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress

from lotto.arch import ArchSpec, adapt_to_resolution
from lotto.arch.build import build_network
from lotto.data import Data
from lotto.train import evaluate, resolve_device, seed_everything, train


def proxy_spec(spec: ArchSpec, data: Data, bn_momentum: float = 0.1, min_output: int = 4
               ) -> ArchSpec:
    """`spec` as it is trained on `data`: the data's channels, classes and image size, early
    strides cut so the last map is >= `min_output` px. Widths are unchanged, so weights map
    one to one between the spec and its proxy."""
    return adapt_to_resolution(
        spec.replace(in_channels=data.in_channels, num_classes=data.num_classes,
                     bn_momentum=bn_momentum),
        data.image_size, min_output=min_output,
    )


@dataclass
class ProxyResult:
    val_accuracy: float
    val_loss: float
    iterations: int
    seconds: float
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # CPU weights after training
    test_accuracy: float | None = None  # `Job.test` only
    trained: ArchSpec | None = None  # the proxy spec the weights fit (`run_job`)


def train_spec(
    spec: ArchSpec,
    data: Data,
    train_cfg: DictConfig,
    *,
    seed: int,
    device: torch.device,
    bn_momentum: float = 0.1,
    min_output: int = 4,
    state: dict[str, torch.Tensor] | None = None,
    keep_state: bool = False,
    progress: Progress | None = None,
    desc: str = "proxy",
) -> ProxyResult:
    """Train the proxy of `spec` with the shared trainer: from a fresh init drawn from `seed`,
    or from `state` (inherited weights, e.g. NetAdapt's truncated parent) when given."""
    small = proxy_spec(spec, data, bn_momentum, min_output)
    seed_everything(seed)
    model = build_network(small)
    if state is not None:
        model.load_state_dict(state, strict=True)
    result = train(model, data, train_cfg, seed=seed, device=device, progress=progress,
                   desc=desc, eval_start=False, eval_test=False)
    kept: dict[str, Any] = {}
    if keep_state:
        kept = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    return ProxyResult(result.val_accuracy, result.val_loss,
                       result.iterations, result.seconds, kept, trained=small)


@dataclass
class Job:
    """One proxy training as a task of `lotto.parallel`: picklable, for a worker.

    `spec` is the network at its own resolution; it is trained as its proxy (`proxy_spec`) on
    the `data` section's data set (loaded once per worker), with the `train` section for
    `iterations` steps (None: `train.iterations`; 0: no training, `state` only evaluated).
    """

    spec: ArchSpec
    data: DictConfig
    train: DictConfig
    seed: int  # init (when no `state`) and data order
    device: str
    iterations: int | None = None
    bn_momentum: float = 0.1
    min_output: int = 4
    state: dict[str, torch.Tensor] | None = None  # start weights of the spec's proxy
    keep_state: bool = False  # return the trained weights (on the CPU)
    test: bool = False  # also the test accuracy (final comparisons only, never selection)
    label: str = "proxy"  # the progress bar's text
    fault: str | None = None  # tests only (LOTTO_TEST_FAULT, `lotto.tasks.inject`)


def run_job(job: Job, progress: Progress | None = None) -> ProxyResult:
    """The task function: train (or only evaluate) the proxy of `job.spec` and score it on the
    validation split (and the test split under `job.test`). `seconds`: wall time of the training
    and the evaluations."""
    from lotto.tasks import inject, shared_data

    inject(job.fault)
    device = resolve_device(job.device)
    data = shared_data(job.data, device)
    small = proxy_spec(job.spec, data, job.bn_momentum, job.min_output)
    start = time.perf_counter()
    state, iterations = job.state, 0
    if job.iterations is None or job.iterations > 0:
        tcfg = job.train if job.iterations is None else OmegaConf.merge(
            job.train, {"iterations": int(job.iterations)})
        res = train_spec(job.spec, data, tcfg, seed=job.seed, device=device,
                         bn_momentum=job.bn_momentum, min_output=job.min_output, state=state,
                         keep_state=job.keep_state or job.test, progress=progress,
                         desc=job.label)
        val_acc, val_loss, state, iterations = (res.val_accuracy, res.val_loss, res.state,
                                                res.iterations)
    else:
        if state is None:
            raise ValueError("a proxy job of 0 iterations evaluates given weights: state=None")
        val_loss, val_acc = _evaluate(small, data, state, device, test=False)
    test_acc = _evaluate(small, data, state, device, test=True)[1] if job.test else None
    kept = state if job.keep_state and state is not None else {}
    return ProxyResult(val_acc, val_loss, iterations, time.perf_counter() - start, kept,
                       test_acc, small)


def _evaluate(small: ArchSpec, data: Data, state: dict[str, torch.Tensor], device: torch.device,
              test: bool) -> tuple[float, float]:
    """(loss, accuracy) of the proxy `small` with weights `state` on the val or test split."""
    model = build_network(small).to(device)
    model.load_state_dict(state)
    x, y = (data.test_x, data.test_y) if test else (data.val_x, data.val_y)
    return evaluate(model, x, y)
