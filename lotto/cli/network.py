"""`--from`: the one way every command that takes a network is given one.

A preset name (`mobilenet_v3_small`, `lenet_300_100`, ...), a spec YAML file, or a run directory
holding `best.yaml` (a search) or `final.yaml` (build-v3, netadapt): the same value means the
same network in `bench`, `build-v3`, `netadapt`, `lottery` and `rethink`, resolved by the model
registry (`lotto.models.build_model`, `lotto.arch.load_spec`). A lottery run directory is also a
network to `rethink`, which reuses its initial weights, trained tickets and masks.

Kept free of torch and the experiment code: this is read when the CLI starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lotto.errors import LottoError

FromOpt = Annotated[
    str | None,
    typer.Option(
        "--from",
        help="The network: a preset name, a spec YAML file, or a run directory (a search's "
        "best.yaml, a build-v3 or netadapt run's final.yaml).",
    ),
]


def is_path(value: str) -> bool:
    """A spec file or a run directory rather than a preset name."""
    return Path(value).expanduser().exists()


def is_lottery_run(value: str) -> bool:
    """A `lotto lottery` run directory (its config.yaml has a `lottery` section)."""
    import yaml

    saved = Path(value).expanduser() / "config.yaml"
    if not saved.is_file():
        return False
    try:
        cfg = yaml.safe_load(saved.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(cfg, dict) and isinstance(cfg.get("lottery"), dict)


def exclusive(from_: str | None, **others: str | None) -> None:
    """`--from` names the network: another option that also names it is a user mistake."""
    given = [f"--{k.replace('_', '-')}" for k, v in others.items() if v is not None]
    if from_ is not None and given:
        raise LottoError(f"--from and {' / '.join(given)} both name the network: give one")
