"""Search spaces for lookup tables: a small YAML format, enumeration of units, sampling.

Two forms are accepted wherever a space is asked for (`lotto bench --build-lut --space X`):

1. A list of presets or spec files, comma-separated on the command line
   (`mobilenet_v2,mobilenet_v3_large,my_spec.yaml`) or in YAML as ``space: {specs: [...],
   width_mults: [1.0, 0.75], resolution: 224}``. The table covers exactly those networks.
2. A MnasNet-style factorised hierarchical space (the ``space:`` section of
   ``configs/search.yaml``)::

       space:
         base: mobilenet_v2      # preset giving the stem, head, SE rule/gate and classes
         resolution: 224
         kernels: [3, 5, 7]      # default block choices of every stage ...
         expansions: [3, 6]      # ... expansion ratio to the block's input width
         se: [false, true]       # ... squeeze-excite (ratio 0.25) or not
         act: null               # null = the base preset's activation; or relu|relu6|hswish
         stages:                 # one entry per stage; each key overrides the defaults above
           - {widths: [16], repeats: [1], stride: 1, kernels: [3], expansions: [1], se: [false]}
           - {widths: [24], repeats: [1, 2, 3], stride: 2}
           ...

   A network picks, per stage, one width, one repeat count and one block (kernel, expansion,
   SE) used by all of the stage's blocks; only the first block of a stage is strided. The
   table holds every unit any such network can contain: per stage, its first block for every
   (input width, width, kernel, expansion, SE) and, when a stage can repeat, its repeated block
   for every (width, kernel, expansion, SE); plus the stem, head and classifier. Width choices
   multiply the table size (a second width per stage roughly triples it).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lotto.arch import ArchSpec, BlockSpec, load_spec, preset, scale_width
from lotto.errors import LottoError

_STAGE_KEYS = {"widths", "repeats", "stride", "kernels", "expansions", "se", "act"}
_SPACE_KEYS = {
    "base", "resolution", "kernels", "expansions", "se", "act", "stages", "specs", "width_mults",
    "num_classes",
}


@dataclass(frozen=True)
class Stage:
    widths: tuple[int, ...]
    repeats: tuple[int, ...]
    stride: int
    kernels: tuple[int, ...]
    expansions: tuple[float, ...]
    se: tuple[bool, ...]
    act: str


@dataclass
class Space:
    """Either a list of networks (`specs`) or a factorised space (`base` + `stages`)."""

    resolution: int
    specs: list[ArchSpec] = field(default_factory=list)
    base: ArchSpec | None = None
    stages: list[Stage] = field(default_factory=list)
    source: str = "space"

    @property
    def factorised(self) -> bool:
        return bool(self.stages)

    def size(self) -> int:
        """Number of distinct networks (for a list: its length)."""
        if not self.factorised:
            return len(self.specs)
        n = 1
        for s in self.stages:
            n *= len(s.widths) * len(s.repeats) * len(s.kernels) * len(s.expansions) * len(s.se)
        return n

    # ---- networks -------------------------------------------------------------------------

    def build(self, choices: Sequence[tuple[int, int, int, float, bool]], name: str) -> ArchSpec:
        """The network of one (width, repeats, kernel, expansion, se) choice per stage."""
        assert self.base is not None
        blocks: list[BlockSpec] = []
        c = self.base.stem.channels
        for stage, (width, repeats, kernel, ratio, se) in zip(self.stages, choices):
            for r in range(repeats):
                stride = stage.stride if r == 0 else 1
                exp = max(1, int(round(c * ratio)))
                blocks.append(BlockSpec("ir", kernel, stride, exp, width, 0.25 if se else 0.0,
                                        stage.act))
                c = width
        head = self.base.head
        return self.base.replace(name=name, blocks=tuple(blocks), head=head).validate()

    def sample(self, n: int, seed: int = 0) -> list[ArchSpec]:
        """`n` networks drawn uniformly (deterministic for a seed); a list space cycles."""
        if not self.factorised:
            return [self.specs[i % len(self.specs)] for i in range(n)]
        rng = random.Random(seed)
        out = []
        for i in range(n):
            choices = [
                (rng.choice(s.widths), rng.choice(s.repeats), rng.choice(s.kernels),
                 rng.choice(s.expansions), rng.choice(s.se))
                for s in self.stages
            ]
            out.append(self.build(choices, f"sample{seed}_{i}"))
        return out

    def carriers(self) -> Iterator[ArchSpec]:
        """Networks that together contain every unit of the space (for building a table)."""
        if not self.factorised:
            yield from self.specs
            return
        defaults = [(s.widths[0], max(s.repeats), s.kernels[0], s.expansions[0], s.se[0])
                    for s in self.stages]
        for i, stage in enumerate(self.stages):
            previous = self.stages[i - 1].widths if i else (self.base.stem.channels,)  # type: ignore[union-attr]
            for cin, width, k, e, se in itertools.product(
                previous, stage.widths, stage.kernels, stage.expansions, stage.se
            ):
                choices = list(defaults)
                if i:
                    p = choices[i - 1]
                    choices[i - 1] = (cin, *p[1:])
                choices[i] = (width, max(stage.repeats), k, e, se)
                yield self.build(choices, f"carrier_{i}")


# ---------------------------------------------------------------------------------------------
# Parsing


def _tuple(value: Any, key: str, kind: type) -> tuple:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise LottoError(f"space key {key}: needs at least one choice")
    try:
        return tuple(kind(v) for v in items)
    except (TypeError, ValueError):
        raise LottoError(
            f"space key {key}: expected {kind.__name__} values, got {value!r}"
        ) from None


def parse_space(data: Mapping[str, Any], source: str = "space") -> Space:
    if "space" in data and isinstance(data["space"], Mapping):
        data = data["space"]
    unknown = sorted(set(data) - _SPACE_KEYS)
    if unknown:
        raise LottoError(f"{source}: unknown space key(s) {', '.join(unknown)}")
    resolution = int(data.get("resolution") or 224)
    num_classes = int(data.get("num_classes") or 1000)
    if data.get("specs"):
        mults = _tuple(data.get("width_mults") or [1.0], "width_mults", float)
        specs = []
        for item in _tuple(data["specs"], "specs", str):
            for m in mults:
                specs.append(_network(item, m, resolution, num_classes))
        return Space(resolution=resolution, specs=specs, source=source)
    if not data.get("stages"):
        raise LottoError(f"{source}: a space needs either `specs` or `stages`")
    base = preset(str(data.get("base") or "mobilenet_v2"), 1.0, resolution, num_classes)
    acts = [b.act for b in base.blocks]
    stages = []
    for i, raw in enumerate(data["stages"]):
        key = f"stages[{i}]"
        if not isinstance(raw, Mapping):
            raise LottoError(f"{source}: {key} must be a mapping")
        bad = sorted(set(raw) - _STAGE_KEYS)
        if bad:
            raise LottoError(f"{source}: unknown key(s) {', '.join(bad)} in {key}")
        if "widths" not in raw:
            raise LottoError(f"{source}: {key} needs widths")
        act = raw.get("act") or data.get("act") or acts[min(i, len(acts) - 1)]
        stages.append(Stage(
            widths=_tuple(raw["widths"], f"{key}.widths", int),
            repeats=_tuple(raw.get("repeats", 1), f"{key}.repeats", int),
            stride=int(raw.get("stride", 1)),
            kernels=_tuple(raw.get("kernels", data.get("kernels", [3])), f"{key}.kernels", int),
            expansions=_tuple(raw.get("expansions", data.get("expansions", [6])),
                              f"{key}.expansions", float),
            se=_tuple(raw.get("se", data.get("se", [False])), f"{key}.se", bool),
            act=str(act),
        ))
        if min(stages[-1].repeats) < 1:
            raise LottoError(f"{source}: {key}.repeats must be >= 1")
    space = Space(resolution=resolution, base=base, stages=stages, source=source)
    space.sample(1, 0)  # validates one network: an impossible space fails here, in one line
    return space


def _network(item: str, mult: float, resolution: int, num_classes: int) -> ArchSpec:
    from lotto.arch import PRESETS

    if item in PRESETS:
        return preset(item, mult, resolution, num_classes)
    spec = load_spec(item)
    if mult != 1.0:
        spec = scale_width(spec, mult)
    return spec.replace(resolution=resolution).validate()


def load_space(text: str | Path, resolution: int | None = None) -> Space:
    """A space from a YAML file, or a comma-separated list of presets / spec files."""
    raw = str(text)
    path = Path(raw).expanduser()
    if path.suffix in (".yaml", ".yml") and path.exists():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0]
            raise LottoError(f"space file {path} does not parse: {first}") from None
        if not isinstance(data, Mapping):
            raise LottoError(f"space file {path} must hold a mapping")
        inner = data.get("space", data)
        if isinstance(inner, Mapping) and inner.get("specs") is None and not inner.get("stages"):
            if {"stem", "blocks", "head"} <= set(data):  # a single spec file
                return _list([raw], resolution, str(path))
        if resolution is not None and isinstance(inner, Mapping):
            inner = {**inner, "resolution": resolution}
        return parse_space(inner, str(path))
    if path.suffix in (".yaml", ".yml"):
        raise LottoError(f"space file {path} not found")
    return _list([x.strip() for x in raw.split(",") if x.strip()], resolution, "space")


def _list(items: list[str], resolution: int | None, source: str) -> Space:
    if not items:
        raise LottoError("empty space: give presets, spec files or a space YAML")
    res = resolution or 224
    specs = [_network(x, 1.0, res, 1000) for x in items]
    return Space(resolution=res, specs=specs, source=source)
