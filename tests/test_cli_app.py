"""`lotto.cli.app`: --help shows each option's default from the command's YAML, and an
overrides example and epilog of that command's own keys."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf
from typer.testing import CliRunner

from lotto.cli import app
from lotto.cli.app import HELP_KEYS, OVERRIDE_EXAMPLES
from lotto.config import load_config, load_defaults

COMMANDS = ["lottery", "rethink", "search", "netadapt", "build-v3", "bench"]


def help_text(command: str) -> str:
    out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "100"})
    assert out.exit_code == 0, out.output
    # one line: rich wraps and boxes the help
    return re.sub(r"\s+", " ", out.output.replace("│", " "))


@pytest.mark.parametrize(
    ("command", "option", "default"),
    [
        ("lottery", "--rounds", "15"),
        ("lottery", "--prune-rate", "0.2"),
        ("lottery", "--seeds", "1"),
        ("lottery", "--runs-dir", "runs"),
        ("search", "--samples", "24"),
        ("search", "--device", "pixel1"),
        ("netadapt", "--target", "0.85x"),
        ("rethink", "--ratio", "structured: 0.5; unstructured: 0.9"),
        ("bench", "--model", "mobilenet_v3_large"),
        ("build-v3", "--resolution", "224"),
    ],
)
def test_help_shows_the_yaml_default(command: str, option: str, default: str) -> None:
    text = help_text(command)
    after = text[text.index(f"{option} "):]
    after = after[: after.index(" --", 3)]  # up to the next option
    assert f"[default: {default}]" in after, after


def test_help_defaults_follow_the_yaml() -> None:
    """The value shown is read from the YAML, not written in the CLI."""
    assert OmegaConf.select(load_defaults("lottery"), "lottery.rounds") == 15
    for command, keys in HELP_KEYS.items():
        defaults = load_defaults(command)
        for key in keys.values():
            for k in (key,) if isinstance(key, str) else key:
                assert OmegaConf.select(defaults, k, default="missing") != "missing", (command, k)


@pytest.mark.parametrize("command", COMMANDS)
def test_override_example_is_the_commands_own(command: str) -> None:
    text = help_text(command)
    example = OVERRIDE_EXAMPLES[command]
    assert example in text
    load_config(command, overrides=example.split())  # every key exists in that command's YAML
    assert f"lotto/configs/{command}.yaml" in text
    if command == "bench":
        assert "train.lr" not in text
