"""Architecture specs for mobile networks and the builder that turns them into modules.

`lotto.arch.spec` holds the data (ArchSpec, BlockSpec, block strings, YAML, counting, the
per-layer table); `lotto.arch.presets` the named networks; `lotto.arch.build` the nn.Modules.
"""

from lotto.arch.presets import PRESETS, preset
from lotto.arch.spec import (
    ArchSpec,
    BlockContext,
    BlockSpec,
    HeadSpec,
    Layer,
    StemSpec,
    adapt_to_resolution,
    load_spec,
    make_divisible,
    parse_block,
    parse_blocks,
    scale_width,
    spec_from_yaml,
)

__all__ = [
    "PRESETS",
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
    "preset",
    "scale_width",
    "spec_from_yaml",
]
