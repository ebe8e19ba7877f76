"""Runtime operators of a phone inference (TFLite-style, one CPU thread) and their cost features.

A network, a spec layer or a measured block is a list of `Op`s, the kernels a mobile runtime
launches after its fusions (nn-Meter's "kernels"): BatchNorm folds into the conv before it, and
ReLU / ReLU6 fuse into the conv (or the residual add) before them, so they cost nothing of their
own; h-swish is a kernel of its own (TFLite's HARD_SWISH); an SE block is a mean, two small
matrix-vector products, the gate and a multiply. The cost of one op is linear and non-negative
in the coefficients of `OP_FEATURES` (docs/latency.md, phone model), shaped the way the hardware
spends time, roofline-style as a sum of a compute term and a memory-traffic term:

- regular kxk convs, 1x1 convs: multiply-adds (compute) + activation elements read and written
  (the GEMM's packing and store traffic, which is what makes narrow layers slow per MAC) +
  weight bytes (streamed once per inference: wide 1x1 layers at 7x7 are weight-bound);
- depthwise convs: multiply-adds (k^2 per output: the kernel-size dependence) + elements read
  and written (depthwise is memory-bound on a phone CPU);
- grouped 1x1 convs and channel shuffles (FBNet's blocks): the split / concatenate / transpose
  copies the runtime adds around them;
- FC layers and the SE's two FCs: multiply-adds (= weights at batch 1: weight-bound);
- elementwise ops (residual add, an identity copy, pooling): elements touched;
- every op: the part of its activation traffic in tensors larger than `CACHE_ELEMS` (they spill
  out of the last-level cache: the resolution dependence at 112 and 56 px), and one per-kernel
  overhead.

A network adds one fixed cost per inference (the `fixed` feature of `phone.FEATURES`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lotto.arch import Layer

OP_FEATURES = (
    "conv_macs",  # regular kxk convs (stem)
    "pw_macs",  # 1x1 convs (grouped ones included)
    "gemm_elems",  # activation elements read + written by conv / 1x1 convs
    "weight_bytes",  # conv / 1x1 weights (float32)
    "dw_macs",  # depthwise multiply-adds (k^2 per output element)
    "dw_elems",  # depthwise elements read + written
    "group_elems",  # grouped 1x1 split/concat copies and channel-shuffle elements
    "fc_macs",  # FC layers and SE FCs
    "elem_elems",  # residual add, identity copy, pooling: elements touched
    "big_elems",  # activation elements in tensors larger than CACHE_ELEMS
    "hswish_elems",  # h-swish (an unfused kernel)
    "se_elems",  # SE pooling + gate multiply over the gated tensor
    "kernels",  # per-kernel launch / dispatch overhead
)
FLOAT_BYTES = 4
# 1 MiB of float32: above the per-core L2 of the Pixel phones' big cores (Kryo 512 KiB, A75
# 256 KiB) and within reach of the shared L3/system cache; a tensor above it streams from DRAM.
CACHE_ELEMS = 262_144
SE_KERNELS = 5  # mean, FC, FC, gate, multiply
KINDS = ("conv", "pw", "dw", "fc", "se", "pool", "add", "copy", "shuffle", "hswish")


@dataclass(frozen=True)
class Op:
    """One runtime kernel at batch 1 (NHWC; h, w = input size; ho, wo = output size)."""

    kind: str  # one of KINDS
    h: int
    w: int
    cin: int
    ho: int
    wo: int
    cout: int
    k: int = 1
    stride: int = 1
    groups: int = 1
    mid: int = 0  # SE squeeze width

    @property
    def in_elems(self) -> int:
        return self.h * self.w * self.cin

    @property
    def out_elems(self) -> int:
        return self.ho * self.wo * self.cout

    @property
    def macs(self) -> int:
        if self.kind in ("conv", "pw", "dw", "fc"):
            return self.ho * self.wo * self.cout * (self.cin // self.groups) * self.k * self.k
        if self.kind == "se":
            return 2 * self.cin * self.mid
        return 0


_INDEX = {name: i for i, name in enumerate(OP_FEATURES)}


def _big(*elems: int) -> int:
    return sum(e for e in elems if e > CACHE_ELEMS)


def op_features(op: Op) -> np.ndarray:
    """The OP_FEATURES vector of one runtime kernel."""
    f = np.zeros(len(OP_FEATURES))
    i, o = op.in_elems, op.out_elems
    kind = op.kind
    kernels = 1.0
    if kind in ("conv", "pw"):
        f[_INDEX["conv_macs" if kind == "conv" else "pw_macs"]] = op.macs
        f[_INDEX["gemm_elems"]] = i + o
        f[_INDEX["weight_bytes"]] = FLOAT_BYTES * op.cout * (op.cin // op.groups) * op.k * op.k
        f[_INDEX["big_elems"]] = _big(i, o)
        if op.groups > 1:  # split into groups and concatenate back: copies of both tensors
            f[_INDEX["group_elems"]] = i + o
            kernels = 2.0 + op.groups
    elif kind == "dw":
        f[_INDEX["dw_macs"]] = op.macs
        f[_INDEX["dw_elems"]] = i + o
        f[_INDEX["big_elems"]] = _big(i, o)
    elif kind == "shuffle":  # reshape + transpose + reshape: one read, one write
        f[_INDEX["group_elems"]] = i + o
        f[_INDEX["big_elems"]] = _big(i, o)
    elif kind == "fc":
        f[_INDEX["fc_macs"]] = op.macs
    elif kind == "se":
        f[_INDEX["fc_macs"]] = op.macs
        f[_INDEX["se_elems"]] = i
        kernels = float(SE_KERNELS)
    elif kind == "pool":
        f[_INDEX["elem_elems"]] = i
    elif kind in ("add", "copy"):  # add reads two operands
        f[_INDEX["elem_elems"]] = (2 * i if kind == "add" else i) + o
        f[_INDEX["big_elems"]] = _big(i, o)
    elif kind == "hswish":
        f[_INDEX["hswish_elems"]] = o
    else:
        raise ValueError(f"unknown op kind {kind!r}")
    f[_INDEX["kernels"]] = kernels
    return f


def ops_features(ops: list[Op]) -> np.ndarray:
    total = np.zeros(len(OP_FEATURES))
    for op in ops:
        total += op_features(op)
    return total


# ---------------------------------------------------------------------------------------------
# Spec layers -> ops (BN and ReLU/ReLU6 fused; h-swish a kernel of its own)


def layer_ops(layer: Layer) -> list[Op]:
    """The runtime kernels of one row of `ArchSpec.layers()`."""
    dims = (layer.in_h, layer.in_w, layer.in_c, layer.out_h, layer.out_w, layer.out_c)
    op = layer.op
    if op in ("conv", "pwconv", "dwconv"):
        kind = {"conv": "conv", "pwconv": "pw", "dwconv": "dw"}[op]
        if kind == "conv" and layer.kernel == 1:
            kind = "pw"
        ops = [Op(kind, *dims, k=layer.kernel, stride=layer.stride, groups=layer.groups)]
    elif op == "fc":
        ops = [Op("fc", 1, 1, layer.in_c, 1, 1, layer.out_c)]
    elif op == "se":
        ops = [Op("se", *dims, mid=layer.mid)]
    elif op in ("pool", "avgpool"):  # global, or a pooling shortcut's stride x stride windows
        ops = [Op("pool", *dims)]
    elif op == "add":
        ops = [Op("add", *dims)]
    else:
        raise ValueError(f"layer {layer.name}: unknown op {op!r}")
    if layer.act == "hswish":
        ops.append(Op("hswish", layer.out_h, layer.out_w, layer.out_c, layer.out_h, layer.out_w,
                      layer.out_c))
    return ops


# ---------------------------------------------------------------------------------------------
# HW-NAS-Bench FBNet-space keys -> ops (data/pixel3_fbnet_blocks.csv; block as in its README)

_KEY = re.compile(r"^(?P<kind>ConvBlock|Skip|ConvNorm|AvgP|FC)_(?P<rest>.*)$")


def _fields(rest: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"([A-Za-z]+?)(\d+)(?:_|$)", rest)}


def _out(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def fbnet_ops(key: str) -> list[Op]:
    """The runtime kernels of one HW-NAS-Bench FBNet table entry.

    ConvBlock(e, k, g): 1x1 Cin -> e*Cin (groups g, BN+ReLU fused), a channel shuffle when
    g > 1, kxk depthwise (stride, BN+ReLU fused), 1x1 -> Cout (groups g, BN fused), residual
    add when stride 1 and Cin == Cout. Skip: identity (a copy, as timed alone) when the shapes
    match, else a 1x1 conv with the stride. ConvNorm: conv + BN (+ReLU). AvgP: global pooling.
    """
    m = _KEY.match(key)
    if not m:
        raise ValueError(f"unknown FBNet table key {key!r}")
    kind, f = m.group("kind"), _fields(m.group("rest"))
    if kind == "FC":
        return [Op("fc", 1, 1, f["Cin"], 1, 1, f["Cout"])]
    h, w, cin, cout = f["H"], f["W"], f["Cin"], f["Cout"]
    s = f.get("stride", 1)
    ho, wo = _out(h, s), _out(w, s)
    if kind == "AvgP":
        return [Op("pool", h, w, cin, 1, 1, cout)]
    if kind == "ConvNorm":
        k = f["kernel"]
        return [Op("conv" if k > 1 else "pw", h, w, cin, ho, wo, cout, k=k, stride=s,
                   groups=f.get("group", 1))]
    if kind == "Skip":
        if s == 1 and cin == cout:
            return [Op("copy", h, w, cin, h, w, cout)]
        return [Op("pw", h, w, cin, ho, wo, cout, stride=s)]
    e, k, g = f["exp"], f["kernel"], f["group"]
    mid = e * cin
    ops = [Op("pw", h, w, cin, h, w, mid, groups=g)]
    if g > 1:
        ops.append(Op("shuffle", h, w, mid, h, w, mid))
    ops.append(Op("dw", h, w, mid, ho, wo, mid, k=k, stride=s, groups=mid))
    ops.append(Op("pw", ho, wo, mid, ho, wo, cout, groups=g))
    if s == 1 and cin == cout:
        ops.append(Op("add", ho, wo, cout, ho, wo, cout))
    return ops


# The FBNet ImageNet macro-architecture (FBNet paper, Table 1; HW-NAS-Bench's FBNet space):
# (input size, cin, cout, stride) of the 22 searchable positions.
FBNET_POSITIONS: tuple[tuple[int, int, int, int], ...] = (
    (112, 16, 16, 1),
    (112, 16, 24, 2), (56, 24, 24, 1), (56, 24, 24, 1), (56, 24, 24, 1),
    (56, 24, 32, 2), (28, 32, 32, 1), (28, 32, 32, 1), (28, 32, 32, 1),
    (28, 32, 64, 2), (14, 64, 64, 1), (14, 64, 64, 1), (14, 64, 64, 1),
    (14, 64, 112, 1), (14, 112, 112, 1), (14, 112, 112, 1), (14, 112, 112, 1),
    (14, 112, 184, 2), (7, 184, 184, 1), (7, 184, 184, 1), (7, 184, 184, 1),
    (7, 184, 352, 1),
)
FBNET_CANDIDATES = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3",
                    "k5_e6", "skip")
FBNET_FIXED = ("ConvNorm_H224_W224_Cin3_Cout16_kernel3_stride2_group1",
               "ConvNorm_H7_W7_Cin352_Cout1984_kernel1_stride1_group1",
               "AvgP_H7_W7_Cin1984_Cout1984_kernel7_stride1", "FC_Cin1984_Cout1000")


def fbnet_block_key(position: tuple[int, int, int, int], candidate: str) -> str:
    h, cin, cout, s = position
    if candidate == "skip":
        return f"Skip_H{h}_W{h}_Cin{cin}_Cout{cout}_stride{s}"
    k, e = int(candidate[1]), int(candidate.split("_")[1][1:])
    g = 2 if candidate.endswith("_g2") else 1
    return f"ConvBlock_H{h}_W{h}_Cin{cin}_Cout{cout}_exp{e}_kernel{k}_stride{s}_group{g}"


def fbnet_networks(n: int, seed: int = 0) -> list[list[str]]:
    """`n` FBNet-space ImageNet networks drawn uniformly (a fixed seed), each as its table keys
    (stem, 22 blocks, head, pool, classifier): HW-NAS-Bench prices a network as their sum."""
    rng = np.random.default_rng(seed)
    nets = []
    for _ in range(n):
        picks = rng.integers(0, len(FBNET_CANDIDATES), len(FBNET_POSITIONS))
        keys = [fbnet_block_key(p, FBNET_CANDIDATES[c]) for p, c in zip(FBNET_POSITIONS, picks)]
        nets.append([FBNET_FIXED[0], *keys, *FBNET_FIXED[1:]])
    return nets
