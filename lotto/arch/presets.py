"""Named architecture specs: MobileNetV2, MobileNetV3-Large/Small, MnasNet-A1/B1.

Each preset is its paper's table written as block strings, plus the width-multiplier rule of its
reference implementation (so `preset(name, width_mult=m)` equals that implementation at `m`).

Sources:
- mobilenet_v2: paper Table 2 = torchvision `mobilenet_v2` (hidden = round(in * t); the 1280
  head conv is not scaled below 1.0x). BN eps 1e-5, momentum 0.1 as torchvision.
- mobilenet_v3_large / _small: paper Tables 1 and 2 as in torchvision `mobilenetv3.py` (1024
  head for Small, no SE on its 576 conv; see docs/papers.md, MobileNetV3). Width multiplier, rule
  "torchvision": every width, including the hidden 1280/1024, is make_divisible(c * m, 8) and
  the head conv is 6x the last block's width. Rule "tf" (TF-slim mobilenet_v3.py, the published
  checkpoints): see `preset`.
- mnasnet_a1: the official TF code (tensorflow/tpu models/official/mnasnet/mnasnet_models.py,
  `mnasnet_a1`), whose block order is the paper's Figure 7. SE sized from the block input width
  (se_rule "in"), sigmoid gate, BN eps 1e-3 / momentum 0.01 (TF decay 0.99). Head 1280 unscaled.
- mnasnet_b1: torchvision `mnasnet1_0` (same TF code's B1: no SE). BN eps 1e-5 and momentum
  0.0003 as torchvision, so its state dict loads with equal outputs.
- mobilenet_v3_large_seed / _small_seed: the V3 tables with the four manual changes of the
  paper undone (ReLU everywhere, MnasNet-style SE on the same blocks, 32-filter stem, the
  original last stage: last block kept as ir_k3 with e = head width and twice the last output
  width, then a 1x1 1280 (1024) conv with BN before pooling, as in the paper's Figure 5). The
  paper does not publish these networks; `lotto build-v3` applies the changes to them and lands
  exactly on the published ones. The Small seed's last stage is our analogue of Figure 5.
"""

from __future__ import annotations

from collections.abc import Callable

from lotto.arch.spec import ArchSpec, BlockSpec, HeadSpec, StemSpec, make_divisible, parse_blocks
from lotto.errors import LottoError

# (kernel, exp, out, SE, activation, stride) = the rows of the MobileNetV3 tables
_V3_LARGE = [
    (3, 16, 16, False, "re", 1),
    (3, 64, 24, False, "re", 2),
    (3, 72, 24, False, "re", 1),
    (5, 72, 40, True, "re", 2),
    (5, 120, 40, True, "re", 1),
    (5, 120, 40, True, "re", 1),
    (3, 240, 80, False, "hs", 2),
    (3, 200, 80, False, "hs", 1),
    (3, 184, 80, False, "hs", 1),
    (3, 184, 80, False, "hs", 1),
    (3, 480, 112, True, "hs", 1),
    (3, 672, 112, True, "hs", 1),
    (5, 672, 160, True, "hs", 2),
    (5, 960, 160, True, "hs", 1),
    (5, 960, 160, True, "hs", 1),
]
_V3_SMALL = [
    (3, 16, 16, True, "re", 2),
    (3, 72, 24, False, "re", 2),
    (3, 88, 24, False, "re", 1),
    (5, 96, 40, True, "hs", 2),
    (5, 240, 40, True, "hs", 1),
    (5, 240, 40, True, "hs", 1),
    (5, 120, 48, True, "hs", 1),
    (5, 144, 48, True, "hs", 1),
    (5, 288, 96, True, "hs", 2),
    (5, 576, 96, True, "hs", 1),
    (5, 576, 96, True, "hs", 1),
]

# MobileNetV2 Table 2 and MnasNet stages, as stage strings (t = ratio, r = repeats)
_V2 = ["ir_t1_c16_re6", "ir_r2_s2_t6_c24_re6", "ir_r3_s2_t6_c32_re6", "ir_r4_s2_t6_c64_re6",
       "ir_r3_t6_c96_re6", "ir_r3_s2_t6_c160_re6", "ir_t6_c320_re6"]
_MNAS_A1 = ["ds_c16_noskip", "ir_r2_s2_t6_c24", "ir_r3_k5_s2_t3_c40_se0.25", "ir_r4_s2_t6_c80",
            "ir_r2_t6_c112_se0.25", "ir_r3_k5_s2_t6_c160_se0.25", "ir_t6_c320"]
_MNAS_B1 = ["ds_c16", "ir_r3_s2_t3_c24", "ir_r3_k5_s2_t3_c40", "ir_r3_k5_s2_t6_c80",
            "ir_r2_t6_c96", "ir_r4_k5_s2_t6_c192", "ir_t6_c320"]


def _scale_stages(stages: list[str], mult: float) -> list[str]:
    """Scale the c of stage strings (ratios t follow the scaled input width)."""
    if mult == 1.0:
        return stages
    out = []
    for s in stages:
        tokens = s.split("_")
        out.append("_".join(
            f"c{make_divisible(int(t[1:]) * mult, 8)}" if t.startswith("c") else t for t in tokens
        ))
    return out


def _v3(rows: list, last: int, name: str, m: float, rule: str = "torchvision") -> ArchSpec:
    def a(c: float) -> int:
        return make_divisible(c * m, 8)

    blocks, cin, cin_1x = [], a(16), 16
    for k, e, c, se, act, s in rows:
        if rule == "tf":  # TF-slim: the 1.0x expansion *ratio* times the scaled input width
            exp = make_divisible(e / cin_1x * cin, 8)
        else:  # torchvision: the absolute expansion width scaled
            exp = a(e)
        blocks.append(BlockSpec("ir", k, s, exp, a(c), 0.25 if se else 0.0,
                                "hswish" if act == "hs" else "relu"))
        cin, cin_1x = a(c), c
    if rule == "tf":  # the 960/576 conv scales; the 1280/1024 layer never shrinks below 1.0x
        head = HeadSpec(a(6 * rows[-1][2]), a(last) if m > 1 else last, "hswish", 0.2)
    else:
        head = HeadSpec(6 * blocks[-1].out, a(last), "hswish", 0.2)
    return ArchSpec(
        name=name,
        stem=StemSpec(a(16), 3, 2, "hswish"),
        blocks=tuple(blocks),
        head=head,
        width_mult=m,
        se_rule="exp",
        se_gate="hsigmoid",
        bn_eps=1e-3,
        bn_momentum=0.01,
    )


def mobilenet_v3_large(m: float = 1.0, rule: str = "torchvision") -> ArchSpec:
    return _v3(_V3_LARGE, 1280, "mobilenet_v3_large", m, rule)


def mobilenet_v3_small(m: float = 1.0, rule: str = "torchvision") -> ArchSpec:
    return _v3(_V3_SMALL, 1024, "mobilenet_v3_small", m, rule)


def mobilenet_v2(m: float = 1.0, rule: str = "torchvision") -> ArchSpec:
    # the TF and torchvision multiplier rules agree here (all widths stay multiples of 8)
    stem = make_divisible(32 * m, 8)
    return ArchSpec(
        name="mobilenet_v2",
        stem=StemSpec(stem, 3, 2, "relu6"),
        blocks=tuple(parse_blocks(_scale_stages(_V2, m), stem)),
        head=HeadSpec(conv=make_divisible(1280 * max(1.0, m), 8), hidden=0, act="relu6",
                      dropout=0.2),
        width_mult=m,
        bn_eps=1e-5,
        bn_momentum=0.1,
    )


def mnasnet_a1(m: float = 1.0, rule: str = "torchvision") -> ArchSpec:
    # the TF and torchvision multiplier rules agree here (all widths stay multiples of 8)
    stem = make_divisible(32 * m, 8)
    return ArchSpec(
        name="mnasnet_a1",
        stem=StemSpec(stem, 3, 2, "relu"),
        blocks=tuple(parse_blocks(_scale_stages(_MNAS_A1, m), stem)),
        head=HeadSpec(conv=1280, hidden=0, act="relu", dropout=0.2),
        width_mult=m,
        se_rule="in",
        se_gate="sigmoid",
        bn_eps=1e-3,
        bn_momentum=0.01,
    )


def mnasnet_b1(m: float = 1.0, rule: str = "torchvision") -> ArchSpec:
    # the TF and torchvision multiplier rules agree here (all widths stay multiples of 8)
    stem = make_divisible(32 * m, 8)
    return ArchSpec(
        name="mnasnet_b1",
        stem=StemSpec(stem, 3, 2, "relu"),
        blocks=tuple(parse_blocks(_scale_stages(_MNAS_B1, m), stem)),
        head=HeadSpec(conv=1280, hidden=0, act="relu", dropout=0.2),
        width_mult=m,
        bn_eps=1e-5,
        bn_momentum=1 - 0.9997,
    )


def undo_v3_changes(spec: ArchSpec, name: str) -> ArchSpec:
    """A published V3 spec with the paper's manual changes undone (see the module docstring)."""
    old_stem = spec.stem.channels
    blocks = []
    for i, b in enumerate(spec.blocks):
        exp = 32 if i == 0 and b.exp == old_stem else b.exp
        blocks.append(BlockSpec(b.type, b.kernel, b.stride, exp, b.out, b.se, "relu", b.skip))
    last = spec.blocks[-1]
    blocks.append(BlockSpec("ir", 3, 1, spec.head.conv, 2 * last.out, 0.0, "relu"))
    return spec.replace(
        name=name,
        stem=StemSpec(32, spec.stem.kernel, spec.stem.stride, "relu"),
        blocks=tuple(blocks),
        head=HeadSpec(conv=spec.head.hidden, hidden=0, act="relu", dropout=spec.head.dropout),
        se_rule="in",
        se_gate="sigmoid",
    )


def mobilenet_v3_large_seed(m: float = 1.0, rule: str = "torchvision") -> ArchSpec:
    _only_1x(m, "mobilenet_v3_large_seed")
    return undo_v3_changes(mobilenet_v3_large(), "mobilenet_v3_large_seed")


def mobilenet_v3_small_seed(m: float = 1.0, rule: str = "torchvision") -> ArchSpec:
    _only_1x(m, "mobilenet_v3_small_seed")
    return undo_v3_changes(mobilenet_v3_small(), "mobilenet_v3_small_seed")


def _only_1x(m: float, name: str) -> None:
    if m != 1.0:
        raise LottoError(f"preset {name} exists at width 1.0 only; use scale_width afterwards")


PRESETS: dict[str, Callable[[float, str], ArchSpec]] = {
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
    "mnasnet_a1": mnasnet_a1,
    "mnasnet_b1": mnasnet_b1,
    "mobilenet_v3_large_seed": mobilenet_v3_large_seed,
    "mobilenet_v3_small_seed": mobilenet_v3_small_seed,
}


def preset(
    name: str,
    width_mult: float = 1.0,
    resolution: int = 224,
    num_classes: int = 1000,
    in_channels: int = 3,
    rule: str = "torchvision",
) -> ArchSpec:
    """A named spec at the given width multiplier, resolution and number of classes.

    `rule` picks the width-multiplier rule below 1.0x: "torchvision" (what torchvision builds;
    its state dicts load) or "tf" (the TF-slim code behind the published MobileNetV3
    checkpoints, MAdds and Pixel latencies: expansion = 1.0x ratio x scaled input width, the
    1280/1024 layer not shrunk; e.g. V3-Large 0.75: 154.6M MAdds vs torchvision's 140.0M). The
    two agree at 1.0x and for MobileNetV2 / MnasNet. The resolution is set as is; call
    `adapt_to_resolution` to also cut early strides for small images.
    """
    if name not in PRESETS:
        raise LottoError(f"unknown architecture {name!r}; choose one of {', '.join(PRESETS)}")
    if not width_mult > 0:
        raise LottoError(f"width multiplier must be > 0, got {width_mult}")
    if rule not in ("torchvision", "tf"):
        raise LottoError(f"width-multiplier rule must be torchvision or tf, got {rule!r}")
    spec = PRESETS[name](float(width_mult), rule)
    return spec.replace(
        resolution=resolution, num_classes=num_classes, in_channels=in_channels
    ).validate()
