"""One h-swish placement rule: build-v3 (`lotto.arch.v3.use_hswish`) and the calibration
variants (`lotto.latency.variants.with_activations`) place it the same way."""

from __future__ import annotations

import pytest

from lotto.arch import preset
from lotto.arch.v3 import use_hswish
from lotto.errors import LottoError
from lotto.latency.variants import with_activations


@pytest.mark.parametrize("width", [16, 24, 80, 100, 112, 160])
def test_variants_and_build_v3_share_the_rule(width: int) -> None:
    spec = preset("mobilenet_v3_large")
    assert with_activations(spec, width) == use_hswish(spec, width, stem=False)


def test_first_layer_at_least_that_wide_starts_hswish() -> None:
    spec = preset("mobilenet_v3_large")  # block widths 16 24 24 40 40 40 80 80 80 80 112 ...
    acts = [b.act for b in use_hswish(spec, 100, stem=False).blocks]
    assert acts == ["relu"] * 10 + ["hswish"] * 5  # 100 -> the first 112-wide block
    s = use_hswish(spec, 16, stem=False)
    assert s.stem.act == "hswish" and {b.act for b in s.blocks} == {"hswish"}  # the stem is 16
    assert use_hswish(spec, 80).stem.act == "hswish"  # stem=True: the published networks
    relu = use_hswish(spec, None)
    assert {b.act for b in relu.blocks} | {relu.stem.act, relu.head.act} == {"relu"}
    with pytest.raises(LottoError, match="no layer"):
        use_hswish(spec, 2000)
