"""NetAdapt as MobileNetV3 used it: weight truncation (`truncate`) and proposals (`proposals`).

The run itself (steps, fine-tunes, baseline, resume) is `lotto.experiments.netadapt`.
"""

from lotto.netadapt.proposals import (
    Knob,
    Proposal,
    candidates,
    floor_spec,
    knobs,
    set_width,
    widest_within,
)
from lotto.netadapt.truncate import channel_norms, kept_channels, topology, truncate_state

__all__ = [
    "Knob",
    "Proposal",
    "candidates",
    "channel_norms",
    "floor_spec",
    "kept_channels",
    "knobs",
    "set_width",
    "topology",
    "truncate_state",
    "widest_within",
]
