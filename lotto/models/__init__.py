"""Model registry: `build_model(name, in_channels, num_classes, image_size, **options)`.

Each family registers its factories with `@register("name")`; importing this package imports the
families, so every registered name is available.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lotto.errors import LottoError

ModelFactory = Callable[..., nn.Module]
MODELS: dict[str, ModelFactory] = {}


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    def add(factory: ModelFactory) -> ModelFactory:
        MODELS[name] = factory
        return factory

    return add


def build_model(
    name: str, in_channels: int, num_classes: int, image_size: int, **options: Any
) -> nn.Module:
    _load_families()
    factory = MODELS.get(name)
    if factory is None and Path(name).expanduser().exists():  # e.g. runs/search/<run>
        from lotto.arch.build import spec_model_factory

        factory = spec_model_factory(name)
    if factory is None:
        raise LottoError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}, "
                         "or give a spec file or a run directory with best.yaml / final.yaml")
    try:
        return factory(in_channels, num_classes, image_size, **options)
    except (TypeError, ValueError) as e:  # an unknown option, or one that does not fit the data
        raise LottoError(f"model {name}: {e}") from None


def he_init(model: nn.Module) -> nn.Module:
    """He (fan-out) convs, BatchNorm at identity, small normal FC: the torchvision MobileNet and
    CIFAR ResNet/VGG reference initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


def copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's state dict (initial, rewound or trained weights)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def load_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load `state`; a mismatch (a run made with another model) is a user error naming `where`."""
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise LottoError(
            f"{where} does not fit the model the config builds "
            "(incompatible run; use --force to start afresh)"
        ) from None


def _load_families() -> None:
    # imported lazily so that a family may itself import this module's `register`
    import importlib

    for module in FAMILIES:
        importlib.import_module(module)


FAMILIES = ("lotto.models.lth", "lotto.models.cifar", "lotto.arch.build")
