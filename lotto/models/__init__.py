"""Model registry: `build_model(name, in_channels, num_classes, image_size, **options)`.

Each family registers its factories with `@register("name")`; importing this package imports the
families, so every registered name is available.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    if name not in MODELS:
        raise LottoError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](in_channels, num_classes, image_size, **options)
    except (TypeError, ValueError) as e:  # an unknown option, or one that does not fit the data
        raise LottoError(f"model {name}: {e}") from None


def _load_families() -> None:
    # imported lazily so that a family may itself import this module's `register`
    import importlib

    for module in FAMILIES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if not module.startswith(e.name or "?"):
                raise


FAMILIES = ("lotto.models.lth", "lotto.models.cifar", "lotto.arch.build")
