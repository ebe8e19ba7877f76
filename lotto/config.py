"""Config loading: packaged defaults <- user YAML <- key=value overrides <- CLI options.

The defaults file of a command is its schema: a key that is not in it is an error, and a value
must have the type of its default (an int is accepted where a float or a string is expected,
so `lr=1` and `train.iterations=50000` work). Only a key whose default is null takes any value,
null included.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lotto.errors import LottoError

# Keys that say where a run goes or how fast, not what it computes: left out of the run hash and
# of the "same config?" check on resume (dotted for a key inside a section). `parallel` is how
# many trainings run at once and where: a run started serial resumes with --workers 2.
PLACEMENT_KEYS = ("run", "data.workers", "parallel")

# Keys that only say how far a run goes (OpenLTH's levels): a larger value continues a finished
# run, reusing every unit done (round r of seed s, a rethink cell, a search step), a smaller one
# runs nothing new. They are not part of a run's identity: left out of the "same config?" check
# and of the default run name, so `lotto lottery --rounds 20` extends the default 15-round run.
# Each names what it extends in its own command only (no other command has these keys).
EXTENSION_KEYS = ("lottery.rounds", "lottery.seeds", "grid.seeds", "search.samples")

# Keys whose default is null ("automatic") but whose value, when given, has one type: the schema
# alone would take anything for them.
NULLABLE_TYPES: dict[str, type] = {
    "data.root": str,
    "data.val_size": int,
    "data.image_size": int,
    "data.subset": int,
    "data.augment": bool,
    "data.stream": bool,
    "data.workers": int,
    "parallel.threads_per_worker": int,
    "parallel.timeout": float,
    "parallel.address": str,
}
# Keys whose value their command checks itself, whatever the default's type: `space` is a name
# (lotto.search.space.SPACES) or a mapping, validated by parse_space (one line per bad field).
FREE_KEYS = ("space",)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1) also reading YAML 1.2 floats such as `1e-3` and `3e4`,
    which YAML 1.1 reads as strings (it wants a dot and a signed exponent)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def defaults_path(command: str) -> Path:
    return Path(str(resources.files("lotto") / "configs" / f"{command}.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise LottoError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = _yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise LottoError(f"config file {path} does not parse as YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise LottoError(f"config file {path} must hold a mapping of keys, not {kind}")
    return data


def load_defaults(command: str) -> DictConfig:
    return OmegaConf.create(_read_yaml(defaults_path(command)))


def _parse_overrides(overrides: Sequence[str]) -> dict:
    merged: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise LottoError(f"override {item!r} is not of the form key=value")
        try:
            value = _yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        _set_dotted(merged, key.strip(), value)
    return merged


def _set_dotted(target: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = target
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise LottoError(f"config key {key}: {part} is a value, not a section")
    node[parts[-1]] = value


def dotted_keys(tree: Any, prefix: str = "", sections: bool = False) -> list[str]:
    """Every leaf key of a nested mapping, dotted: ['seed', 'train.lr', ...] (and the sections,
    'train', ..., with `sections`)."""
    if not isinstance(tree, Mapping):
        return [prefix] if prefix else []
    out: list[str] = [prefix] if prefix and sections else []
    for k, v in tree.items():
        out += dotted_keys(v, f"{prefix}.{k}" if prefix else str(k), sections)
    return out


def suggest(name: str, keys: Sequence[str]) -> str:
    """'; did you mean train.lr?' for a key close to `name` (or one with its last part in another
    section: `train.prune_rate` -> `lottery.prune_rate`), else ''."""
    depth = name.count(".")  # `trian` -> `train`, `train.lrr` -> `train.lr` (not `train`)
    close = difflib.get_close_matches(name, [k for k in keys if k.count(".") == depth], n=3,
                                      cutoff=0.7)
    leaf = name.rsplit(".", 1)[-1]
    close += [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k not in close][:3]
    if not close:  # a misspelt last part: compare within the same section
        section = name.rsplit(".", 1)[0] + "." if "." in name else ""
        same = [k for k in keys if k.startswith(section) and "." not in k[len(section):]]
        close = difflib.get_close_matches(name, same, n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _check_against(schema: Any, value: Any, key: str, root: Any = None) -> None:
    """Raise if `value` does not fit the type of the default `schema` (recursively)."""
    root = schema if root is None else root
    if key in FREE_KEYS:
        return
    if schema is None:
        if key in NULLABLE_TYPES and value is not None:
            _check_against(NULLABLE_TYPES[key](), value, key, root)
        return
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise LottoError(f"config key {key}: expected a section, got {value!r}")
        for sub, v in value.items():
            name = f"{key}.{sub}" if key else str(sub)
            if sub not in schema:
                hint = suggest(name, dotted_keys(root, sections=True))
                raise LottoError(f"unknown config key {name}{hint}")
            _check_against(schema[sub], v, name, root)
        return
    if value is None:
        if key in NULLABLE_TYPES:  # a key that may be null, whose command sets a value
            return
        raise LottoError(f"config key {key}: must not be null (its default is {schema!r})")
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, (str, int)) and not isinstance(v, bool),
        list: lambda v: isinstance(v, list),
    }[type(schema)](value)
    if not ok:
        expected, got = type(schema).__name__, type(value).__name__
        raise LottoError(f"config key {key}: expected {expected}, got {value!r} ({got})")


def load_config(
    command: str,
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
) -> DictConfig:
    """Resolve the config of `command`.

    `options` maps dotted keys to CLI option values; None means the option was not given.
    """
    schema = _read_yaml(defaults_path(command))
    layers: list[dict] = []
    if config_file is not None:
        layers.append(_read_yaml(Path(config_file)))
    layers.append(_parse_overrides(overrides))
    cli: dict = {}
    for key, value in (options or {}).items():
        if value is not None:
            _set_dotted(cli, key, value)
    layers.append(cli)
    for layer in layers:
        _check_against(schema, layer, "")
    try:
        cfg = OmegaConf.merge(OmegaConf.create(schema), *[OmegaConf.create(x) for x in layers])
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise LottoError(f"config: {e.__class__.__name__}: {str(e).splitlines()[0]}") from None
    # float defaults given as ints stay ints in OmegaConf (and string defaults given as ints stay
    # ints); normalise so that experiments see the default's type and saved configs are stable
    _coerce_floats(schema, cfg)
    return cfg


def _coerce_floats(schema: dict, cfg: DictConfig) -> None:
    for key, default in schema.items():
        if isinstance(default, dict):
            _coerce_floats(default, cfg[key])
        elif isinstance(default, float) and isinstance(cfg[key], int):
            cfg[key] = float(cfg[key])
        elif isinstance(default, str) and isinstance(cfg[key], int):
            cfg[key] = str(cfg[key])


def check(condition: bool, key: str, message: str) -> None:
    """Range checks made by experiments: one line naming the key."""
    if not condition:
        raise LottoError(f"config key {key}: {message}")


def identity(cfg: DictConfig, extensions: bool = False) -> dict:
    """The part of a config that decides the results of each unit: placement keys and (unless
    `extensions`) extension keys removed."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in PLACEMENT_KEYS + (() if extensions else EXTENSION_KEYS):
        *sections, last = key.split(".")
        node = data
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return data


def differences(old: Mapping, new: Mapping, limit: int = 6) -> str:
    """'train.lr: 0.0012 -> 0.01, lottery.rounds: 15 -> 3': the leaf keys whose values differ."""
    a, b = _flat(old), _flat(new)
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k, _ABSENT) != b.get(k, _ABSENT)]
    shown = [f"{k}: {_show(a.get(k, _ABSENT))} -> {_show(b.get(k, _ABSENT))}" for k in keys]
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more


_ABSENT = object()


def _flat(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, name))
        else:
            out[name] = v
    return out


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)


def _diff(default: Any, value: Any) -> Any:
    if isinstance(default, dict) and isinstance(value, dict):
        out = {}
        for k, v in value.items():
            d = _diff(default.get(k), v) if k in default else v
            if d is not _SAME:
                out[k] = d
        return out or _SAME
    return _SAME if default == value else value


_SAME = object()


def config_hash(cfg: DictConfig, command: str) -> str:
    """Short hash of the non-default part of the config: the default run name until run names
    said the command (`default_run_name`); kept so that such runs still resume."""
    defaults = identity(load_defaults(command), extensions=True)
    diff = _diff(defaults, identity(cfg, extensions=True))
    payload = json.dumps({} if diff is _SAME else diff, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:10]


def default_run_name(cfg: DictConfig, command: str) -> str:
    """`<command>-<what differs from the defaults>-<hash>`: the run name when none is given.

    E.g. `lottery-digits-iterations_30it-rounds_2-3f9c01ab`, `search-defaults-5d1e0c22`. Stable
    (the same command and config resume the same run) and distinct across commands: the hash
    covers the command and the non-default part of the config (placement keys left out), so two
    configs that differ only past the shortened description still get different names.
    """
    defaults = identity(load_defaults(command))
    diff = _diff(defaults, identity(cfg))
    diff = {} if diff is _SAME else diff
    payload = json.dumps({"command": command, "config": diff}, sort_keys=True)
    digest = hashlib.sha1(payload.encode()).hexdigest()[:8]
    words = [_word(k, v) for k, v in _flat(diff).items()]
    desc = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(words[:4]) or "defaults")
    desc = desc[:60].strip("._-") or "config"
    return f"{command}-{desc}-{digest}"


_NAMED = ("name", "from", "model", "variant", "controller", "device", "arch")  # value alone


def _word(key: str, value: Any) -> str:
    leaf = key.rsplit(".", 1)[-1]
    if isinstance(value, list):
        value = "_".join(str(v) for v in value) or "none"
    if leaf in _NAMED and isinstance(value, str):
        return Path(value).name or value  # a spec file or run directory: its last part
    if isinstance(value, float):
        value = f"{value:g}"
    return f"{leaf}_{value}"


def to_yaml(cfg: DictConfig | ListConfig) -> str:
    return OmegaConf.to_yaml(cfg)
