"""Proxy training for `search` and `netadapt`: a spec trained briefly on the configured data.

Latency is priced at the spec's own resolution on the target device; accuracy comes from this
proxy task (as in MnasNet and NetAdapt): the same widths and blocks with the data's channels and
classes, and early strides cut until the last feature map is at least `min_output` px
(`adapt_to_resolution`, as `build-v3 --train` does). Fewer cut strides are the cheapest knob: at
28 px, `min_output: 1` keeps MobileNetV3-Small's strides (28 -> 14 -> 7 -> 4 -> 2 -> 1), about 16x
fewer multiply-adds per image than `min_output: 4`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from rich.progress import Progress

from lotto.arch import ArchSpec, adapt_to_resolution
from lotto.arch.build import build_network
from lotto.data import Data
from lotto.train import seed_everything, train


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
                       result.iterations, result.seconds, kept)
