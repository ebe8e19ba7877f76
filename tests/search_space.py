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
  stages:
    - {width: 16, repeat: 1, stride: 2}
    - {width: 24, repeat: 2, stride: 2}
"""
