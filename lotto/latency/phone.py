"""Phone latency models (pixel1..pixel4; `pixel` = pixel1): an operator-level cost.

A spec layer is the list of runtime kernels it launches after fusion (`lotto.latency.ops`:
BN and ReLU fold into the conv, h-swish and SE are kernels of their own); each kernel costs a
compute term plus a memory-traffic term, linear and non-negative in `ops.OP_FEATURES`::

    t_layer = sum over the layer's kernels of coef . op_features(kernel)
    t_model = scale_device * (sum(t_layer) + t_fixed)

One set of coefficients serves every phone; each phone has its own scale, and each data source
(runtime version) its own factor in the fit. Coefficients are fitted by `lotto.latency.calibrate`
on published whole-network Pixel 1/2/3 latencies plus 225 FBNet blocks timed on a Pixel 3
(sources: data/SOURCES.md and docs/latency.md); pixel4 is one scale from 4-thread
EfficientNet-Lite figures. Fitted values and their strict cross-validated errors ship in
`data/phone_model.json`, reproduced by `scripts/fit_phone_model.py --check`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import torch
from torch import nn

from lotto.arch import ArchSpec, Layer
from lotto.errors import LottoError
from lotto.latency.devices import ALIASES, PHONES, phone_name  # noqa: F401 (re-exported)
from lotto.latency.ops import OP_FEATURES, Op, layer_ops, ops_features
from lotto.latency.units import UnitCache

# per-layer features: the operator features of the runtime kernels a layer becomes (ops.py);
# "fixed" (one per network) is added at the model level
LAYER_FEATURES = OP_FEATURES
FEATURES = (*LAYER_FEATURES, "fixed")
BASELINE_FEATURES = ("all_macs", "fixed")
MODEL_FILE = "phone_model.json"


def layer_features(layer: Layer) -> np.ndarray:
    """The feature vector (LAYER_FEATURES order) of one row of `ArchSpec.layers()`: the sum over
    its runtime kernels (BN and ReLU fused into the conv, h-swish a kernel of its own)."""
    return ops_features(layer_ops(layer))


def spec_features(spec: ArchSpec) -> np.ndarray:
    """FEATURES of a whole network (sum over layers, plus fixed = 1)."""
    total = np.zeros(len(FEATURES))
    for layer in spec.layers():
        total[:-1] += layer_features(layer)
    total[-1] = 1.0
    return total


def baseline_features(spec: ArchSpec) -> np.ndarray:
    """The 'multiply-adds plus a constant' baseline's features."""
    return np.array([float(spec.macs()), 1.0])


def unit_features(spec: ArchSpec) -> dict[str, np.ndarray]:
    """LAYER_FEATURES summed per unit (stem, blocks.i, head, classifier)."""
    out: dict[str, np.ndarray] = {}
    for layer in spec.layers():
        if layer.unit not in out:
            out[layer.unit] = np.zeros(len(LAYER_FEATURES))
        out[layer.unit] += layer_features(layer)
    return out


# ---------------------------------------------------------------------------------------------
# Features of an arbitrary nn.Module (no spec): traced with forward hooks


def module_ops(module: nn.Module, input_shape: tuple[int, ...]) -> list[Op]:
    """The runtime kernels of a module, traced with forward hooks at batch 1.

    Conv2d / Linear become conv, pw, dw or fc ops (BN and ReLU fused away); Hardswish an
    h-swish kernel; a torchvision SqueezeExcitation one SE op (its inner pool and convs are not
    counted twice); pooling a pool op. Residual adds are not modules and are not seen: a spec
    prices them, a module does not.
    """
    from torchvision.ops import SqueezeExcitation

    from lotto.latency.measure import op_type

    ops: list[Op] = []
    inside_se: set[int] = set()
    for m in module.modules():
        if isinstance(m, SqueezeExcitation):
            inside_se.update(id(c) for c in m.modules() if c is not m)

    def record(mod: nn.Module, args: Any, out: Any) -> None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
            return
        if id(mod) in inside_se:
            return
        n, c = x.shape[:2] if x.dim() >= 2 else (1, x.numel())
        h, w = (x.shape[2], x.shape[3]) if x.dim() == 4 else (1, 1)
        oc = out.shape[1] if out.dim() >= 2 else out.numel()
        oh, ow = (out.shape[2], out.shape[3]) if out.dim() == 4 else (1, 1)
        dims = (int(h), int(w), int(c), int(oh), int(ow), int(oc))
        if isinstance(mod, SqueezeExcitation):
            ops.append(Op("se", *dims, mid=int(mod.fc1.out_channels)))
            return
        kind = op_type(mod, tuple(x.shape), tuple(out.shape))
        if kind in ("conv", "pw", "dw") and isinstance(mod, nn.Conv2d):
            ops.append(Op(kind, *dims, k=int(mod.kernel_size[0]), stride=int(mod.stride[0]),
                          groups=int(mod.groups)))
        elif kind == "fc":
            ops.append(Op("fc", 1, 1, int(x.numel() // n), 1, 1, int(out.numel() // n)))
        elif kind == "pool":
            ops.append(Op("pool", *dims))
        elif kind == "hswish":
            ops.append(Op("hswish", *dims))

    handles = [m.register_forward_hook(record) for m in module.modules()
               if not list(m.children()) or isinstance(m, SqueezeExcitation)]
    try:
        with torch.inference_mode():
            was = module.training
            module.eval()
            module(torch.zeros(input_shape))
            module.train(was)
    finally:
        for h in handles:
            h.remove()
    return ops


def module_features(module: nn.Module, input_shape: tuple[int, ...]) -> np.ndarray:
    """FEATURES of a module (its traced runtime kernels, plus fixed = 1)."""
    total = np.zeros(len(FEATURES))
    total[:-1] = ops_features(module_ops(module, input_shape))
    total[-1] = 1.0
    return total


# ---------------------------------------------------------------------------------------------
# The shipped model


@dataclass
class PhoneModel:
    """One phone's fitted model: coefficients (per FEATURES), a device scale, its CV error."""

    device: str
    coef: np.ndarray
    scale: float
    expected_error: float
    version: str
    n_rows: int
    n_scale_rows: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        layer_coef = self.coef[:-1] * self.scale
        fixed = float(self.coef[-1] * self.scale)
        self._layer_coef = layer_coef
        self._fixed = fixed
        # unit -> ms, filled a spec at a time: search loops mostly hit this cache
        self._units: UnitCache[float] = UnitCache(
            lambda spec: {k: float(v @ layer_coef) for k, v in unit_features(spec).items()}
        )

    @property
    def fixed_ms(self) -> float:
        return self._fixed

    def predict_spec(self, spec: ArchSpec) -> float:
        """Milliseconds for a spec (sum of cached unit costs + fixed cost)."""
        return self._fixed + sum(ms for _, ms in self._units.units(spec))

    def predict_units(self, spec: ArchSpec) -> list[tuple[str, float]]:
        return self._units.units(spec)

    def predict_features(self, features: np.ndarray) -> float:
        return float(features @ self.coef) * self.scale

    def predict_layers(self, spec: ArchSpec) -> list[tuple[Layer, float]]:
        """Per-layer predicted ms (the fixed cost is not a layer; see `fixed_ms`)."""
        return [(layer, float(layer_features(layer) @ self._layer_coef)) for layer in spec.layers()]

    def provenance(self) -> str:
        if self.info.get("calibrated_from"):  # a user device (`lotto bench --calibrate`)
            return (f"model({self.device}, {self.version}, fitted on {self.n_rows} latencies "
                    f"measured on {self.info['calibrated_from']}; expected RMSPE ~ "
                    f"{self.expected_error * 100:.0f}% from {self.info.get('cv_rule', 'CV')})")
        blocks = int(self.info.get("block_rows") or 0)
        host = int(self.info.get("host_rows") or 0)
        fitted = (f"operator costs fitted on {self.n_rows - blocks - host} published latencies "
                  f"and {blocks} Pixel-3 FBNet blocks"
                  + (f", shaped by {host} units timed on host XNNPACK" if host else ""))
        if self.device != "pixel1":
            fitted += (f"; {self.device}: pixel1's relative costs x {self.scale:.3f} "
                       f"(from {self.n_scale_rows} rows"
                       f"{', 4 threads' if self.info.get('threads') == 4 else ''})")
        rel, scl = self.info.get("rel_error"), self.info.get("scale_error")
        pooled = (" (pooled, widened: too few rows of its own)"
                  if self.info.get("error_basis") == "pooled" else "")
        parts = (f"relative/rank error ~{rel * 100:.0f}%{pooled}, runtime-scale error "
                 f"~{scl * 100:.0f}%; " if rel is not None and scl is not None else "")
        return (
            f"model({self.device}, {self.version}, {fitted}; {parts}expected raw error ~ "
            f"{self.expected_error * 100:.0f}% from strict leave-one-source/family-out CV)"
        )


def model_path() -> str:
    return str(resources.files("lotto.latency") / "data" / MODEL_FILE)


@cache
def _load_file() -> dict[str, Any]:
    try:
        with open(model_path()) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise LottoError(f"phone model file {model_path()} is missing or corrupt: {e}") from None


def load_phone_model(device: str) -> PhoneModel:
    """The shipped model of a phone (`pixel` = `pixel1`), or a calibrated user device's model
    (`lotto bench --calibrate RUN --as NAME`); LottoError for anything else."""
    name = phone_name(device)
    if name is None:
        raise LottoError(f"unknown phone {device!r}; choose one of pixel, {', '.join(PHONES)}")
    if name not in PHONES:
        from lotto.latency.devices import user_device_file

        path = user_device_file(name)
        assert path is not None
        return _load_user_model(str(path), path.stat().st_mtime_ns)
    return _load_shipped(name)


@cache
def _load_user_model(path: str, mtime_ns: int) -> PhoneModel:
    """A user device's model file (cached per file version: a re-calibration is picked up)."""
    try:
        with open(path) as f:
            data = json.load(f)
        return PhoneModel(
            device=str(data["device"]),
            coef=np.array([data["coef"][f] for f in FEATURES], dtype=float),
            scale=1.0,
            expected_error=float(data["expected_error"]),
            version=str(data["version"]),
            n_rows=int(data["n_rows"]),
            info={"cv": data.get("cv", {}), "calibration_range": data.get("calibration_range", {}),
                  "calibrated_from": data.get("calibrated_from"), "cv_rule": data.get("cv_rule"),
                  "fingerprint": data.get("fingerprint")},
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise LottoError(f"calibrated device file {path} is unreadable ({e}); calibrate again "
                         "with `lotto bench --calibrate RUN --as NAME`") from None


@cache
def _load_shipped(name: str) -> PhoneModel:
    data = _load_file()
    entry = data["devices"][name]
    return PhoneModel(
        device=name,
        coef=np.array([entry["coef"][f] for f in FEATURES], dtype=float),
        scale=float(entry["scale"]),
        expected_error=float(entry["expected_error"]),
        version=str(data["version"]),
        n_rows=int(entry["n_rows"]),
        n_scale_rows=int(entry.get("n_scale_rows", 0)),
        info={"data_sha256": data["data"]["sha256"], "block_rows": data["data"].get("block_rows"),
              "host_rows": data["data"].get("host_rows"),
              "rel_error": float(entry["rel_error"]), "scale_error": float(entry["scale_error"]),
              "relative_costs": entry.get("relative_costs"), "threads": entry.get("threads", 1),
              "error_basis": entry.get("error_basis"),
              "calibration_range": data.get("calibration_range", {})},
    )
