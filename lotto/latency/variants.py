"""The networks behind the calibration CSV rows, built from the presets by spec edits.

- Width multipliers of MobileNetV3 follow the TF-slim rule that the published checkpoints (and
  their latencies and MAdds) use (`preset(..., rule="tf")`): an expansion width is its 1.0x
  *ratio* times the scaled input width, and the last 1280/1024 layer is not scaled below 1.0x.
  The torchvision rule undercounts V3-Large 0.75 (140M MAdds against the published 155M).
- Bracketed variants (paper Table 5, h-swish placement on V3-Large 1.0) and the README's
  "minimalistic" networks (no SE, no h-swish, 3x3 kernels) are edits of the presets.
"""

from __future__ import annotations

import dataclasses
import re

from lotto.arch import ArchSpec, preset
from lotto.arch.v3 import use_hswish
from lotto.errors import LottoError

_V3 = ("mobilenet_v3_large", "mobilenet_v3_small")
_VARIANT = re.compile(r"^\s*([a-z0-9_]+)\s*(?:\[(.+)\])?\s*$")


def tf_width(name: str, width_mult: float, resolution: int = 224) -> ArchSpec:
    """A preset at `width_mult` under the TF-slim multiplier rule (`preset(..., rule="tf")`):
    the rule of the published MobileNetV3 checkpoints, MAdds and Pixel latencies."""
    return preset(name, width_mult, resolution, rule="tf")


def with_activations(spec: ArchSpec, first_hswish: int | None) -> ArchSpec:
    """ReLU everywhere (`first_hswish=None`) or Table 5's "h-swish@N": `lotto.arch.v3`'s one
    placement rule, with the stem switched only when it is itself that wide."""
    return use_hswish(spec, first_hswish, stem=False)


def minimalistic(spec: ArchSpec) -> ArchSpec:
    """The README's minimalistic MobileNetV3: no SE, no h-swish (ReLU), 3x3 kernels."""
    relu = with_activations(spec, None)
    blocks = tuple(dataclasses.replace(b, se=0.0, kernel=3) for b in relu.blocks)
    stem = dataclasses.replace(relu.stem, kernel=3)
    return relu.replace(
        name=f"{spec.name}_minimalistic", blocks=blocks, stem=stem
    ).validate()


def calibration_spec(network: str, width_mult: float = 1.0, resolution: int = 224) -> ArchSpec:
    """The spec of one CSV `network` name (with an optional bracketed variant)."""
    m = _VARIANT.match(network)
    if not m:
        raise LottoError(f"cannot read network name {network!r}")
    name, variant = m.group(1), (m.group(2) or "").strip().lower()
    if name.endswith("_minimalistic"):
        base = name[: -len("_minimalistic")]
        if base not in _V3:
            raise LottoError(f"no minimalistic variant of {base!r}")
        return minimalistic(tf_width(base, width_mult, resolution))
    spec = tf_width(name, width_mult, resolution)
    if not variant or variant.startswith("published"):
        return spec
    if variant == "relu everywhere":
        return with_activations(spec, None)
    hs = re.match(r"h-swish from the (\d+)-channel", variant)
    if hs:
        return with_activations(spec, int(hs.group(1)))
    raise LottoError(f"unknown variant [{variant}] of {name}")
