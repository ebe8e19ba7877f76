"""Published whole-network phone latencies kept out of every fit: independent checks.

- ProxylessNAS-Mobile on a Pixel 1: 78 ms (Cai et al., ProxylessNAS, ICLR 2019, Table 2; the
  same table gives MobileNetV2 1.0 75 ms under the same protocol). Architecture: the released
  `proxyless_mobile` network (mit-han-lab/proxylessnas), as transcribed in public model zoos
  (e.g. osmr/imgclsmob `proxylessnas_mobile`: per-stage channels, kernels, expansions and the
  blocks kept).
- EfficientNet-Lite0..4 on a Pixel 4 CPU, FP32, batch 1, 4 threads: 12, 18, 26, 41, 76 ms
  (tensorflow/tpu models/official/efficientnet/lite/README.md). Four threads and a newer phone:
  only a per-device scale can be learnt from five rows, and it is validated leave-one-out.

- MnasNet-A1 on a Pixel 1 at 5 input sizes x 5 depth multipliers (25 rows; tensorflow/tpu
  models/official/mnasnet/README.md, "details of Mnasnet-A1 on ImageNet"; the same README's
  multiply-adds are within 1-3% of ours at every setting, tests/test_latency_phone.py).

The ProxylessNAS mobile block table (`mobile_trim`) is not here: it is reserved for the
project's independent check.
"""

from __future__ import annotations

import math

from lotto.arch import ArchSpec
from lotto.arch.spec import BlockSpec, HeadSpec, StemSpec, make_divisible

PROXYLESS_MOBILE_PIXEL1_MS = 78.0
PROXYLESS_SAME_PROTOCOL_V2_MS = 75.0
PROXYLESS_SOURCE = "Cai et al., ProxylessNAS (ICLR 2019), Table 2: Pixel 1, TFLite, batch 1"


def proxylessnas_mobile() -> ArchSpec:
    """ProxylessNAS-Mobile (ReLU6 everywhere, 32-channel stem, 1280 head)."""
    kept = [[1], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    channels = [[16], [32, 32, 32, 32], [40, 40, 40, 40], [80, 80, 80, 80, 96, 96, 96, 96],
                [192, 192, 192, 192, 320]]
    kernels = [[3], [5, 3, 3, 3], [7, 3, 5, 5], [7, 5, 5, 5, 5, 5, 5, 5], [7, 7, 7, 7, 7]]
    expansions = [[1], [3, 3, 3, 3], [3, 3, 3, 3], [6, 3, 3, 3, 6, 3, 3, 3], [6, 6, 3, 3, 6]]
    blocks = []
    cin = 32
    for stage in range(5):
        for j, keep in enumerate(kept[stage]):
            if not keep:
                continue
            stride = 2 if (stage > 0 and j == 0) else 1
            out, e, k = channels[stage][j], expansions[stage][j], kernels[stage][j]
            if e == 1:
                blocks.append(BlockSpec("ds", k, stride, None, out, act="relu6"))
            else:
                blocks.append(BlockSpec("ir", k, stride, cin * e, out, act="relu6"))
            cin = out
    return ArchSpec(name="proxylessnas_mobile", stem=StemSpec(32, 3, 2, "relu6"),
                    blocks=tuple(blocks), head=HeadSpec(conv=1280, act="relu6", dropout=0.0))


# EfficientNet-Lite (tensorflow/tpu efficientnet_lite_builder): B0 blocks, ReLU6, no SE; stem
# (32) and head (1280) fixed while scaling; the first and last stage's repeats not scaled.
_LITE_B0 = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
            (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]  # repeats, k, s, e, out
_LITE = {0: (1.0, 1.0, 224), 1: (1.0, 1.1, 240), 2: (1.1, 1.2, 260), 3: (1.2, 1.4, 280),
         4: (1.4, 1.8, 300)}  # width, depth, resolution
EFFICIENTNET_LITE_PIXEL4_MS = {0: 12.0, 1: 18.0, 2: 26.0, 3: 41.0, 4: 76.0}
EFFICIENTNET_LITE_SOURCE = ("tensorflow/tpu models/official/efficientnet/lite README: Pixel 4 "
                            "CPU, FP32, batch 1, 4 threads")


def efficientnet_lite(i: int) -> ArchSpec:
    width, depth, res = _LITE[i]
    blocks = []
    cin = 32
    for s, (r, k, stride, e, out) in enumerate(_LITE_B0):
        c = make_divisible(out * width, 8)
        reps = r if s in (0, len(_LITE_B0) - 1) else int(math.ceil(depth * r))
        for j in range(reps):
            st = stride if j == 0 else 1
            if e == 1:
                blocks.append(BlockSpec("ds", k, st, None, c, act="relu6"))
            else:
                blocks.append(BlockSpec("ir", k, st, cin * e, c, act="relu6"))
            cin = c
    return ArchSpec(name=f"efficientnet_lite{i}", stem=StemSpec(32, 3, 2, "relu6"),
                    blocks=tuple(blocks), head=HeadSpec(conv=1280, act="relu6", dropout=0.0),
                    resolution=res)


MNASNET_A1_SOURCE = ("tensorflow/tpu models/official/mnasnet README: MnasNet-A1, Pixel 1 "
                     "latency (ms) by input size and depth multiplier")
# (input size, depth multiplier): (published multiply-adds in millions, Pixel 1 ms)
MNASNET_A1_PIXEL1 = {
    (224, 1.4): (591.5, 135.0), (224, 1.0): (315.2, 78.0), (224, 0.75): (226.7, 61.0),
    (224, 0.5): (105.2, 32.0), (224, 0.35): (63.2, 22.0),
    (192, 1.4): (435.1, 99.0), (192, 1.0): (232.0, 57.0), (192, 0.75): (166.9, 45.0),
    (192, 0.5): (77.6, 24.0), (192, 0.35): (46.8, 17.0),
    (160, 1.4): (302.8, 72.0), (160, 1.0): (161.6, 41.0), (160, 0.75): (116.4, 33.0),
    (160, 0.5): (54.4, 18.0), (160, 0.35): (32.9, 13.0),
    (128, 1.4): (194.5, 49.0), (128, 1.0): (104.1, 29.0), (128, 0.75): (75.0, 23.0),
    (128, 0.5): (35.3, 12.0), (128, 0.35): (21.6, 8.5),
    (96, 1.4): (110.3, 32.0), (96, 1.0): (59.3, 18.0), (96, 0.75): (42.9, 17.0),
    (96, 0.5): (20.5, 7.4), (96, 0.35): (12.7, 5.4),
}
