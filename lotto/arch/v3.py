"""MobileNetV3's manual changes (Howard et al. 2019, section 5) as spec transformations.

Each takes a spec and returns a new one (specs are immutable); `lotto build-v3` applies them in
order to a searched seed. Applied to `mobilenet_v3_{large,small}_seed` with the published
settings they give `mobilenet_v3_{large,small}` exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from lotto.arch.spec import ArchSpec, HeadSpec
from lotto.errors import LottoError


def use_hswish(spec: ArchSpec, from_channels: int | None, stem: bool = True) -> ArchSpec:
    """h-swish from the first layer at least `from_channels` wide on; ReLU before it.

    The one placement rule of the project (build-v3 and the calibration variants both use it).
    Layers are taken in order: the stem (by its width), then the blocks (by output width); the
    first that is at least `from_channels` wide starts h-swish, and every later layer and the
    head use it. Table 5's "h-swish@N": the first layer using h-swish has N channels.
    `stem=True` also switches the stem whatever its width (the published networks do);
    `from_channels=None` means ReLU everywhere, head included.
    """
    if from_channels is None:
        relu = tuple(dataclasses.replace(b, act="relu") for b in spec.blocks)
        return spec.replace(stem=dataclasses.replace(spec.stem, act="relu"), blocks=relu,
                            head=dataclasses.replace(spec.head, act="relu")).validate()
    widths = [spec.stem.channels, *(b.out for b in spec.blocks)]  # layer 0 is the stem
    first = next((i for i, w in enumerate(widths) if w >= from_channels), None)
    if first is None:
        raise LottoError(
            f"h-swish from {from_channels} channels: no layer of {spec.name!r} is that wide "
            f"(widest {max(widths)})"
        )
    blocks = tuple(
        dataclasses.replace(b, act="hswish" if i + 1 >= first else "relu")
        for i, b in enumerate(spec.blocks)
    )
    st = dataclasses.replace(spec.stem, act="hswish" if stem or first == 0 else "relu")
    return spec.replace(stem=st, blocks=blocks,
                        head=dataclasses.replace(spec.head, act="hswish")).validate()


def use_v3_se(spec: ArchSpec, blocks: Sequence[int] | None = None, ratio: float = 0.25) -> ArchSpec:
    """Squeeze-excite sized to `ratio` of the expansion width (make_divisible(., 8)) with
    h-sigmoid gates, on `blocks` (indices) or, when None, on the blocks that already have SE."""
    n = len(spec.blocks)
    if blocks is None:
        chosen = {i for i, b in enumerate(spec.blocks) if b.se}
    else:
        chosen = set(blocks)
        bad = sorted(i for i in chosen if not 0 <= i < n)
        if bad:
            raise LottoError(f"SE on blocks {bad}: {spec.name!r} has blocks 0..{n - 1}")
    new = tuple(
        dataclasses.replace(b, se=ratio if i in chosen else 0.0) for i, b in enumerate(spec.blocks)
    )
    return spec.replace(blocks=new, se_rule="exp", se_gate="hsigmoid").validate()


def set_stem(spec: ArchSpec, channels: int = 16) -> ArchSpec:
    """Stem with `channels` filters. A first block without an expand conv (its expansion equals
    the stem width) keeps having none, so its structure stays a separable conv."""
    old = spec.stem.channels
    blocks = list(spec.blocks)
    first = blocks[0]
    if first.type == "ir" and first.exp == old:
        blocks[0] = dataclasses.replace(first, exp=channels)
    return spec.replace(stem=dataclasses.replace(spec.stem, channels=channels),
                        blocks=tuple(blocks)).validate()


def efficient_last_stage(spec: ArchSpec) -> ArchSpec:
    """Pool before the wide 1x1: the last block's expand conv becomes the head conv (BN, at full
    resolution), its depthwise and projection go, and the old head conv runs after pooling as
    an FC without BN (the paper's Figure 5)."""
    last, head = spec.blocks[-1], spec.head
    if head.hidden:
        raise LottoError(f"{spec.name!r} already pools before its last 1x1 (head.hidden set)")
    if not head.conv:
        raise LottoError(f"{spec.name!r} has no head conv to move after pooling")
    if len(spec.blocks) < 2 or last.type != "ir" or last.stride != 1:
        raise LottoError(
            f"efficient last stage needs a last ir block with stride 1; {spec.name!r} ends with "
            f"{last.format()}"
        )
    new_head = HeadSpec(conv=int(last.exp), hidden=head.conv, act=head.act,  # type: ignore[arg-type]
                        dropout=head.dropout)
    return spec.replace(blocks=spec.blocks[:-1], head=new_head).validate()


def replace_blocks(spec: ArchSpec, source: ArchSpec) -> ArchSpec:
    """`spec` with the blocks of `source` (a searched / NetAdapt-ed block list)."""
    return spec.replace(blocks=source.blocks).validate()
