"""Architecture spec: a mobile network as plain, serialisable data.

An `ArchSpec` is a stem, a list of blocks, a head and a few global fields. Widths are stored
*absolute and already scaled* (expansion width 120, not ratio 3): what NetAdapt edits, what
`bench` prices and what `build_model` builds are the same numbers. `width_mult` only records the
multiplier a preset was derived with; `scale_width` applies a new one.

Block strings
-------------
Each block has a compact one-line form (timm style), e.g. ``ir_k5_s2_e120_c40_se0.25_hs``::

    block  := type ("_" option)*
    type   := "ir"     inverted residual: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project
            | "ds"     depthwise separable: kxk depthwise -> [SE] -> 1x1 project (no expansion)
            | "conv"   plain kxk conv -> [SE]
    option := "k" INT     kernel (odd; default 3)
            | "s" INT     stride (1 or 2; default 1)
            | "e" INT     expansion width in channels (ir only, required); when it equals the
                          block's input width there is no expand conv (MobileNetV3 convention)
            | "t" NUM     expansion *ratio* (MobileNetV2's t): e = round(t * input width);
                          parse-time only (needs the input width), stored as "e"
            | "c" INT     output width (required)
            | "r" INT     repeat (stage form, parse-time only): n blocks, only the first strided
            | "se" [NUM]  squeeze-excite ratio (bare "se" = 0.25; absent = no SE)
            | "re" | "re6" | "hs"     activation: ReLU (default), ReLU6, h-swish
            | "skip" | "noskip"       residual forced on / off (default: auto = stride 1 and
                                      input width = output width)
            | "poolskip"              pooling shortcut (MnasNet's "pooling" SkipOp): the block
                                      input average-pooled over stride x stride windows (ceil
                                      mode: the conv's output size) is added to the output.
                                      Needs stride 2 and input width = output width (at stride
                                      1 it would be the identity residual: use "skip")

Conv, BN, activation: every conv is bias-free and followed by BN; the projection (ir, ds) is
linear. SE = global pool -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> gate, multiplied into
the depthwise output (the conv output for "conv"). Its squeeze width depends on `se_rule`:

- ``exp`` (MobileNetV3): make_divisible(int(exp * ratio), 8), i.e. 1/4 of the expansion width.
- ``in`` (MnasNet): max(1, int(block input width * ratio)).

The gate is `se_gate`: ``hsigmoid`` (MobileNetV3) or ``sigmoid`` (MnasNet); the SE's inner
activation is always ReLU.

Head: ``conv`` = 1x1 conv + BN + act at full resolution (0 = none), then global average
pooling, then ``hidden`` = FC (bias, no BN) + act (0 = none), dropout, FC to the classes.
MobileNetV2/MnasNet: conv 1280, hidden 0 (pool after the last 1x1). MobileNetV3's efficient
last stage: conv 960, hidden 1280 (the 1280 layer runs after pooling, without BN).

Counting follows docs/papers.md (MobileNetV3, "Counted"): multiply-adds of convs and FCs only
(SE FCs included; pooling, BN, activations, residual adds and the SE gate multiply are free);
parameters include BN's 2 per channel and the biases of SE convs and FC layers.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lotto.errors import LottoError

BLOCK_TYPES = ("ir", "ds", "conv")
ACTIVATIONS = ("relu", "relu6", "hswish")
SE_RULES = ("exp", "in")
SE_GATES = ("hsigmoid", "sigmoid")
_ACT_TOKEN = {"relu": "re", "relu6": "re6", "hswish": "hs"}
_TOKEN_ACT = {**{v: k for k, v in _ACT_TOKEN.items()}, **{k: k for k in _ACT_TOKEN}}
FLOAT_BYTES = 4
POOL = "pool"  # BlockSpec.skip of a pooling shortcut
_SKIP_TOKEN = {True: "skip", False: "noskip", POOL: "poolskip"}
_TOKEN_SKIP = {v: k for k, v in _SKIP_TOKEN.items()}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Nearest multiple of `divisor`, at least `min_value`, never more than 10% below `value`.

    The TF/torchvision rule every mobile network uses for scaled widths.
    """
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


# --------------------------------------------------------------------------------------------
# The spec


@dataclass(frozen=True)
class BlockSpec:
    """One block. `exp` is absolute channels (ir only; None for ds and conv)."""

    type: str
    kernel: int
    stride: int
    exp: int | None
    out: int
    se: float = 0.0
    act: str = "relu"
    skip: bool | str | None = None  # None = auto (stride 1 and input width == output width);
    # True / False = identity residual forced on / off; "pool" = pooling shortcut (strided)

    def format(self) -> str:
        """The compact one-line string; `parse_block(b.format()) == b`."""
        parts = [self.type, f"k{self.kernel}", f"s{self.stride}"]
        if self.exp is not None:
            parts.append(f"e{self.exp}")
        parts.append(f"c{self.out}")
        if self.se:
            parts.append(f"se{float(self.se)!r}")  # repr: the shortest exact round trip
        parts.append(_ACT_TOKEN.get(self.act, self.act))
        if self.skip is not None:
            parts.append(_SKIP_TOKEN[self.skip])
        return "_".join(parts)

    def __str__(self) -> str:
        return self.format()

    def expansion(self, in_channels: int) -> int:
        """Width of the depthwise stage (= input width for ds; output width for conv)."""
        if self.type == "ir":
            return int(self.exp)  # type: ignore[arg-type]
        return in_channels if self.type == "ds" else self.out

    def has_expand(self, in_channels: int) -> bool:
        return self.type == "ir" and self.exp != in_channels

    def residual(self, in_channels: int) -> bool:
        """An identity residual (a pooling shortcut is not one: see `shortcut`)."""
        if self.skip == POOL:
            return False
        if self.skip is not None:
            return self.skip
        return self.stride == 1 and in_channels == self.out

    def shortcut(self, in_channels: int) -> str:
        """What is added to the block's output: "identity", "pool" or "none"."""
        if self.skip == POOL:
            return POOL
        return "identity" if self.residual(in_channels) else "none"


@dataclass(frozen=True)
class StemSpec:
    channels: int = 16
    kernel: int = 3
    stride: int = 2
    act: str = "hswish"


@dataclass(frozen=True)
class HeadSpec:
    conv: int = 0  # 1x1 conv + BN + act before pooling (0 = none)
    hidden: int = 0  # FC + act after pooling, no BN (0 = none)
    act: str = "hswish"
    dropout: float = 0.2


@dataclass(frozen=True)
class ArchSpec:
    """A whole network. Construct freely; `validate()` (called by every consumer) checks it."""

    name: str
    stem: StemSpec
    blocks: tuple[BlockSpec, ...]
    head: HeadSpec
    resolution: int = 224
    in_channels: int = 3
    num_classes: int = 1000
    width_mult: float = 1.0
    se_rule: str = "exp"
    se_gate: str = "hsigmoid"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01  # PyTorch convention (TF's 0.99 decay)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))

    # ---- structure ---------------------------------------------------------------------------

    def replace(self, **changes: Any) -> ArchSpec:
        """A copy with some fields changed (the spec is immutable)."""
        return dataclasses.replace(self, **changes)

    def block_inputs(self) -> list[int]:
        """Input width of each block."""
        widths, c = [], self.stem.channels
        for b in self.blocks:
            widths.append(c)
            c = b.out
        return widths

    @property
    def features(self) -> int:
        """Width entering the classifier (after the head conv, if any)."""
        if self.head.conv:
            return self.head.conv
        return self.blocks[-1].out if self.blocks else self.stem.channels

    def se_width(self, block: BlockSpec, in_channels: int) -> int:
        """Squeeze width of a block's SE (0 when it has none)."""
        if not block.se:
            return 0
        if self.se_rule == "in":
            return max(1, int(in_channels * block.se))
        return make_divisible(int(block.expansion(in_channels) * block.se), 8)

    def block_strings(self) -> list[str]:
        return [b.format() for b in self.blocks]

    def validate(self) -> ArchSpec:
        """Raise LottoError for a spec that cannot be built; return self."""
        where = f"spec {self.name!r}"
        _positive(self.resolution, f"{where}: resolution")
        _positive(self.in_channels, f"{where}: in_channels")
        _positive(self.num_classes, f"{where}: num_classes")
        _in_range(self.width_mult, f"{where}: width_mult", 0, math.inf, low_open=True)
        if self.se_rule not in SE_RULES:
            raise LottoError(f"{where}: se_rule {self.se_rule!r} is not one of {SE_RULES}")
        if self.se_gate not in SE_GATES:
            raise LottoError(f"{where}: se_gate {self.se_gate!r} is not one of {SE_GATES}")
        _in_range(self.bn_eps, f"{where}: bn_eps", 0, 1, low_open=True, high_open=True)
        _in_range(self.bn_momentum, f"{where}: bn_momentum", 0, 1)
        s = self.stem
        _positive(s.channels, f"{where}: stem channels")
        _check_kernel_stride(s.kernel, s.stride, f"{where}: stem")
        _check_act(s.act, f"{where}: stem")
        if not self.blocks:
            raise LottoError(f"{where}: has no blocks")
        size = _out_size(self.resolution, s.stride)
        _check_size(self.resolution, s.stride, f"{where}: stem", self)
        cin = s.channels
        for i, b in enumerate(self.blocks):
            label = f"{where}: block {i}"
            if not isinstance(b, BlockSpec):
                raise LottoError(f"{label}: not a BlockSpec ({b!r})")
            if b.type not in BLOCK_TYPES:
                raise LottoError(f"{label}: unknown type {b.type!r}; use one of {BLOCK_TYPES}")
            _check_kernel_stride(b.kernel, b.stride, label)
            _positive(b.out, f"{label}: output width")
            if b.type == "ir":
                if b.exp is None:
                    raise LottoError(f"{label}: an ir block needs an expansion width (e)")
                _positive(b.exp, f"{label}: expansion width")
            elif b.exp is not None:
                raise LottoError(f"{label}: only ir blocks take an expansion width (e)")
            _in_range(b.se, f"{label}: SE ratio", 0, 1)
            _check_act(b.act, label)
            if not any(b.skip is v for v in (None, True, False)) and b.skip != POOL:
                raise LottoError(f"{label}: skip must be true, false, pool or null, got "
                                 f"{b.skip!r}")
            label = f"{label} ({b.format()})"
            if b.se and self.se_width(b, cin) < 1:
                raise LottoError(f"{label}: SE squeeze width would be 0")
            if b.skip == POOL:
                if b.stride != 2:
                    raise LottoError(f"{label}: a pooling skip needs stride 2 (at stride 1 it "
                                     "is the identity residual: use skip)")
                if cin != b.out:
                    raise LottoError(f"{label}: a pooling skip needs equal widths, got {cin} "
                                     f"in and {b.out} out")
            elif b.skip:
                if b.stride != 1:
                    raise LottoError(f"{label}: a residual needs stride 1, not {b.stride}")
                if cin != b.out:
                    raise LottoError(
                        f"{label}: a residual needs equal widths, got {cin} in and {b.out} out"
                    )
            _check_size(size, b.stride, label, self)
            size = _out_size(size, b.stride)
            cin = b.out
        h = self.head
        for key in ("conv", "hidden"):
            value = getattr(h, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise LottoError(f"{where}: head {key} must be an integer >= 0 (0 = none)")
        _check_act(h.act, f"{where}: head")
        _in_range(h.dropout, f"{where}: head dropout", 0, 1, high_open=True)
        return self

    # ---- shapes, layers, counts --------------------------------------------------------------

    def layers(self) -> list[Layer]:
        """Per-layer table, in execution order; names are module paths in `build_model`."""
        self.validate()
        return _layers(self)

    def block_contexts(self) -> list[BlockContext]:
        """One entry per separately buildable unit: stem, each block, head conv, classifier."""
        self.validate()
        by_unit: dict[str, list[Layer]] = {}
        for layer in _layers(self):
            by_unit.setdefault(layer.unit, []).append(layer)
        out = []
        for unit, layers in by_unit.items():
            first, last = layers[0], layers[-1]
            index = first.block
            block = self.blocks[index] if index is not None else None
            out.append(
                BlockContext(
                    name=unit,
                    part=first.part,
                    index=index,
                    block=block,
                    in_shape=(first.in_h, first.in_w, first.in_c),
                    out_shape=(last.out_h, last.out_w, last.out_c),
                    key=_unit_key(self, first.part, block, first, last),
                    macs=sum(x.macs for x in layers),
                    params=sum(x.params for x in layers),
                )
            )
        return out

    def params(self) -> int:
        return sum(x.params for x in self.layers())

    def macs(self) -> int:
        return sum(x.macs for x in self.layers())

    def output_size(self) -> int:
        """Side of the last feature map (before pooling)."""
        size = _out_size(self.resolution, self.stem.stride)
        for b in self.blocks:
            size = _out_size(size, b.stride)
        return size

    def total_stride(self) -> int:
        return math.prod([self.stem.stride, *(b.stride for b in self.blocks)])

    # ---- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "resolution": self.resolution,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "width_mult": self.width_mult,
            "se_rule": self.se_rule,
            "se_gate": self.se_gate,
            "bn_eps": self.bn_eps,
            "bn_momentum": self.bn_momentum,
            "stem": dataclasses.asdict(self.stem),
            "blocks": self.block_strings(),
            "head": dataclasses.asdict(self.head),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "spec") -> ArchSpec:
        """Build from `to_dict` output (blocks as strings, stage strings with r/t, or dicts)."""
        if not isinstance(data, Mapping):
            raise LottoError(f"{source}: a spec must be a mapping, not {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LottoError(f"{source}: unknown spec key(s) {', '.join(map(str, unknown))}")
        for key in ("stem", "blocks", "head"):
            if key not in data:
                raise LottoError(f"{source}: missing spec key {key!r}")
        stem = _sub(StemSpec, data["stem"], f"{source}: stem")
        head = _sub(HeadSpec, data["head"], f"{source}: head")
        if not isinstance(data["blocks"], list):
            raise LottoError(f"{source}: blocks must be a list of block strings")
        blocks = parse_blocks(data["blocks"], stem.channels, source=source)
        scalars = {k: v for k, v in data.items() if k not in ("stem", "blocks", "head")}
        scalars.setdefault("name", Path(source).stem or "spec")  # a hand-written file may omit it
        try:
            spec = cls(stem=stem, blocks=tuple(blocks), head=head, **scalars)
        except TypeError as e:
            raise LottoError(f"{source}: {e}") from None
        for f in ("resolution", "in_channels", "num_classes"):
            if not isinstance(getattr(spec, f), int) or isinstance(getattr(spec, f), bool):
                raise LottoError(f"{source}: {f} must be an integer")
        return spec.validate()

    def to_yaml(self) -> str:
        # one block string per line; stem and head stay readable mappings
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def save(self, path: str | Path) -> None:
        from lotto.runs import write_text  # atomic write; imported late to keep spec light

        write_text(Path(path), self.to_yaml())


def _sub(cls: type, data: Any, source: str) -> Any:
    if not isinstance(data, Mapping):
        raise LottoError(f"{source} must be a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise LottoError(f"{source}: unknown key(s) {', '.join(map(str, unknown))}")
    return cls(**data)


def _positive(value: Any, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise LottoError(f"{what} must be a positive integer, got {value!r}")


def _in_range(value: Any, what: str, low: float, high: float, low_open: bool = False,
              high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise LottoError(f"{what} must be a number in {lo}{low}, {high}{hi}, got {value!r}")


def _check_kernel_stride(kernel: Any, stride: Any, where: str) -> None:
    _positive(kernel, f"{where}: kernel")
    if kernel % 2 == 0:
        raise LottoError(f"{where}: kernel must be odd (same padding), got {kernel}")
    if stride not in (1, 2):
        raise LottoError(f"{where}: stride must be 1 or 2, got {stride!r}")


def _check_act(act: Any, where: str) -> None:
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise LottoError(f"{where}: unknown activation {act!r}; use one of {ACTIVATIONS}")


def _out_size(size: int, stride: int) -> int:
    # same padding (k // 2) with an odd kernel: floor((size - 1) / stride) + 1
    return (size - 1) // stride + 1


def _check_size(size: int, stride: int, where: str, spec: ArchSpec) -> None:
    # A strided conv over a map narrower than its stride sees padding only: the resolution is
    # too small for the network's total stride.
    if size < stride:
        raise LottoError(
            f"{where}: input is {size}x{size} px, too small for stride {stride}; resolution "
            f"{spec.resolution} is too small for total stride {spec.total_stride()} "
            "(raise the resolution or use adapt_to_resolution)"
        )


# --------------------------------------------------------------------------------------------
# Parsing

_NUM = r"((?:\d+(?:\.\d*)?|\.\d+)(?:e-?\d+)?)"
_OPTION = re.compile(rf"^(k|s|e|t|c|r|se)({_NUM})?$")


def parse_block(text: str, in_channels: int | None = None) -> BlockSpec:
    """Parse one block string (no repeats). `in_channels` is needed only for a "t" ratio."""
    blocks = _parse(text, in_channels, allow_repeat=False)
    return blocks[0]


def parse_blocks(
    items: Iterable[str | Mapping[str, Any] | BlockSpec],
    in_channels: int | None = None,
    source: str = "blocks",
) -> list[BlockSpec]:
    """Parse a list of block (or stage) strings; repeats expand, ratios become widths."""
    out: list[BlockSpec] = []
    c = in_channels
    for i, item in enumerate(items):
        if isinstance(item, BlockSpec):
            new = [item]
        elif isinstance(item, Mapping):
            try:
                new = [BlockSpec(**item)]
            except TypeError as e:
                raise LottoError(f"{source}: block {i}: {e}") from None
        elif isinstance(item, str):
            new = _parse(item, c, allow_repeat=True)
        else:
            raise LottoError(f"{source}: block {i} must be a string, got {item!r}")
        out.extend(new)
        c = new[-1].out
    return out


def _parse(text: str, in_channels: int | None, allow_repeat: bool) -> list[BlockSpec]:
    if not isinstance(text, str) or not text.strip():
        raise LottoError(f"block string {text!r} is empty")
    kind, *tokens = text.strip().split("_")
    if kind not in BLOCK_TYPES:
        raise LottoError(f"block {text!r}: unknown type {kind!r}; use one of {BLOCK_TYPES}")
    values: dict[str, Any] = {"kernel": 3, "stride": 1, "se": 0.0, "act": "relu", "skip": None}
    repeat, ratio, exp, out = 1, None, None, None
    seen: set[str] = set()
    for tok in tokens:
        if tok in _TOKEN_ACT:
            key, value = "act", _TOKEN_ACT[tok]
        elif tok in _TOKEN_SKIP:
            key, value = "skip", _TOKEN_SKIP[tok]
        else:
            m = _OPTION.match(tok)
            if not m:
                raise LottoError(f"block {text!r}: cannot read option {tok!r}")
            key, raw = m.group(1), m.group(2)
            if raw is None and key != "se":
                raise LottoError(f"block {text!r}: option {key!r} needs a number")
            value = _number(raw, key, text) if raw is not None else 0.25
        if key in seen:
            raise LottoError(f"block {text!r}: option {key!r} given twice")
        seen.add(key)
        if key == "k":
            values["kernel"] = value
        elif key == "s":
            values["stride"] = value
        elif key == "e":
            exp = value
        elif key == "t":
            ratio = value
        elif key == "c":
            out = value
        elif key == "r":
            repeat = value
        elif key == "se":
            values["se"] = float(value)
        else:
            values[key] = value
    if out is None:
        raise LottoError(f"block {text!r}: output width (c) is required")
    if repeat != 1 and not allow_repeat:
        raise LottoError(f"block {text!r}: a repeat (r) is only allowed in a list of blocks")
    if repeat < 1:
        raise LottoError(f"block {text!r}: repeat must be >= 1")
    if exp is not None and ratio is not None:
        raise LottoError(f"block {text!r}: give either e (width) or t (ratio), not both")
    if kind != "ir" and (exp is not None or ratio is not None):
        raise LottoError(f"block {text!r}: only ir blocks take an expansion (e or t)")
    if kind == "ir" and exp is None and ratio is None:
        raise LottoError(f"block {text!r}: an ir block needs an expansion width (e) or ratio (t)")
    if ratio is not None and in_channels is None:
        raise LottoError(f"block {text!r}: a ratio (t) needs the input width; use e instead")
    blocks = []
    c = in_channels
    for i in range(repeat):
        e = exp
        if ratio is not None:
            e = int(round(c * ratio))  # MobileNetV2 / MnasNet: hidden = round(in * t)
        stride = values["stride"] if i == 0 else 1
        blocks.append(BlockSpec(type=kind, exp=e, out=out, **{**values, "stride": stride}))
        c = out
    return blocks


def _number(raw: str, key: str, text: str) -> int | float:
    if key in ("t", "se"):
        return float(raw)
    if not raw.isdigit():
        raise LottoError(f"block {text!r}: option {key!r} must be an integer, got {raw}")
    return int(raw)


# --------------------------------------------------------------------------------------------
# Layer table and block contexts


@dataclass(frozen=True)
class Layer:
    """One op of the network at batch 1, in execution order.

    op: conv (full kxk conv), dwconv, pwconv (1x1 conv, groups 1), fc, se (the whole SE
    module: pool, two 1x1 convs with bias, ReLU, gate, multiply), pool (global average),
    avgpool (a pooling shortcut: average over stride x stride windows), add (residual or
    shortcut). `act` is the activation applied right after the op (None = linear); `bn` says
    a BN follows (folded into the conv at inference). Bytes are float32 activations/weights.
    """

    index: int
    name: str  # module path in the built model (the block itself for "add")
    unit: str  # the block context it belongs to: stem, blocks.i, head, classifier
    part: str  # stem | block | head | classifier
    block: int | None  # index into spec.blocks; None outside blocks
    op: str
    in_h: int
    in_w: int
    in_c: int
    out_h: int
    out_w: int
    out_c: int
    kernel: int
    stride: int
    groups: int
    macs: int
    params: int
    act: str | None
    bn: bool
    bias: bool
    mid: int = 0  # SE squeeze width
    gate: str | None = None  # SE gate (hsigmoid / sigmoid)

    @property
    def bytes_in(self) -> int:
        extra = self.in_h * self.in_w * self.in_c if self.op == "add" else 0  # two operands
        return FLOAT_BYTES * (self.in_h * self.in_w * self.in_c + extra)

    @property
    def bytes_out(self) -> int:
        return FLOAT_BYTES * self.out_h * self.out_w * self.out_c

    @property
    def bytes_weights(self) -> int:
        return FLOAT_BYTES * self.params

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(bytes_in=self.bytes_in, bytes_out=self.bytes_out, bytes_weights=self.bytes_weights)
        return d


@dataclass(frozen=True)
class BlockContext:
    """A unit that can be built (`lotto.arch.build.build_block`) and timed alone.

    `key` identifies the unit for lookup tables: it holds everything that changes the unit's
    computation (block string, input HxWxC, SE rule/gate when it has SE) and nothing else.
    """

    name: str  # stem | blocks.i | head | classifier
    part: str
    index: int | None
    block: BlockSpec | None
    in_shape: tuple[int, int, int]  # H, W, C
    out_shape: tuple[int, int, int]
    key: str
    macs: int
    params: int


def _unit_key(spec: ArchSpec, part: str, block: BlockSpec | None, first: Layer, last: Layer) -> str:
    shape = f"{first.in_h}x{first.in_w}x{first.in_c}"
    if part == "stem":
        s = spec.stem
        return f"stem_k{s.kernel}_s{s.stride}_c{s.channels}_{_ACT_TOKEN[s.act]}@{shape}"
    if part == "head":
        return f"head_c{spec.head.conv}_{_ACT_TOKEN[spec.head.act]}@{shape}"
    if part == "classifier":
        hidden = f"_h{spec.head.hidden}_{_ACT_TOKEN[spec.head.act]}" if spec.head.hidden else ""
        return f"classifier{hidden}_n{spec.num_classes}@{shape}"
    assert block is not None
    key = f"{block.format()}@{shape}"
    if block.se:
        key += f"+se_{spec.se_rule}_{spec.se_gate}"
    return key


def _layers(spec: ArchSpec) -> list[Layer]:
    rows: list[Layer] = []

    def add(name: str, unit: str, part: str, block: int | None, op: str, hw: int, cin: int,
            cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: str | None = None,
            bn: bool = False, bias: bool = False, mid: int = 0, gate: str | None = None) -> int:
        out_hw = 1 if op == "pool" else _out_size(hw, stride)
        if op in ("conv", "dwconv", "pwconv", "fc"):
            weights = cout * (cin // groups) * kernel * kernel
            macs = weights * out_hw * out_hw
            params = weights + (2 * cout if bn else 0) + (cout if bias else 0)
        elif op == "se":
            macs = 2 * cin * mid  # the two 1x1 convs at 1x1
            params = 2 * cin * mid + mid + cin
        else:
            macs = params = 0
        rows.append(Layer(len(rows), name, unit, part, block, op, hw, hw, cin, out_hw, out_hw,
                          cout, kernel, stride, groups, macs, params, act, bn, bias, mid, gate))
        return out_hw

    st = spec.stem
    hw = add("stem", "stem", "stem", None, "conv", spec.resolution, spec.in_channels,
             st.channels, st.kernel, st.stride, act=st.act, bn=True)
    for i, (b, cin) in enumerate(zip(spec.blocks, spec.block_inputs(), strict=True)):
        unit = f"blocks.{i}"
        hw_in, e = hw, b.expansion(cin)
        if b.type == "conv":
            hw = add(f"{unit}.conv", unit, "block", i, "conv", hw, cin, b.out, b.kernel,
                     b.stride, act=b.act, bn=True)
        else:
            c = cin
            if b.has_expand(cin):
                add(f"{unit}.expand", unit, "block", i, "pwconv", hw, cin, e, act=b.act, bn=True)
                c = e
            hw = add(f"{unit}.dw", unit, "block", i, "dwconv", hw, c, e, b.kernel, b.stride,
                     groups=e, act=b.act, bn=True)
        if b.se:
            width = b.out if b.type == "conv" else e
            add(f"{unit}.se", unit, "block", i, "se", hw, width, width, act="relu",
                mid=spec.se_width(b, cin), gate=spec.se_gate, bias=True)
        if b.type != "conv":
            add(f"{unit}.project", unit, "block", i, "pwconv", hw, e, b.out, bn=True)
        if b.skip == POOL:  # pooled input + output: pool and add are free (MACs rule)
            add(f"{unit}.shortcut", unit, "block", i, "avgpool", hw_in, cin, cin,
                kernel=b.stride, stride=b.stride)
            add(unit, unit, "block", i, "add", hw, b.out, b.out)
        elif b.residual(cin):
            add(unit, unit, "block", i, "add", hw_in, b.out, b.out)
    c = spec.blocks[-1].out
    h = spec.head
    if h.conv:
        add("head", "head", "head", None, "pwconv", hw, c, h.conv, act=h.act, bn=True)
        c = h.conv
    add("pool", "classifier", "classifier", None, "pool", hw, c, c, kernel=hw)
    if h.hidden:
        add("hidden", "classifier", "classifier", None, "fc", 1, c, h.hidden, act=h.act, bias=True)
        c = h.hidden
    add("classifier", "classifier", "classifier", None, "fc", 1, c, spec.num_classes, bias=True)
    return rows


# --------------------------------------------------------------------------------------------
# YAML I/O


# The spec a run directory hands on, in order of preference: search's best network, the final
# network of netadapt / build-v3.
RUN_SPEC_FILES = ("best.yaml", "final.yaml")


def load_spec(source: str | Path) -> ArchSpec:
    """A preset name, a YAML file (as written by `ArchSpec.save`) or a run directory holding one
    of `RUN_SPEC_FILES` (e.g. `runs/search/<run>`: its best network)."""
    from lotto.arch.presets import PRESETS, preset

    text = str(source)
    if text in PRESETS:
        return preset(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise LottoError(
            f"spec {text!r} is neither a preset ({', '.join(sorted(PRESETS))}), a file nor a run"
        )
    if path.is_dir():
        found = [path / f for f in RUN_SPEC_FILES if (path / f).is_file()]
        if not found:
            raise LottoError(f"{path} holds no spec: a run to take a network from has "
                             f"{' or '.join(RUN_SPEC_FILES)}")
        path = found[0]
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise LottoError(f"cannot read spec file {path}: {str(e).splitlines()[0]}") from None
    return ArchSpec.from_dict(data, source=str(path))


def spec_from_yaml(text: str, source: str = "spec") -> ArchSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LottoError(f"{source} does not parse as YAML: {str(e).splitlines()[0]}") from None
    return ArchSpec.from_dict(data, source=source)


# --------------------------------------------------------------------------------------------
# Transformations


def adapt_to_resolution(spec: ArchSpec, resolution: int, min_output: int = 4) -> ArchSpec:
    """Set the resolution, removing early strides (stem first) until the last map is at least
    `min_output` px (e.g. 32 px: stem stride 1 and the first stride-2 block stride 1, 4x4 out)
    and no strided layer sees a map narrower than its stride (which `validate` rejects).

    A block made stride 1 keeps its residual decision (no new skip appears), so the topology is
    the published one at a smaller scale. ImageNet-size inputs are left unchanged.
    """
    _positive(resolution, "resolution")
    stem, blocks = spec.stem, list(spec.blocks)
    inputs = spec.block_inputs()

    def out_size(stem: StemSpec, blocks: Sequence[BlockSpec]) -> int:
        # 0 where a strided layer would see a map narrower than its stride: `validate` rejects
        # that layer (_check_size) although the ceiling size says 1 px, so it counts as too small
        size = resolution
        for stride in (stem.stride, *(b.stride for b in blocks)):
            if size < stride:
                return 0
            size = _out_size(size, stride)
        return size

    while out_size(stem, blocks) < max(1, min_output):
        if stem.stride == 2:
            stem = dataclasses.replace(stem, stride=1)
            continue
        strided = [i for i, b in enumerate(blocks) if b.stride == 2]
        if not strided:
            break
        i = strided[0]
        b = blocks[i]
        # a pooling shortcut at stride 1 is the identity residual
        skip = True if b.skip == POOL else b.residual(inputs[i])
        blocks[i] = dataclasses.replace(b, stride=1, skip=skip)
    return spec.replace(resolution=resolution, stem=stem, blocks=tuple(blocks)).validate()


def scale_width(spec: ArchSpec, mult: float) -> ArchSpec:
    """Multiply every width by `mult` with make_divisible(., 8) (MobileNetV3/torchvision rule:
    stem, expansion, output, head conv and hidden all scale). Relative to the stored widths."""
    if not mult > 0:
        raise LottoError(f"width multiplier must be > 0, got {mult}")

    def sc(c: int) -> int:
        return make_divisible(c * mult, 8) if c else 0

    stem = dataclasses.replace(spec.stem, channels=sc(spec.stem.channels))
    blocks = tuple(
        dataclasses.replace(b, out=sc(b.out), exp=None if b.exp is None else sc(b.exp))
        for b in spec.blocks
    )
    head = dataclasses.replace(spec.head, conv=sc(spec.head.conv), hidden=sc(spec.head.hidden))
    return spec.replace(stem=stem, blocks=blocks, head=head,
                        width_mult=round(spec.width_mult * mult, 6)).validate()


__all__ = [
    "ACTIVATIONS",
    "BLOCK_TYPES",
    "POOL",
    "ArchSpec",
    "BlockContext",
    "BlockSpec",
    "HeadSpec",
    "Layer",
    "StemSpec",
    "adapt_to_resolution",
    "load_spec",
    "make_divisible",
    "parse_block",
    "parse_blocks",
    "scale_width",
    "spec_from_yaml",
]
