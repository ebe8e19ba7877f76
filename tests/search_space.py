"""The tiny search space the search, supernet and fidelity tests share (2 stages, 32 px)."""

TINY_SPACE = """
space:
  base: mobilenet_v3_small
  resolution: 32
  kernels: [3, 5]
  expansions: [3, 6]
  se: [false, true]
  ops: [conv, ds, ir]
  skips: [true, false]
  width_factors: [0.75, 1.0, 1.25]  # widths 16 -> {16, 24}, 24 -> {24, 32}
  repeat_deltas: [-1, 0, 1]         # repeats 1 -> {1, 2}, 2 -> {1, 2, 3}
  stages:
    - {width: 16, repeat: 1, stride: 2}
    - {width: 24, repeat: 2, stride: 2}
"""
