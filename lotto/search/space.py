"""Search spaces of `lotto search` and of lookup tables: a small YAML format, named spaces,
sampling, one canonical encoding per network, enumeration of units.

Three forms are accepted wherever a space is asked for (`lotto bench --build-lut --space X`,
the `space:` section of configs/search.yaml):

0. A name of SPACES: `mnasnet` (MnasNet's space, sec. 4.1: every stage searched, kernels
   {3, 5}, skips {pool, identity, none}) or `mbv2-k357` (lotto's first default).

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

   A network picks, per stage, one width, one repeat count and one block (op, kernel,
   expansion, SE, skip) used by all of the stage's blocks; only the first block of a stage is
   strided. Decisions that build the same blocks are one network (`Space.canonical`). The
   table holds every unit any such network can contain: per stage, its first block for every
   (input width, width, kernel, expansion, SE) and, when a stage can repeat, its repeated block
   for every (width, kernel, expansion, SE); plus the stem, head and classifier. Width choices
   multiply the table size (a second width per stage roughly triples it).
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lotto.arch import ArchSpec, BlockSpec, load_spec, make_divisible, preset, scale_width
from lotto.arch.spec import ACTIVATIONS, POOL
from lotto.errors import LottoError

_STAGE_KEYS = {"widths", "repeats", "stride", "kernels", "expansions", "se", "act", "ops", "skips",
               "width", "repeat"}
_SPACE_KEYS = {
    "base", "resolution", "kernels", "expansions", "se", "act", "stages", "specs", "width_mults",
    "num_classes", "ops", "skips", "width_factors", "repeat_deltas", "width_divisor",
}
OPS = ("ir", "ds", "conv")
# MnasNet's SkipOp: identity residual (where legal: stride 1, equal widths), pooling (the input
# average-pooled by the stride, added where the widths match: `lotto.arch.spec`, "poolskip"; at
# stride 1 the identity) or none. YAML's true / false mean identity / none.
SKIPS = ("identity", "pool", "none")


def skip_name(value: Any) -> str:
    """A stage's skip option as one of SKIPS (true / false: identity / none)."""
    if value is True or value is False:
        return "identity" if value else "none"
    if value in SKIPS:
        return str(value)
    raise ValueError(value)


@dataclass(frozen=True)
class Stage:
    widths: tuple[int, ...]
    repeats: tuple[int, ...]
    stride: int
    kernels: tuple[int, ...]
    expansions: tuple[float, ...]
    se: tuple[bool, ...]
    act: str
    ops: tuple[str, ...] = ("ir",)  # block type: ir (expansion from `expansions`), ds or conv
    skips: tuple[str, ...] = ("identity",)  # SKIPS: identity / pool where legal, or none

    def choices(self) -> list[tuple[str, tuple]]:
        """The stage's factorised decisions (axis name, options), in the order `build` takes."""
        return [("width", self.widths), ("repeats", self.repeats), ("kernel", self.kernels),
                ("expansion", self.expansions), ("se", self.se), ("op", self.ops),
                ("skip", self.skips)]

    def size(self) -> int:
        """The stage's block choices as MnasNet counts them (an expansion ratio only matters to
        ir). Whether a skip is legal depends on the input width: `Space.size` counts exactly."""
        ops = (len(self.expansions) if "ir" in self.ops else 0) + sum(o != "ir" for o in self.ops)
        return (len(self.widths) * len(self.repeats) * len(self.kernels) * len(self.se) * ops
                * len(self.skips))

    def blocks(self, cin: int, choice: Sequence) -> tuple[BlockSpec, ...]:
        """The stage's blocks for one choice (width, repeats, kernel, expansion, se[, op, skip])
        after a stage of width `cin`: what a network of the space holds, and so what identifies
        a stage choice (`Space.canonical`)."""
        width, repeats, kernel, ratio, se = choice[:5]
        op, skip = (choice[5], skip_name(choice[6])) if len(choice) > 5 else ("ir", "identity")
        out, c = [], cin
        for r in range(repeats):
            stride = self.stride if r == 0 else 1
            exp = max(1, int(round(c * ratio))) if op == "ir" else None
            same = c == width
            if skip == "pool" and stride == 2 and same:
                block_skip: bool | str | None = POOL
            elif skip == "none" and stride == 1 and same:
                block_skip = False  # where auto would add the identity residual
            else:
                block_skip = None  # auto: identity where legal (pool at stride 1 = identity)
            out.append(BlockSpec(op, kernel, stride, exp, width, 0.25 if se else 0.0, self.act,
                                 block_skip))
            c = width
        return tuple(out)


@dataclass
class Space:
    """Either a list of networks (`specs`) or a factorised space (`base` + `stages`)."""

    resolution: int
    specs: list[ArchSpec] = field(default_factory=list)
    base: ArchSpec | None = None
    stages: list[Stage] = field(default_factory=list)
    source: str = "space"
    # (stage, input width) -> {stage blocks: their first choice indices}: `_table`
    _tables: dict[tuple[int, int], dict[tuple, tuple[int, ...]]] = field(
        default_factory=dict, repr=False, compare=False)

    @property
    def factorised(self) -> bool:
        return bool(self.stages)

    def size(self) -> int:
        """Number of distinct networks (for a list: its length). Factorised: distinct stage
        blocks per (stage, input width), multiplied along every path of widths: equal to the
        number of distinct canonical index vectors (`canonical`)."""
        if not self.factorised:
            return len(self.specs)
        paths = {self.base.stem.channels: 1}  # type: ignore[union-attr]
        for i in range(len(self.stages)):
            nxt: dict[int, int] = {}
            for cin, n in paths.items():
                for blocks in self._table(i, cin):
                    width = blocks[-1].out
                    nxt[width] = nxt.get(width, 0) + n
            paths = nxt
        return sum(paths.values())

    # ---- networks -------------------------------------------------------------------------

    def build(self, choices: Sequence[tuple], name: str) -> ArchSpec:
        """The network of one choice per stage: (width, repeats, kernel, expansion, se[, op,
        skip]), op ir/ds/conv (default ir), skip one of SKIPS or true/false (default identity).
        An expansion ratio is ignored by ds and conv blocks; a skip where it is not legal is
        none (`Stage.blocks`)."""
        assert self.base is not None
        blocks: list[BlockSpec] = []
        c = self.base.stem.channels
        for stage, choice in zip(self.stages, choices):
            blocks.extend(stage.blocks(c, choice))
            c = choice[0]
        head = self.base.head
        return self.base.replace(name=name, blocks=tuple(blocks), head=head).validate()

    def axes(self) -> list[tuple[int, str, int]]:
        """The factorised decisions of a network, in order: (stage, axis, number of options).
        Axes with one option are left out (nothing to decide)."""
        return [(i, axis, len(options)) for i, stage in enumerate(self.stages)
                for axis, options in stage.choices() if len(options) > 1]

    def _stage_indices(self, indices: Sequence[int]) -> list[tuple[int, ...]]:
        """Per stage, one index per axis of `Stage.choices()` (single-option axes: 0)."""
        picks = iter(indices)
        out = []
        for stage in self.stages:
            ks = []
            for _, options in stage.choices():
                k = next(picks) if len(options) > 1 else 0
                if not 0 <= k < len(options):
                    raise LottoError(f"choice index {k} out of range 0..{len(options) - 1}")
                ks.append(k)
            out.append(tuple(ks))
        return out

    def decode(self, indices: Sequence[int]) -> list[tuple]:
        """Per-stage choices from one index per `axes()` decision (the controllers' tokens)."""
        return [tuple(options[k] for (_, options), k in zip(stage.choices(), ks))
                for stage, ks in zip(self.stages, self._stage_indices(indices))]

    def _table(self, i: int, cin: int) -> dict[tuple, tuple[int, ...]]:
        """Stage i after input width `cin`: every distinct block tuple it can hold, mapped to
        the first (lowest in option order) choice indices that give it. Built once, lazily."""
        table = self._tables.get((i, cin))
        if table is None:
            stage = self.stages[i]
            options = [o for _, o in stage.choices()]
            table = {}
            for ks in itertools.product(*(range(len(o)) for o in options)):
                blocks = stage.blocks(cin, [o[k] for o, k in zip(options, ks)])
                table.setdefault(blocks, ks)
            self._tables[(i, cin)] = table
        return table

    def canonical(self, indices: Sequence[int]) -> list[int]:
        """The canonical representative of a network's decisions: per stage, the lowest option
        indices that build the same blocks (e.g. expansion -> its first option when op is not
        ir; a skip that is legal nowhere in the stage -> the first skip option). Two index
        vectors build the same network iff their canonical forms are equal (exact when no two
        adjacent stages can build interchangeable blocks: every stage's first block strided or
        changing width, as in the shipped spaces)."""
        c = self.base.stem.channels  # type: ignore[union-attr]
        out: list[int] = []
        for i, (stage, ks) in enumerate(zip(self.stages, self._stage_indices(indices))):
            options = [o for _, o in stage.choices()]
            blocks = stage.blocks(c, [o[k] for o, k in zip(options, ks)])
            first = self._table(i, c)[blocks]
            out.extend(k for o, k in zip(options, first) if len(o) > 1)
            c = blocks[-1].out
        return out

    def network(self, indices: Sequence[int], name: str = "sample") -> ArchSpec:
        """`build(decode(indices))`."""
        return self.build(self.decode(indices), name)

    def sample_indices(self, rng: random.Random) -> list[int]:
        return [rng.randrange(n) for _, _, n in self.axes()]

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
                + ((rng.choice(s.ops), rng.choice(s.skips))
                   if (len(s.ops), len(s.skips)) != (1, 1) else (s.ops[0], s.skips[0]))
                for s in self.stages
            ]
            out.append(self.build(choices, f"sample{seed}_{i}"))
        return out

    def carriers(self) -> Iterator[ArchSpec]:
        """Networks that together contain every unit of the space (for building a table).

        Each stage's distinct block choices (with every input width the previous stage can give
        it; choices that build the same blocks, as an expansion ratio of a ds block, once) are
        packed greedily into as few networks as possible: every network takes one not yet
        covered choice per stage whose input width fits, and where a stage has none left it
        picks the width the next stage still needs most. The mbv2-k357 space: 2,113 networks
        one stage at a time, 432 packed.
        """
        if not self.factorised:
            yield from self.specs
            return
        stem = self.base.stem.channels  # type: ignore[union-attr]
        todo: list[list[tuple]] = []
        for i, stage in enumerate(self.stages):
            previous = self.stages[i - 1].widths if i else (stem,)
            seen: set[tuple] = set()
            todo.append([])
            for cin, width, k, e, se, op, skip in itertools.product(
                    previous, stage.widths, stage.kernels, stage.expansions, stage.se,
                    stage.ops, stage.skips):
                choice = (cin, width, max(stage.repeats), k, e, se, op, skip)
                blocks = (cin, stage.blocks(cin, choice[1:]))  # a unit holds its input width
                if blocks not in seen:
                    seen.add(blocks)
                    todo[-1].append(choice)

        def wanted(i: int, width: int) -> int:  # choices of stage i that need input `width`
            return sum(c[0] == width for c in todo[i]) if i < len(todo) else 0

        n = 0
        while any(todo):
            choices, cin = [], stem
            for i, stage in enumerate(self.stages):
                fits = [c for c in todo[i] if c[0] == cin]
                if fits:
                    pick = max(fits, key=lambda c: wanted(i + 1, c[1]))  # first of the best
                    todo[i].remove(pick)
                else:
                    width = max(stage.widths, key=lambda w: wanted(i + 1, w))
                    pick = (cin, width, max(stage.repeats), stage.kernels[0],
                            stage.expansions[0], stage.se[0], stage.ops[0], stage.skips[0])
                choices.append(pick[1:])
                cin = pick[1]
            yield self.build(choices, f"carrier_{n}")
            n += 1


# ---------------------------------------------------------------------------------------------
# Named spaces (`space: <name>` in configs/search.yaml, `--space <name>` for `lotto bench`)

_MBV2_STAGES = [  # MobileNetV2's stages as (base width, base repeats, first stride)
    {"width": 24, "repeat": 2, "stride": 2},
    {"width": 32, "repeat": 3, "stride": 2},
    {"width": 64, "repeat": 4, "stride": 2},
    {"width": 96, "repeat": 3, "stride": 1},
    {"width": 160, "repeat": 3, "stride": 2},
    {"width": 320, "repeat": 1, "stride": 1},
]
_MNAS_CHOICES = {
    "base": "mobilenet_v2", "resolution": 224, "se": [False, True], "ops": ["conv", "ds", "ir"],
    "expansions": [3, 6], "act": None, "width_factors": [0.75, 1.0, 1.25],
    "repeat_deltas": [-1, 0, 1], "width_divisor": 8,
}
SPACES: dict[str, dict[str, Any]] = {
    # MnasNet's space (Tan et al. 2019, sec. 4.1, Fig. 4) over MobileNetV2's 7 stages, every
    # stage searched: ConvOp {conv, ds, ir3, ir6}, kernel {3, 5}, SE {0, 0.25}, SkipOp
    # {pooling, identity, none}, filters F_i x {0.75, 1, 1.25}, layers N_i + {-1, 0, +1}
    "mnasnet": {**_MNAS_CHOICES, "kernels": [3, 5], "skips": ["pool", "identity", "none"],
                "stages": [{"width": 16, "repeat": 1, "stride": 1}, *_MBV2_STAGES]},
    # the space lotto searched first: kernels {3, 5, 7}, no pooling skip, the first stage fixed
    # to MnasNet-A1's 3x3 SepConv
    "mbv2-k357": {**_MNAS_CHOICES, "kernels": [3, 5, 7], "skips": ["identity", "none"],
                  "stages": [{"widths": [16], "repeats": [1], "stride": 1, "ops": ["ds"],
                              "kernels": [3], "se": [False], "skips": ["identity"]},
                             *_MBV2_STAGES]},
}


def space_config(value: Any) -> dict[str, Any]:
    """A `space:` section as a plain dict: a name of SPACES -> its definition (a copy); a
    mapping (or an OmegaConf node) -> itself, or with `name: <a name of SPACES>` that named
    space with the mapping's other keys in place of its own (`{name: mnasnet, kernels: [3]}`)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(value, str):
        if value not in SPACES:
            raise LottoError(f"space {value!r} is not a named space; choose one of "
                             f"{', '.join(SPACES)} or give a mapping (base, stages, ...)")
        return copy.deepcopy(SPACES[value])
    if not isinstance(value, Mapping):
        raise LottoError(f"space must be a name ({', '.join(SPACES)}) or a mapping, not "
                         f"{type(value).__name__}")
    value = dict(value)
    if "name" in value:
        name = value.pop("name")
        return {**space_config(str(name)), **value}
    return value


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


def parse_space(data: Mapping[str, Any] | str, source: str = "space") -> Space:
    """A space from its `space:` section: a name of SPACES or a mapping (see the module doc)."""
    if isinstance(data, Mapping) and "space" in data and isinstance(data["space"],
                                                                    (Mapping, str)):
        data = data["space"]
    if isinstance(data, str):
        source = f"{source} ({data})"
    data = space_config(data)
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
    base_name = str(data.get("base") or "mobilenet_v2")
    from lotto.arch import PRESETS

    if base_name not in PRESETS:
        raise LottoError(f"{source}: base {base_name!r} is not a preset; choose one of "
                         f"{', '.join(PRESETS)}")
    base = preset(base_name, 1.0, resolution, num_classes)
    acts = [b.act for b in base.blocks]
    factors = _tuple(data.get("width_factors", [1.0]), "width_factors", float)
    deltas = _tuple(data.get("repeat_deltas", [0]), "repeat_deltas", int)
    divisor = int(data.get("width_divisor") or 8)
    if divisor < 1 or any(f <= 0 for f in factors):
        raise LottoError(f"{source}: width_factors must be > 0 and width_divisor >= 1")
    stages = []
    for i, raw in enumerate(data["stages"]):
        key = f"stages[{i}]"
        if not isinstance(raw, Mapping):
            raise LottoError(f"{source}: {key} must be a mapping")
        bad = sorted(set(raw) - _STAGE_KEYS)
        if bad:
            raise LottoError(f"{source}: unknown key(s) {', '.join(bad)} in {key}")
        stages.append(_stage(raw, data, key, source, acts[min(i, len(acts) - 1)], factors,
                             deltas, divisor))
    space = Space(resolution=resolution, base=base, stages=stages, source=source)
    try:
        space.sample(1, 0)  # validates one network: an impossible space fails here, in one line
    except LottoError as e:
        raise LottoError(f"{source}: {e}") from None
    return space


def _stage(raw: Mapping[str, Any], data: Mapping[str, Any], key: str, source: str,
           base_act: str, factors: tuple, deltas: tuple, divisor: int) -> Stage:
    """One stage, every field checked: a bad one is one line naming the stage and the field.

    Widths and repeats are either listed (`widths`, `repeats`) or derived from the stage's base
    (`width` x each of `width_factors`, rounded by make_divisible(., width_divisor); `repeat` +
    each of `repeat_deltas`, at least 1), as in MnasNet's filter and layer choices."""
    def fail(field: str, message: str) -> LottoError:
        return LottoError(f"{source}: {key} field {field}: {message}")

    def values(field: str, kind: type, default: Any) -> tuple:
        try:
            return _tuple(raw.get(field, data.get(field, default)), f"{key}.{field}", kind)
        except LottoError as e:
            raise fail(field, str(e).split(": ", 1)[1]) from None

    if "widths" in raw and "width" in raw:
        raise fail("width", "give widths or width, not both")
    if "widths" in raw:
        widths = values("widths", int, None)
    elif "width" in raw:
        got = _tuple(raw["width"], f"{key}.width", int)
        base_width = got[0]
        if len(got) != 1 or base_width < 1:
            raise fail("width", f"{raw['width']!r}: one base width >= 1 (or a widths list)")
        widths = tuple(sorted({make_divisible(base_width * f, divisor) for f in factors}))
    else:
        raise LottoError(f"{source}: {key} needs widths (or width)")
    if "repeats" in raw and "repeat" in raw:
        raise fail("repeat", "give repeats or repeat, not both")
    if "repeat" in raw:
        got = _tuple(raw["repeat"], f"{key}.repeat", int)
        if len(got) != 1:
            raise fail("repeat", f"{raw['repeat']!r}: one base repeat (or a repeats list)")
        base_repeat = got[0]
        repeats = tuple(sorted({max(1, base_repeat + d) for d in deltas}))
    else:
        repeats = values("repeats", int, 1)
    kernels = values("kernels", int, [3])
    expansions = values("expansions", float, [6])
    se = values("se", bool, [False])
    ops = values("ops", str, ["ir"])
    raw_skips = raw.get("skips", data.get("skips", ["identity"]))
    try:
        skips = tuple(skip_name(v) for v in _tuple(raw_skips, f"{key}.skips", lambda v: v))
    except ValueError:
        raise fail("skips", f"{raw_skips!r}: choose from {', '.join(SKIPS)} (or true / "
                   "false)") from None
    if len(set(skips)) != len(skips):
        raise fail("skips", f"{raw_skips!r}: an option is listed twice")
    act = str(raw.get("act") or data.get("act") or base_act)
    try:
        stride = int(raw.get("stride", 1))
    except (TypeError, ValueError):
        raise fail("stride", f"{raw.get('stride')!r} is not 1 or 2") from None
    if any(w < 1 for w in widths):
        raise fail("widths", f"{list(widths)}: every width must be >= 1")
    if min(repeats) < 1:
        raise fail("repeats", "must be >= 1")
    if stride not in (1, 2):
        raise fail("stride", f"{stride} is not 1 or 2")
    if any(k < 1 or k % 2 == 0 for k in kernels):
        raise fail("kernels", f"{list(kernels)}: kernels must be odd and positive")
    if any(e <= 0 for e in expansions):
        raise fail("expansions", f"{list(expansions)}: ratios must be > 0")
    if any(o not in OPS for o in ops):
        raise fail("ops", f"{list(ops)}: choose from {', '.join(OPS)}")
    if act not in ACTIVATIONS:
        raise fail("act", f"{act!r} is not one of {', '.join(ACTIVATIONS)}")
    return Stage(widths=widths, repeats=repeats, stride=stride, kernels=kernels,
                 expansions=expansions, se=se, act=act, ops=ops, skips=skips)


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
        if isinstance(inner, str):
            inner = space_config(inner)
        if isinstance(inner, Mapping) and inner.get("specs") is None and not inner.get("stages"):
            if {"stem", "blocks", "head"} <= set(data):  # a single spec file
                return _list([raw], resolution, str(path))
        if resolution is not None and isinstance(inner, Mapping):
            inner = {**inner, "resolution": resolution}
        return parse_space(inner, str(path))
    if path.suffix in (".yaml", ".yml"):
        raise LottoError(f"space file {path} not found")
    if raw in SPACES:
        data = space_config(raw)
        if resolution is not None:
            data["resolution"] = resolution
        return parse_space(data, raw)
    return _list([x.strip() for x in raw.split(",") if x.strip()], resolution, "space")


def _list(items: list[str], resolution: int | None, source: str) -> Space:
    if not items:
        raise LottoError("empty space: give presets, spec files or a space YAML")
    res = resolution or 224
    specs = [_network(x, 1.0, res, 1000) for x in items]
    return Space(resolution=res, specs=specs, source=source)
