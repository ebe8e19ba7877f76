"""Fitting the operator-level phone models, and validating them strictly.

Data (lotto/latency/data/, copies of shared/data with their sources in SOURCES.md):

- `pixel_published_latency.csv`: published whole-network Pixel 1/2/3 latencies (float rows;
  the 12 int8 rows of the MobileNetV3 paper's Table 4 are excluded, not modelled). Sources:
  the MobileNetV2 README table (`v2_readme`, 2018 TFLite), the MobileNetV3 paper Tables 3, 5, 9
  (`v3_paper`, the reference scale) and the MobileNetV3 README's minimalistic rows
  (`v3_readme`).
- `pixel3_fbnet_blocks.csv`: 225 FBNet-space blocks timed one by one on a Pixel 3 (HW-NAS-Bench,
  `hwnas`): the per-operator evidence. Each block is priced as the sum of its runtime kernels
  (`ops.fbnet_ops`), with no per-network fixed cost (HW-NAS-Bench times blocks alone).
- `xnnpack_host_units.csv` (in the fit since v4, `host_weight` 0.03; 0 leaves it out): units
  of the published networks and of the search spaces timed on this host through ExecuTorch +
  XNNPACK (`xnnpack_host`), with their features priced by ops.py. A shape prior, not a phone:
  its own factor takes the host-vs-phone scale, its rows inform only the shared relative
  costs; it trains every fold (except that leave-one-family-out drops the held-out family's
  units) and is never scored as a phone source. No unit sits at an FBNet-table or
  ProxylessNAS-Mobile position.

Model: y_row = factor[source] * scale[phone] * (X_row . c), c >= 0 shared by all phones (the
relative operator costs), one scale per phone (Pixel 1 = 1), one factor per source (the runtime
version: `v3_paper` = 1). Fitted by alternating non-negative least squares on relative error
(coefficients given the scales, then each scale in closed form), with a prior pseudo-row for
the h-swish term (the MobileNetV3 paper: optimised h-swish costs ~1 ms over ReLU on V3-Large).
Block rows weigh `BLOCK_WEIGHT` each against 1 for a whole network.

Validation, all strict (a held-out row's label never enters the fit that predicts it):

- leave one family out (published rows; MobileNetV2 vs MobileNetV3, and V2 / V3-Large /
  V3-Small): the FBNet blocks and the other family train; a held-out row keeps the factor of its
  source when the training rows calibrated that source, else 1 (its runtime drift is error).
- leave one source out: every row of a source out of the fit (its factor included), predicted
  raw on the fold's reference scale; reported raw (runtime scale included) and after one scale
  (relative / rank error). The FBNet source's 300 networks (sums of blocks) are scored too.
- leave one block shape out (FBNet blocks): all candidates at one (H, Cin, Cout, stride) out
  at a time; the 300 network sums are then built from out-of-fold block predictions only.

Quoted errors (`error_bars`): `rel_error` (relative / rank error: what ranks and ratios carry)
= the phone's own strict leave-one-family-out RMSPE on rows of calibrated sources where it has
MIN_OWN_ROWS of them, else the pooled one (or its own, if larger) widened for its few rows;
`scale_error` (the runtime version: what absolute milliseconds carry on top; shared, as it is a
property of runtimes) = the smallest value for which expected_error = sqrt(rel^2 + scale^2)
covers 2/3 of the leave-one-source-out raw errors, each source weighing the same.
`strict_coverage` checks that recipe nested: each source's raw errors scored by error bars
calibrated on the other sources only (every fit, rel_error and scale_error without it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import nnls
from scipy.stats import spearmanr

from lotto.errors import LottoError
from lotto.latency.ops import fbnet_networks, fbnet_ops, ops_features
from lotto.latency.phone import (
    BASELINE_FEATURES,
    FEATURES,
    baseline_features,
    spec_features,
)
from lotto.latency.variants import calibration_spec

# phones with published single-thread figures in the calibration data (pixel4: see pixel4_check)
PHONES = ("pixel1", "pixel2", "pixel3")
DATA_FILE = "pixel_published_latency.csv"
BLOCKS_FILE = "pixel3_fbnet_blocks.csv"
HOST_FILE = "xnnpack_host_units.csv"
COLUMNS = (
    "network", "width_mult", "resolution", "published_mmacs", "device", "precision",
    "latency_ms", "source",
)
REFERENCE_GROUP = "v3_paper"
BLOCK_GROUP = "hwnas"
# units of published and search-space networks timed through this host's ExecuTorch + XNNPACK
# (scripts/xnnpack_host_units.py): a shape prior, not a phone. Its own factor absorbs the
# host-vs-phone scale; its rows only inform the shared relative operator costs. It is never
# scored as a phone source (no error bar is calibrated on it) and holds no FBNet-table or
# ProxylessNAS-Mobile shape.
HOST_GROUP = "xnnpack_host"
GROUPS = ("v3_paper", "v2_readme", "v3_readme", BLOCK_GROUP, HOST_GROUP)
PHONE_GROUPS = GROUPS[:4]  # the sources whose labels are phone latencies
# v4: v3 + 233 host-XNNPACK units as a calibrated source (shape); v5: v4's fit, error bars at
# the plain 2/3 share of the sources' held-out errors (v3, v4: the split-conformal share)
VERSION = "pixel-operator-v5"
# v3: runtime kernels, FBNet Pixel-3 blocks, per-source factors
# Paper text (MobileNetV3 5.2): optimised h-swish costs ~1 ms more than ReLU on V3-Large 1.0.
HSWISH_PRIOR_MS = 1.0
PRIOR_WEIGHT = 1.0  # the prior pseudo-row weighs as much as one data row's relative error
# one FBNet block row against one whole-network row: chosen by looking at the strict CV figures
# (not nested); `block_weight_sweep` shows how much they move across candidate weights, and
# `nested_block_weight` what a strict choice inside each fold gives (docs/latency.md)
BLOCK_WEIGHT = 0.1
# one host unit row against one whole network (0 = the host source out of the fit, as v3),
# chosen by a rule fixed before the sweep: the lowest mean leave-one-source-out RMSPE after one
# scale of the three published sources over {0.01, 0.03, 0.1, 0.3, 1}. Not robust far from it
# (Pixel 1's leave-one-family-out is 16.3% at 0.1, 37.9% at 0.3): docs/latency.md
HOST_WEIGHT = 0.03
FBNET_NETWORKS = 300
ITERATIONS = 60
SOURCES = {
    "v3_paper": "Howard et al., Searching for MobileNetV3, arXiv 1905.02244, Tables 3, 5, 9 "
                "(reference scale)",
    "v2_readme": "tensorflow/models research/slim/nets/mobilenet README, MobileNetV2 "
                 "checkpoint table",
    "v3_readme": "tensorflow/models research/slim/nets/mobilenet README, MobileNetV3 "
                 "minimalistic checkpoints",
    "hwnas": "HW-NAS-Bench (Li et al., ICLR 2021), FBNet-space Pixel-3 block table "
             "(GATECH-EIC/HW-NAS-Bench, HW-NAS-Bench-v1_0.pickle)",
}
HOST_SOURCE = ("this project's host: ExecuTorch 1.5.1 + XNNPACK, 1 thread, units of published "
               "and search-space networks (data/xnnpack_host_units.csv, SOURCES.md)")


def data_path() -> Path:
    return Path(str(resources.files("lotto.latency") / "data" / DATA_FILE))


def blocks_path() -> Path:
    return Path(str(resources.files("lotto.latency") / "data" / BLOCKS_FILE))


def host_path() -> Path:
    return Path(str(resources.files("lotto.latency") / "data" / HOST_FILE))


def source_group(source: str) -> str:
    """Rows that share a runtime version share a group (and a factor)."""
    if "MobileNetV2 checkpoint table" in source:
        return "v2_readme"  # 2018 TFLite, tensorflow/models README
    if "minimalistic" in source:
        return "v3_readme"  # tensorflow/models README, networks the paper does not report
    return REFERENCE_GROUP  # MobileNetV3 paper Tables 3, 5, 9


def family(network: str) -> str:
    name = re.sub(r"\s*\[.*\]\s*$", "", network)
    if name.startswith("mobilenet_v2"):
        return "mobilenet_v2"
    if name.startswith("mobilenet_v3_large"):
        return "mobilenet_v3_large"
    if name.startswith("mobilenet_v3_small"):
        return "mobilenet_v3_small"
    raise LottoError(f"calibration row {network!r}: unknown family")


def family2(fam: str) -> str:
    return "mobilenet_v2" if fam == "mobilenet_v2" else "mobilenet_v3"


def block_shape(key: str) -> str:
    """The FBNet table position a block sits at (all its candidates share it)."""
    m = re.match(r"^(ConvBlock|Skip)_H(\d+)_W\d+_Cin(\d+)_Cout(\d+)_.*stride(\d+)", key)
    if m:
        return f"H{m.group(2)}_Cin{m.group(3)}_Cout{m.group(4)}_s{m.group(5)}"
    return key.split("_")[0] + "_" + key.split("_")[1]  # stem / head / pool / FC: their own


@dataclass
class Calibration:
    """Published float rows (X, B) and the FBNet Pixel-3 blocks (XB, yb), with data hashes."""

    rows: pd.DataFrame
    X: np.ndarray
    B: np.ndarray
    sha256: str
    excluded: dict[str, int]
    blocks: pd.DataFrame
    XB: np.ndarray
    blocks_sha256: str
    block_weight: float = BLOCK_WEIGHT  # one block row against one whole network in the fit
    tied: tuple[str, ...] = ()  # features sharing one coefficient (SHARED_TRAFFIC: a variant)
    # host XNNPACK units (HOST_GROUP): in the fit only when host_weight > 0
    host: pd.DataFrame = dataclasses.field(default_factory=lambda: pd.DataFrame(
        {"key": [], "origin": [], "spec": [], "host_ms": [], "family2": []}))
    XH: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, len(FEATURES))))
    host_sha256: str = ""
    host_weight: float = HOST_WEIGHT

    @property
    def n_host(self) -> int:
        """Host rows in the fit (0 when the source is off)."""
        return len(self.host) if self.host_weight > 0 else 0

    def design(self, use_blocks: bool = True) -> dict[str, np.ndarray]:
        """All rows stacked: published first, then blocks (`use_blocks`), then the host units
        (when `host_weight` > 0; they carry Pixel 1's scale and their own factor)."""
        r, b = self.rows, self.blocks
        parts = {
            "X": [self.X], "y": [r.latency_ms.to_numpy(float)], "group": [r.group.to_numpy()],
            "device": [r.device.to_numpy()], "w": [np.ones(len(r))],
            "published": [np.ones(len(r), bool)],
        }

        def add(X: np.ndarray, y: np.ndarray, group: str, device: str, weight: float) -> None:
            n = len(y)
            for key, value in (("X", X), ("y", y), ("group", np.full(n, group, dtype=object)),
                               ("device", np.full(n, device, dtype=object)),
                               ("w", np.full(n, weight)), ("published", np.zeros(n, bool))):
                parts[key].append(value)

        if use_blocks:
            add(self.XB, b.pixel3_ms.to_numpy(float), BLOCK_GROUP, "pixel3", self.block_weight)
        if self.n_host and use_blocks:  # the published-only designs (baseline) have neither
            # the reference phone's scale (1): the source factor is the host-vs-phone scale
            add(self.XH, self.host.host_ms.to_numpy(float), HOST_GROUP, "pixel1",
                self.host_weight)
        return {k: np.concatenate(v) for k, v in parts.items()}

    def without_host_family(self, fam2: str) -> Calibration:
        """The same data without the host units of one published family (leave-one-family-out
        holds them out with the family's labels: the held-out networks' units are not timed)."""
        keep = (self.host.family2 != fam2).to_numpy()
        return dataclasses.replace(self, host=self.host[keep].reset_index(drop=True),
                                   XH=self.XH[keep])


def _read(path: Path, what: str) -> tuple[bytes, pd.DataFrame]:
    try:
        return path.read_bytes(), pd.read_csv(path)
    except (OSError, pd.errors.ParserError) as e:
        raise LottoError(f"cannot read {what} {path}: {e}") from None


def load_blocks(path: Path | None = None) -> tuple[pd.DataFrame, np.ndarray, str]:
    path = Path(path) if path is not None else blocks_path()
    raw, frame = _read(path, "FBNet block data")
    if list(frame.columns) != ["key", "pixel3_ms"]:
        raise LottoError(f"FBNet block data {path}: expected columns key, pixel3_ms")
    frame = frame.copy()
    frame["shape"] = [block_shape(k) for k in frame.key]
    XB = np.array([[*ops_features(fbnet_ops(k)), 0.0] for k in frame.key])
    return frame, XB, hashlib.sha256(raw).hexdigest()


HOST_COLUMNS = ("key", "origin", "spec", "host_ms")


def host_family(spec_name: str, origin: str) -> str:
    """A host unit's published family (family2), or `space` / `mnasnet` for the others."""
    if origin != "published":
        return "space"
    if spec_name.startswith(("mobilenet_v2", "mobilenet_v3")):
        return family2(family(spec_name))
    return "mnasnet"


def load_host(path: Path | None = None) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The host XNNPACK units: labels (host_ms) and their features (the CSV's OP_FEATURES
    columns, priced by ops.py when the data was made; fixed = 0: units are timed alone)."""
    from lotto.latency.ops import OP_FEATURES

    path = Path(path) if path is not None else host_path()
    raw, frame = _read(path, "host XNNPACK unit data")
    want = [*HOST_COLUMNS, *OP_FEATURES]
    if list(frame.columns) != want:
        raise LottoError(f"host unit data {path}: expected columns {', '.join(want)}")
    frame = frame.copy()
    frame["family2"] = [host_family(s, o) for s, o in zip(frame.spec, frame.origin)]
    XH = np.hstack([frame[list(OP_FEATURES)].to_numpy(float), np.zeros((len(frame), 1))])
    return frame, XH, hashlib.sha256(raw).hexdigest()


def load_calibration(path: Path | None = None, blocks: Path | None = None,
                     host: Path | None = None, host_weight: float = HOST_WEIGHT) -> Calibration:
    path = Path(path) if path is not None else data_path()
    raw, frame = _read(path, "calibration data")
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise LottoError(f"calibration data {path} lacks column(s) {', '.join(missing)}")
    excluded = {"int8": int((frame.precision != "float32").sum())}
    rows = frame[frame.precision == "float32"].reset_index(drop=True).copy()
    rows["family"] = [family(n) for n in rows.network]
    rows["family2"] = [family2(f) for f in rows.family]
    rows["group"] = [source_group(s) for s in rows.source]
    specs = {}
    X, B, counted = [], [], []
    for r in rows.itertuples():
        key = (r.network, float(r.width_mult), int(r.resolution))
        if key not in specs:
            specs[key] = calibration_spec(*key)
        spec = specs[key]
        X.append(spec_features(spec))
        B.append(baseline_features(spec))
        counted.append(spec.macs() / 1e6)
    rows["counted_mmacs"] = counted
    bl, XB, bsha = load_blocks(blocks)
    hf, XH, hsha = load_host(host)
    return Calibration(rows, np.array(X), np.array(B), hashlib.sha256(raw).hexdigest(), excluded,
                       bl, XB, bsha, host=hf, XH=XH, host_sha256=hsha, host_weight=host_weight)


# ---------------------------------------------------------------------------------------------
# Pieces of the fit


def harmonisation_factors(rows: pd.DataFrame) -> dict[str, float]:
    """Label-only factor per source group = geomean(label / reference label) over shared
    settings (a model-free view of the runtime drift; the fit estimates its own factors)."""
    key = ["network", "width_mult", "resolution", "device"]
    ref = rows[rows.group == REFERENCE_GROUP].groupby(key).latency_ms.mean()
    factors = {REFERENCE_GROUP: 1.0}
    for group in sorted(set(rows.group) - {REFERENCE_GROUP}):
        own = rows[rows.group == group].groupby(key).latency_ms.mean()
        common = own.index.intersection(ref.index)
        if len(common):
            factors[group] = float(np.exp(np.mean(np.log(own[common] / ref[common]))))
    return factors


def harmonised(rows: pd.DataFrame, factors: dict[str, float]) -> np.ndarray:
    """Labels on the reference scale (a group without a factor keeps its own scale)."""
    return rows.latency_ms.to_numpy(float) / np.array([factors.get(g, 1.0) for g in rows.group])


def hswish_prior(features: Sequence[str]) -> dict[str, float] | None:
    """Prior value of the h-swish coefficient (ms per element), or None without that term."""
    if "hswish_elems" not in features:
        return None
    from lotto.arch import preset

    n = spec_features(preset("mobilenet_v3_large"))[FEATURES.index("hswish_elems")]
    return {"hswish_elems": HSWISH_PRIOR_MS / n}


def fit_coefficients(
    X: np.ndarray,
    y: np.ndarray,
    features: Sequence[str],
    prior: dict[str, float] | None = None,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """min sum(w ((X c - y) / y)^2) + prior rows, c >= 0 (NNLS on unit-range columns)."""
    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1.0
    sw = np.sqrt(weights) if weights is not None else np.ones(len(y))
    A = (X / scale) / y[:, None] * sw[:, None]
    b = sw.copy()
    for name, value in (prior or {}).items():
        j = list(features).index(name)
        row = np.zeros(len(features))
        # in unit-range space c_j = c_scaled_j / scale_j: residual = w * (c_j / value - 1)
        row[j] = PRIOR_WEIGHT / (value * scale[j])
        A = np.vstack([A, row])
        b = np.append(b, PRIOR_WEIGHT)
    coef, _ = nnls(A, b, maxiter=50 * A.shape[1])
    return coef / scale


def fit_scale(pred: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The s minimising sum(w ((s * pred - y) / y)^2)."""
    r = pred / y
    w = np.ones(len(y)) if weights is None else weights
    return float(np.sum(w * r) / np.sum(w * r * r))


def metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    rel = (pred - y) / y
    out = {
        "n": int(len(y)),
        "rmspe": float(np.sqrt(np.mean(rel**2))),
        "within10": float(np.mean(np.abs(rel) <= 0.10)),
        "max_abs_error": float(np.max(np.abs(rel))),
        "bias": float(np.mean(rel)),
    }
    if len(y) > 2:
        out["spearman"] = float(spearmanr(pred, y).statistic)
    return out


def scaled_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Raw metrics, plus the relative error after one least-squares scale (`scale`)."""
    s = fit_scale(pred, y)
    after = metrics(s * pred, y)
    return {**metrics(pred, y), "scale": s, "rmspe_after_scale": after["rmspe"],
            "within10_after_scale": after["within10"]}


# ---------------------------------------------------------------------------------------------
# The joint fit


# A variant, not shipped (`Calibration.tied`, `scripts/fit_phone_model.py --shared-traffic`):
# one cost per activation element moved, whatever operator moves it (a roofline's memory term is
# bytes over bandwidth, not a property of the op kind). Whole-network totals cannot tell five
# per-element costs apart (fitted without the FBNet blocks they put depthwise and shuffle
# traffic at zero and an elementwise copy at 30x its block-fitted cost); with one shared cost
# they price the FBNet source they never saw far better, at a cost elsewhere (docs/latency.md).
SHARED_TRAFFIC: tuple[str, ...] = ("gemm_elems", "dw_elems", "group_elems", "elem_elems",
                                   "se_elems")


def tie_matrix(features: Sequence[str], tied: Sequence[str] = ()) -> np.ndarray:
    """M (features x free coefficients): coef = M @ free, the `tied` features sharing one free
    coefficient (identity when `features` lacks them, e.g. the MACs + constant baseline)."""
    names = list(features)
    if not tied or not set(tied) <= set(names):
        return np.eye(len(names))
    free = [f for f in names if f not in tied[1:]]  # the first tied feature carries the group
    M = np.zeros((len(names), len(free)))
    for i, f in enumerate(names):
        M[i, free.index(tied[0] if f in tied else f)] = 1.0
    return M


def fit_joint(X: np.ndarray, y: np.ndarray, group: np.ndarray, device: np.ndarray,
              w: np.ndarray, features: Sequence[str], prior: dict[str, float] | None,
              reference: str | None = None, tied: Sequence[str] = ()) -> dict[str, Any]:
    """Shared coefficients, one scale per phone (pixel1 = 1) and one factor per source group
    (`reference` = 1; default v3_paper, else the first group present with Pixel-1 rows).
    The `tied` features share one coefficient (`tie_matrix`; none in the shipped model)."""
    M = tie_matrix(features, tied)
    free_names = [list(features)[int(np.argmax(M[:, j]))] for j in range(M.shape[1])]
    groups = [g for g in GROUPS if (group == g).any()]
    if reference is None:
        reference = REFERENCE_GROUP if REFERENCE_GROUP in groups else next(
            g for g in groups if ((group == g) & (device == "pixel1")).any())
    factors = {g: 1.0 for g in groups}
    scales = {p: 1.0 for p in PHONES if (device == p).any()}
    if "pixel1" not in scales:
        raise LottoError("the phone fit needs Pixel-1 rows")
    coef = np.zeros(X.shape[1])
    f_row = np.ones(len(y))
    d_row = np.ones(len(y))
    for _ in range(ITERATIONS):
        m = f_row * d_row
        coef = M @ fit_coefficients((X @ M) * m[:, None], y, free_names, prior, w)
        base = X @ coef
        for p in scales:
            if p != "pixel1":
                sel = device == p
                scales[p] = fit_scale(base[sel] * f_row[sel], y[sel], w[sel])
        d_row = np.array([scales[p] for p in device])
        for g in factors:
            if g != reference:
                sel = group == g
                factors[g] = fit_scale(base[sel] * d_row[sel], y[sel], w[sel])
        f_row = np.array([factors[g] for g in group])
    return {"coef": coef, "scales": scales, "factors": factors, "reference": reference,
            "counts": {p: int((device == p).sum()) for p in PHONES}}


def _design(cal: Calibration, baseline: bool, use_blocks: bool) -> dict[str, np.ndarray]:
    d = cal.design(use_blocks=use_blocks and not baseline)
    if baseline:
        d["X"] = cal.B
    return d


def fit_devices(cal: Calibration, train: np.ndarray | None = None, baseline: bool = False,
                use_blocks: bool = True) -> dict[str, Any]:
    """Fit on the published rows where `train` is True (default all), plus the FBNet blocks
    (not for the baseline, which is multiply-adds + constant on the published rows)."""
    d = _design(cal, baseline, use_blocks)
    n_pub = len(cal.rows)
    keep = np.ones(len(d["y"]), bool)
    if train is not None:
        keep[:n_pub] = train
    names = BASELINE_FEATURES if baseline else FEATURES
    prior = None if baseline else hswish_prior(names)
    fit = fit_joint(d["X"][keep], d["y"][keep], d["group"][keep], d["device"][keep],
                    d["w"][keep], names, prior, tied=cal.tied)
    fit["counts"] = {p: int(((cal.rows.device == p).to_numpy() & keep[:n_pub]).sum())
                     for p in PHONES}
    return fit


def cross_validate(
    cal: Calibration, by: str = "family2", baseline: bool = False, strict: bool = True
) -> dict[str, Any]:
    """Leave-one-family-out predictions and metrics on the published rows, per phone and
    held-out family. The FBNet blocks train every fold (they are not a published family).
    strict=False: held-out rows take their source's factor from a fit on all rows (leaky:
    shown only to say how much knowing the runtime scale is worth)."""
    X = cal.B if baseline else cal.X
    rows = cal.rows
    pred = np.full(len(rows), np.nan)
    truth = rows.latency_ms.to_numpy(float).copy()
    seen = np.zeros(len(rows), dtype=bool)
    full = None if strict else fit_devices(cal, None, baseline)
    for fam in sorted(rows[by].unique()):
        test = (rows[by] == fam).to_numpy()
        # the held-out family's host units go out with its labels (stricter than needed for a
        # three-family split: V3-Large out drops V3-Small's units too)
        fold = cal.without_host_family(family2(fam)) if by in ("family", "family2") else cal
        fit = fit_devices(fold, ~test, baseline)
        factors = fit["factors"] if strict else full["factors"]  # type: ignore[index]
        ref = fit["factors"].get(fit["reference"], 1.0)
        scale = rows.device.map(fit["scales"]).fillna(np.nan).to_numpy(float)
        factor = np.array([factors.get(g, ref) for g in rows.group])
        pred[test] = (X[test] @ fit["coef"]) * scale[test] * factor[test]
        seen[test] = rows.group[test].isin(list(fit["factors"])).to_numpy()
    out: dict[str, Any] = {"by": by, "baseline": baseline, "strict": strict, "devices": {}}
    for phone in PHONES:
        dev = (rows.device == phone).to_numpy()
        entry = {"pooled": metrics(pred[dev], truth[dev]), "families": {}}
        if (dev & seen).sum() > 2:
            entry["seen_sources"] = metrics(pred[dev & seen], truth[dev & seen])
        for fam in sorted(rows[by].unique()):
            sel = dev & (rows[by] == fam).to_numpy()
            if sel.any():
                entry["families"][fam] = metrics(pred[sel], truth[sel])
        out["devices"][phone] = entry
    out["predictions"] = pred
    out["truth"] = truth
    out["seen"] = seen
    out["devices_of_rows"] = list(rows.device)
    out["groups_of_rows"] = list(rows.group)
    return out


def fbnet_network_sums(values: dict[str, float], n: int = FBNET_NETWORKS) -> np.ndarray:
    """The `n` FBNet networks' latencies as sums of per-key values (HW-NAS-Bench's rule)."""
    return np.array([sum(values[k] for k in net) for net in fbnet_networks(n)])


def leave_one_source_out(cal: Calibration) -> dict[str, Any]:
    """Every source held out in turn: its rows (and factor) out of the fit, predicted raw on
    the fold's reference scale. Published sources score their rows; the FBNet source scores its
    blocks and the 300 network sums, next to multiply-adds x one scale."""
    d = cal.design()
    n_pub = len(cal.rows)
    out: dict[str, Any] = {}
    names = FEATURES
    prior = hswish_prior(names)
    truth_blocks = dict(zip(cal.blocks.key, cal.blocks.pixel3_ms))
    n_blocks = len(cal.blocks)
    for g in [g for g in GROUPS if (d["group"] == g).any()]:
        test = d["group"] == g
        fit = fit_joint(d["X"][~test], d["y"][~test], d["group"][~test], d["device"][~test],
                        d["w"][~test], names, prior, tied=cal.tied)
        ref = fit["factors"][fit["reference"]]
        scale = np.array([fit["scales"].get(p, np.nan) for p in d["device"]])
        pred = (d["X"] @ fit["coef"]) * scale * ref
        entry: dict[str, Any] = {"reference": fit["reference"], "rows": int(test.sum())}
        if g == BLOCK_GROUP:
            entry["blocks"] = scaled_metrics(pred[test], d["y"][test])
            pb = dict(zip(cal.blocks.key, pred[n_pub:n_pub + n_blocks]))
            pn, yn = fbnet_network_sums(pb), fbnet_network_sums(truth_blocks)
            entry["networks"] = scaled_metrics(pn, yn)
            entry["network_predictions"] = pn
            entry["network_truth"] = yn
        elif g == HOST_GROUP:  # a shape prior, not a phone: scored on its own units only
            entry["host"] = scaled_metrics(pred[test], d["y"][test])
            entry["host_predictions"] = pred[test]
        else:
            # a phone no training row has (possible only in the nested folds of
            # `strict_coverage`) cannot be predicted: its rows are left out, not guessed
            test &= np.isfinite(pred)
            entry["published"] = scaled_metrics(pred[test], d["y"][test])
            entry["devices"] = {p: scaled_metrics(pred[test & (d["device"] == p)],
                                                  d["y"][test & (d["device"] == p)])
                                for p in PHONES if (test & (d["device"] == p)).sum() > 1}
            entry["predictions"] = pred[test]
            entry["truth"] = d["y"][test]
            entry["devices_of_rows"] = list(d["device"][test])
        out[g] = entry
    return out


def leave_one_shape_out(cal: Calibration) -> dict[str, Any]:
    """FBNet blocks: every candidate at one table position out at a time (the published rows
    and all other blocks train); the 300 networks summed from out-of-fold predictions only.
    Reported on the HW-NAS-Bench scale (factor x Pixel-3 scale from the fold's fit)."""
    d = cal.design()
    n_pub = len(cal.rows)
    prior = hswish_prior(FEATURES)
    n_blocks = len(cal.blocks)
    pred = np.full(n_blocks, np.nan)
    for shape in sorted(cal.blocks["shape"].unique()):
        test = np.zeros(len(d["y"]), bool)
        test[n_pub:n_pub + n_blocks] = (cal.blocks["shape"] == shape).to_numpy()
        fit = fit_joint(d["X"][~test], d["y"][~test], d["group"][~test], d["device"][~test],
                        d["w"][~test], FEATURES, prior, tied=cal.tied)
        m = fit["factors"][BLOCK_GROUP] * fit["scales"]["pixel3"]
        pred[test[n_pub:n_pub + n_blocks]] = (d["X"][test] @ fit["coef"]) * m
    y = cal.blocks.pixel3_ms.to_numpy(float)
    pn = fbnet_network_sums(dict(zip(cal.blocks.key, pred)))
    yn = fbnet_network_sums(dict(zip(cal.blocks.key, y)))
    return {"blocks": scaled_metrics(pred, y), "networks": scaled_metrics(pn, yn),
            "folds": int(cal.blocks["shape"].nunique()), "block_predictions": pred,
            "network_predictions": pn}


def fbnet_macs_baseline(cal: Calibration) -> dict[str, Any]:
    """Multiply-adds x one scale on the 300 FBNet network sums (the baseline to beat)."""
    from lotto.latency.ops import fbnet_ops as ops_of

    macs = {k: float(sum(o.macs for o in ops_of(k))) for k in cal.blocks.key}
    truth = dict(zip(cal.blocks.key, cal.blocks.pixel3_ms))
    return scaled_metrics(fbnet_network_sums(macs), fbnet_network_sums(truth))


COVER = 2 / 3  # the share of held-out raw errors the quoted expected_error should cover


# A phone's relative (rank) error is its own strict leave-one-family-out RMSPE only when at
# least this many of its rows were held out with their source calibrated; otherwise the pooled
# value (or its own, if larger) widened by one standard error of an RMS from its few rows.
MIN_OWN_ROWS = 10


def drop_source(cal: Calibration, group: str) -> Calibration:
    """The calibration data without one source (its published rows, or the FBNet blocks)."""
    if group == BLOCK_GROUP:
        return dataclasses.replace(cal, blocks=cal.blocks.iloc[:0].copy(), XB=cal.XB[:0])
    if group == HOST_GROUP:
        return dataclasses.replace(cal, host=cal.host.iloc[:0].copy(), XH=cal.XH[:0])
    keep = (cal.rows.group != group).to_numpy()
    return dataclasses.replace(cal, rows=cal.rows[keep].reset_index(drop=True), X=cal.X[keep],
                               B=cal.B[keep])


def loso_errors(loso: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(phone, source, |raw error|) of every leave-one-source-out prediction: published rows,
    and for the FBNet source its 300 network sums (Pixel 3)."""
    phone: list[str] = []
    source: list[str] = []
    err: list[float] = []
    for g, e in loso.items():
        if "host" in e:  # host milliseconds are no phone's errors
            continue
        if "published" in e:
            raw = np.abs(e["predictions"] / e["truth"] - 1)
            phone += list(e["devices_of_rows"])
        else:
            raw = np.abs(e["network_predictions"] / e["network_truth"] - 1)
            phone += ["pixel3"] * len(raw)
        source += [g] * len(raw)
        err += [float(x) for x in raw]
    return np.array(phone), np.array(source), np.array(err)


def error_pool(cal: Calibration, cv: dict[str, Any] | None = None,
               loso: dict[str, Any] | None = None) -> dict[str, Any]:
    """The held-out errors error bars are calibrated on, all from strict fits of `cal`:
    `phone`, `source`, `err`: |raw error| of every leave-one-source-out prediction (published
    rows; for the FBNet source its 300 network sums, on Pixel 3), what expected_error must
    cover; `rel`, `rel_n`: per phone, the strict leave-one-family-out RMSPE (and row count) on
    rows of calibrated sources, the relative / rank error; `rel_pooled` over all phones."""
    cv = cv if cv is not None else cross_validate(cal, "family2")
    loso = loso if loso is not None else leave_one_source_out(cal)
    phone, source, err = loso_errors(loso)
    rel_err = cv["predictions"] / cv["truth"] - 1
    finite = np.isfinite(rel_err)
    seen = np.asarray(cv["seen"], bool) & finite
    devices = np.array(cv["devices_of_rows"])
    rel, rel_n = {}, {}
    for p in PHONES:
        # rows of calibrated sources where there are any (> 2), else all: drift included
        sel = seen & (devices == p)
        sel = sel if sel.sum() > 2 else finite & (devices == p)
        if sel.any():
            rel[p] = float(np.sqrt(np.mean(rel_err[sel] ** 2)))
            rel_n[p] = int(sel.sum())
    ok = seen if seen.sum() > 2 else finite
    return {"phone": phone, "source": source, "err": err, "rel": rel, "rel_n": rel_n,
            "rel_pooled": float(np.sqrt(np.mean(rel_err[ok] ** 2)))}


def error_bars(pool: dict[str, Any], level: float = COVER) -> dict[str, Any]:
    """Per phone: rel_error, scale_error and expected_error = sqrt(rel^2 + scale^2), the raw
    error against that phone on an unknown runtime.

    rel_error (what ranks and ratios carry) is per phone: its own strict leave-one-family-out
    RMSPE with at least MIN_OWN_ROWS rows; with fewer, the pooled value or its own, whichever
    is larger, widened by one standard error of an RMS from n rows (x (1 + 1/sqrt(2n))), and
    `note` says so. scale_error (the runtime version: a property of runtimes, not of phones, so
    shared) is the smallest value for which expected_error covers `level` (2/3) of the
    held-out raw errors of the n sources, each source weighing the same.

    Why the plain share and not the split-conformal one, `level` x (n + 1) / n (shipped in
    pixel-operator-v3 and v4): that correction is exact when each source's errors sit at one
    value (its runtime scale), but ours spread 10-15 points around it; on simulated sources
    with such spread the conformal bars covered an unseen source 77-87% of the time, the plain
    ones 59-66% (docs/latency.md, *Which share*; scripts/error_bar_simulation.py)."""
    phone, source, err = pool["phone"], pool["source"], pool["err"]
    pooled_rel = pool["rel_pooled"]
    rel: dict[str, float] = {}
    out: dict[str, Any] = {"devices": {}}
    for p in PHONES:
        n = int(pool["rel_n"].get(p, 0))
        entry: dict[str, Any] = {"n_rel_rows": n}
        if n >= MIN_OWN_ROWS:
            entry.update(basis="own", rel_error=pool["rel"][p])
        else:
            widen = 1 + 1 / np.sqrt(2 * n) if n else 2.0
            base = max(pool["rel"].get(p, pooled_rel), pooled_rel)
            entry.update(basis="pooled", rel_error=float(base * widen),
                         note=(f"{p}: {n} held-out rows of its own, too few for its own relative "
                               f"error (needs {MIN_OWN_ROWS}): max(pooled {pooled_rel * 100:.1f}%, "
                               f"own {pool['rel'].get(p, float('nan')) * 100:.1f}%) widened "
                               f"x{widen:.2f} = {base * widen * 100:.1f}%"))
        rel[p] = entry["rel_error"]
        out["devices"][p] = entry
    names, inverse, counts = np.unique(source, return_inverse=True, return_counts=True)
    weight = 1.0 / counts[inverse]  # each source weighs the same in total
    rel_of_row = np.array([rel[p] for p in phone])

    def share(scale: float) -> float:
        return float(np.sum(weight * (err <= np.hypot(rel_of_row, scale))) / np.sum(weight))

    lo, hi = 0.0, 2.0
    for _ in range(60):  # coverage grows with scale: bisection
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if share(mid) >= level - 1e-12 else (mid, hi)  # float sums of weights
    out["scale_error"] = hi
    out["sources"] = [str(g) for g in names]  # the sources these bars were calibrated on
    out["level"] = level
    out["pooled"] = {"rel_error": pooled_rel, "scale_error": hi,
                     "expected_error": float(np.hypot(pooled_rel, hi))}
    for entry in out["devices"].values():
        entry["scale_error"] = hi
        entry["expected_error"] = float(np.hypot(entry["rel_error"], hi))
    return out


def strict_coverage(cal: Calibration, loso: dict[str, Any]) -> dict[str, Any]:
    """Nested leave-one-source-out check of `error_bars`: for each source, error bars
    calibrated on the data without it (every fit, rel_error and scale_error from the other
    sources only) score the raw errors of its own held-out predictions (`loso`, fits without
    it). Per phone, each of its sources weighs the same; pooled, each source weighs the same."""
    phone, source, err = loso_errors(loso)
    folds: dict[str, Any] = {}
    cells: dict[str, list[float]] = {p: [] for p in PHONES}
    by_source = []
    for g in [g for g in loso if g in PHONE_GROUPS]:  # the host source trains every fold
        bars = error_bars(error_pool(drop_source(cal, g)))
        sel = source == g
        q = np.array([bars["devices"][p]["expected_error"] for p in phone[sel]])
        inside = err[sel] <= q
        fold: dict[str, Any] = {"expected_error": {}, "basis": {}, "coverage": {}, "n": {},
                                "coverage_all": float(np.mean(inside)),
                                "scale_error": bars["scale_error"],
                                "calibrated_on": bars["sources"], "level": bars["level"]}
        for p in PHONES:
            mine = phone[sel] == p
            if mine.any():
                fold["expected_error"][p] = bars["devices"][p]["expected_error"]
                fold["basis"][p] = bars["devices"][p]["basis"]
                fold["coverage"][p] = float(np.mean(inside[mine]))
                fold["n"][p] = int(mine.sum())
                cells[p].append(fold["coverage"][p])
        by_source.append(fold["coverage_all"])
        folds[g] = fold
    return {"folds": folds, "coverage": float(np.mean(by_source)),
            "devices": {p: float(np.mean(c)) for p, c in cells.items() if c}}


def quoted_errors(cal: Calibration, cv: dict[str, Any], loso: dict[str, Any]) -> dict[str, Any]:
    """The shipped error bars (`error_bars` on every source's held-out errors) and their
    strict coverage (`strict_coverage`: each source scored by bars calibrated without it);
    `source_log_scales`: the |log| scale each held-out source needed."""
    logs = {g: abs(float(np.log(e[k]["scale"]))) for g, e in loso.items()
            for k in ("published", "networks") if k in e}
    pool = error_pool(cal, cv, loso)
    bars = error_bars(pool)
    strict = strict_coverage(cal, loso)
    # not strict (the bars scored on the errors they were calibrated on): for comparison only
    inside = pool["err"] <= np.array([bars["devices"][p]["expected_error"] for p in pool["phone"]])
    _, inverse, counts = np.unique(pool["source"], return_inverse=True, return_counts=True)
    weight = 1.0 / counts[inverse]
    out: dict[str, Any] = {"scale_error": bars["pooled"]["scale_error"], "pooled": bars["pooled"],
                           "level": bars["level"], "calibrated_on": bars["sources"],
                           "source_log_scales": logs, "coverage": strict["coverage"],
                           "coverage_in_sample": float(np.sum(weight * inside) / np.sum(weight)),
                           "folds": strict["folds"], "devices": {}, "notes": []}
    for p in PHONES:
        entry = dict(bars["devices"][p])
        entry["coverage"] = strict["devices"][p]
        mine = pool["phone"] == p
        entry["coverage_in_sample"] = float(np.sum(weight[mine] * inside[mine])
                                            / np.sum(weight[mine]))
        out["devices"][p] = entry
        if "note" in entry:
            out["notes"].append(entry["note"])
    return out


_ARRAYS = ("predictions", "truth", "seen", "devices_of_rows", "groups_of_rows",
           "network_predictions",
           "network_truth", "block_predictions", "host_predictions")


def _plain(cv: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in cv.items():
        if k in _ARRAYS:
            continue
        out[k] = _plain(v) if isinstance(v, dict) else v
    return out


def validation(cal: Calibration) -> dict[str, Any]:
    """Every strict check of the model (what `bench --validate` and the model file show)."""
    cv = cross_validate(cal, "family2")
    loso = leave_one_source_out(cal)
    return {
        "cv": cv,
        "cv3": cross_validate(cal, "family"),
        "cv_base": cross_validate(cal, "family2", baseline=True),
        "cv_leaky": cross_validate(cal, "family2", strict=False),
        "loso": loso,
        "shape": leave_one_shape_out(cal),
        "fbnet_macs": fbnet_macs_baseline(cal),
        "quoted": quoted_errors(cal, cv, loso),
    }


def pixel4_check(coef: np.ndarray) -> dict[str, Any]:
    """Pixel 4 (EfficientNet-Lite0..4, 4 threads, checks.py): one scale on the shared operator
    costs, validated leave-one-network-out (each network's scale from the other four); the
    multiply-adds x one scale baseline the same way."""
    from lotto.latency.checks import EFFICIENTNET_LITE_PIXEL4_MS, efficientnet_lite

    specs = [efficientnet_lite(i) for i in sorted(EFFICIENTNET_LITE_PIXEL4_MS)]
    y = np.array([EFFICIENTNET_LITE_PIXEL4_MS[i] for i in sorted(EFFICIENTNET_LITE_PIXEL4_MS)])
    model = np.array([spec_features(s) @ coef for s in specs])
    macs = np.array([float(s.macs()) for s in specs])
    out: dict[str, Any] = {"networks": [s.name for s in specs], "measured_ms": y.tolist(),
                           "scale": fit_scale(model, y)}
    for name, x in (("model", model), ("macs", macs)):
        pred = np.empty(len(y))
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            pred[i] = x[i] * fit_scale(x[keep], y[keep])
        out[name] = {**metrics(pred, y), "predictions": pred.tolist()}
    return out


def proxyless_check(fit: dict[str, Any], expected_error: float) -> dict[str, Any]:
    """ProxylessNAS-Mobile on a Pixel 1 (78 ms; its paper's source is in no fit): predicted on
    the reference scale, against the quoted expected error; and the ratio to MobileNetV2 1.0,
    which the same paper times at 75 ms under the same protocol (relative check)."""
    from lotto.arch import preset
    from lotto.latency.checks import (
        PROXYLESS_MOBILE_PIXEL1_MS,
        PROXYLESS_SAME_PROTOCOL_V2_MS,
        PROXYLESS_SOURCE,
        proxylessnas_mobile,
    )

    ms = float(spec_features(proxylessnas_mobile()) @ fit["coef"])
    v2 = float(spec_features(preset("mobilenet_v2")) @ fit["coef"])
    error = ms / PROXYLESS_MOBILE_PIXEL1_MS - 1
    return {"predicted_ms": ms, "published_ms": PROXYLESS_MOBILE_PIXEL1_MS, "error": error,
            "expected_error": expected_error, "within": bool(abs(error) <= expected_error),
            "ratio_to_v2": ms / v2,
            "published_ratio_to_v2": PROXYLESS_MOBILE_PIXEL1_MS / PROXYLESS_SAME_PROTOCOL_V2_MS,
            "source": PROXYLESS_SOURCE}


def mnasnet_check(coef: np.ndarray, expected_error: float) -> dict[str, Any]:
    """MnasNet-A1 on a Pixel 1 at 25 input size x multiplier settings (checks.py; in no fit):
    raw errors on the reference scale and the share within the quoted expected error; after
    one scale (each row's scale from the other 24), against multiply-adds x one scale and
    multiply-adds + constant fitted the same way; and the scaled prediction / published ratio
    by input size and by multiplier (a trend there is what per-layer costs get wrong)."""
    from lotto.arch import preset
    from lotto.latency.checks import MNASNET_A1_PIXEL1, MNASNET_A1_SOURCE

    keys = list(MNASNET_A1_PIXEL1)
    y = np.array([MNASNET_A1_PIXEL1[k][1] for k in keys])
    specs = [preset("mnasnet_a1", m, r).validate() for r, m in keys]
    model = np.array([spec_features(s) @ coef for s in specs])
    macs = np.array([float(s.macs()) for s in specs])
    raw = model / y - 1
    out: dict[str, Any] = {"settings": [list(k) for k in keys], "published_ms": y.tolist(),
                           "predicted_ms": model.tolist(), "raw": metrics(model, y),
                           "expected_error": expected_error,
                           "within_expected": float(np.mean(np.abs(raw) <= expected_error)),
                           "scale": fit_scale(model, y), "source": MNASNET_A1_SOURCE}
    n = len(y)
    for name, x in (("model", model), ("macs", macs), ("macs_constant", macs)):
        pred = np.empty(n)
        for i in range(n):
            keep = np.arange(n) != i
            if name == "macs_constant":
                a, b = np.linalg.lstsq(np.c_[x[keep], np.ones(n - 1)] / y[keep, None],
                                       np.ones(n - 1), rcond=None)[0]
                pred[i] = a * x[i] + b
            else:
                pred[i] = x[i] * fit_scale(x[keep], y[keep])
        out[name] = {**metrics(pred, y), "predictions": pred.tolist()}
    ratio = out["scale"] * model / y
    for axis, pos in (("by_resolution", 0), ("by_multiplier", 1)):
        values = sorted({k[pos] for k in keys})
        out[axis] = {str(v): float(np.mean(ratio[[k[pos] == v for k in keys]])) for v in values}
    return out


# Pixel 2 and 3 share Pixel 1's relative operator costs: the data has 8 float rows per phone
# (MobileNetV3 paper Table 3, README minimalistic rows), too few to fit their own; the FBNet
# Pixel-3 blocks come from another runtime (HW-NAS-Bench) and inform the shared shape.
SHARED_SHAPE_NOTE = ("pixel2 and pixel3 share pixel1's relative operator costs (one scale "
                     "each): 8 published float rows per phone are too few for their own; the "
                     "Pixel-3 FBNet blocks (another runtime) inform the shared costs")


def fit_all(cal: Calibration | None = None) -> dict[str, Any]:
    """Everything `data/phone_model.json` holds (deterministic: same data, same numbers)."""
    cal = cal or load_calibration()
    final = fit_devices(cal)
    base = fit_devices(cal, baseline=True)
    v = validation(cal)
    quoted = v["quoted"]
    p4 = pixel4_check(final["coef"])
    devices = {}
    for phone in PHONES:
        q = quoted["devices"][phone]
        devices[phone] = {
            "coef": {f: float(c) for f, c in zip(FEATURES, final["coef"])},
            "scale": final["scales"][phone],
            "expected_error": q["expected_error"],
            "rel_error": q["rel_error"],
            "scale_error": q["scale_error"],
            "coverage": q["coverage"],  # strict: bars calibrated without the scored source
            "error_basis": q["basis"],  # "own" held-out errors, or "pooled" (too few: note)
            **({"error_note": q["note"]} if "note" in q else {}),
            "n_rows": int(len(cal.rows) + len(cal.blocks) + cal.n_host),
            "n_scale_rows": final["counts"][phone] if phone != "pixel1" else 0,
            "relative_costs": "own" if phone == "pixel1" else "shared with pixel1",
            "baseline": {
                "coef": {f: float(c) for f, c in zip(BASELINE_FEATURES, base["coef"])},
                "scale": base["scales"][phone],
                "expected_error": v["cv_base"]["devices"][phone]["pooled"]["rmspe"],
            },
        }
    rel4 = p4["model"]["rmspe"]
    devices["pixel4"] = {
        "coef": devices["pixel1"]["coef"],
        "scale": p4["scale"],
        "expected_error": float(np.hypot(rel4, quoted["scale_error"])),
        "rel_error": rel4,
        "scale_error": quoted["scale_error"],
        "n_rows": devices["pixel1"]["n_rows"],
        "n_scale_rows": len(p4["measured_ms"]),
        "relative_costs": "shared with pixel1; 4-thread figures: one scale only",
        "threads": 4,
    }
    host = ({"host_file": HOST_FILE, "host_sha256": cal.host_sha256, "host_rows": cal.n_host,
             "host_weight": cal.host_weight} if cal.n_host else {})
    return {
        "schema": 2,
        "version": VERSION,
        "features": list(FEATURES),
        "units": "ms per MAC / element / weight byte / kernel; fixed in ms (Pixel 1, v3_paper "
                 "runtime scale)",
        "sources": {**SOURCES, **({HOST_GROUP: HOST_SOURCE} if cal.n_host else {})},
        "data": {
            "file": DATA_FILE,
            "sha256": cal.sha256,
            "float_rows": int(len(cal.rows)),
            "excluded": cal.excluded,
            "blocks_file": BLOCKS_FILE,
            "blocks_sha256": cal.blocks_sha256,
            "block_rows": int(len(cal.blocks)),
            "block_weight": cal.block_weight,
            "tied": list(cal.tied),  # features sharing one coefficient (none shipped)
            **host,
        },
        "factors": final["factors"],
        "pixel2_pixel3": SHARED_SHAPE_NOTE,
        # what the rows span: predictions outside it are warned about and widened
        "calibration_range": {
            "resolution": [int(cal.rows.resolution.min()), int(cal.rows.resolution.max())],
            "width_mult": [float(cal.rows.width_mult.min()), float(cal.rows.width_mult.max())],
            "macs": [float(cal.rows.counted_mmacs.min() * 1e6),
                     float(cal.rows.counted_mmacs.max() * 1e6)],
        },
        "priors": {"hswish_elems": hswish_prior(FEATURES)["hswish_elems"],  # type: ignore[index]
                   "hswish_prior_ms_on_v3_large": HSWISH_PRIOR_MS, "weight": PRIOR_WEIGHT},
        "devices": devices,
        "errors": _plain(quoted),
        "cv": {
            "lofo_v2_v3": _plain(v["cv"]),  # strict: rel_error comes from it
            "lofo_v2_v3large_v3small": _plain(v["cv3"]),
            "baseline_lofo_v2_v3": _plain(v["cv_base"]),
            # not strict: held-out rows take their source factor from a fit on all rows
            "lofo_v2_v3_shared_factors": _plain(v["cv_leaky"]),
            "leave_one_source_out": _plain(v["loso"]),
            "fbnet_leave_one_shape_out": _plain(v["shape"]),
            "fbnet_macs_one_scale": v["fbnet_macs"],
            "pixel4_leave_one_network_out": p4,
            "proxylessnas_mobile_pixel1": proxyless_check(
                final, quoted["devices"]["pixel1"]["expected_error"]),
            "mnasnet_a1_pixel1": mnasnet_check(
                final["coef"], quoted["devices"]["pixel1"]["expected_error"]),
        },
    }


def block_weight_sweep(cal: Calibration, weights: Sequence[float],
                       field: str = "block_weight") -> list[dict[str, Any]]:
    """The strict validation figures at each candidate block weight (BLOCK_WEIGHT was chosen
    by looking at them: this says how much that choice moves them); `field="host_weight"`:
    the same for the host XNNPACK source's row weight (0 = not in the fit)."""
    out = []
    for w in weights:
        c = dataclasses.replace(cal, **{field: float(w)})
        cv = cross_validate(c, "family2")
        loso = leave_one_source_out(c)
        shape = leave_one_shape_out(c)
        q = quoted_errors(c, cv, loso)
        nets = loso[BLOCK_GROUP]["networks"]
        out.append({
            field: float(w),
            "fbnet_source_out": nets["rmspe_after_scale"],
            "fbnet_source_out_raw": nets["rmspe"],
            "fbnet_source_out_spearman": nets["spearman"],
            "lofo": {p: cv["devices"][p]["pooled"]["rmspe"] for p in PHONES},
            "loso_after_scale": {g: e["published" if "published" in e else "networks"]
                                 ["rmspe_after_scale"] for g, e in loso.items()
                                 if g in PHONE_GROUPS},
            "fbnet_shape_out": shape["networks"]["rmspe_after_scale"],
            "fbnet_shape_out_spearman": shape["networks"]["spearman"],
            "expected_error": {p: q["devices"][p]["expected_error"] for p in PHONES},
            "strict_coverage": q["coverage"],
        })
    return out


def nested_block_weight(cal: Calibration, weights: Sequence[float],
                        by: str = "family2") -> dict[str, Any]:
    """Leave-one-family-out with the block weight chosen strictly, inside each outer fold: on
    the training rows only, by the pooled RMSPE of an inner leave-one-network-out CV (a
    network = one architecture at one width, all its resolutions and activation variants;
    the FBNet blocks train every fit). Returns the outer held-out predictions and metrics per
    phone, and the weight each fold chose with its inner scores."""
    rows = cal.rows
    pred = np.full(len(rows), np.nan)
    truth = rows.latency_ms.to_numpy(float)
    net = (rows.network.str.replace(r"\s*\[.*\]\s*$", "", regex=True) + "@"
           + rows.width_mult.astype(str)).to_numpy()
    chosen: dict[str, Any] = {}
    for fam in sorted(rows[by].unique()):
        test = (rows[by] == fam).to_numpy()
        inner_rows = rows[~test].reset_index(drop=True).copy()
        inner_rows["network_width"] = net[~test]
        inner = dataclasses.replace(cal, rows=inner_rows, X=cal.X[~test], B=cal.B[~test])
        scores = {}
        for w in weights:
            cv = cross_validate(dataclasses.replace(inner, block_weight=float(w)),
                                "network_width")
            err = cv["predictions"] / cv["truth"] - 1
            scores[float(w)] = float(np.sqrt(np.nanmean(err**2)))
        best = min(scores, key=lambda w: (scores[w], w))
        outer = cross_validate(dataclasses.replace(cal, block_weight=best), by)
        pred[test] = outer["predictions"][test]
        chosen[fam] = {"block_weight": best, "inner_rmspe": scores}
    devices = rows.device.to_numpy()
    return {"by": by, "chosen": chosen, "predictions": pred,
            "devices": {p: metrics(pred[devices == p], truth[devices == p]) for p in PHONES}}


# ---------------------------------------------------------------------------------------------
# Calibrating a user's device from its own measurements (`lotto bench --calibrate RUN --as NAME`)

USER_VERSION = "user-additive-v1"
MIN_USER_ROWS = 5


def cv_folds(n: int, max_folds: int = 10, seed: int = 0) -> list[np.ndarray]:
    """Leave-one-out up to `max_folds` rows, else `max_folds` shuffled folds (test indices)."""
    if n <= max_folds:
        return [np.array([i]) for i in range(n)]
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(f) for f in np.array_split(order, max_folds)]


def fit_user_device(X: np.ndarray, y: np.ndarray, B: np.ndarray | None = None,
                    max_folds: int = 10) -> dict[str, Any]:
    """The phone model's features and NNLS fit on one device's measured totals.

    Same features (FEATURES) and the same relative-error NNLS as the published phones, without
    the h-swish prior (it describes a Pixel 1) and without source factors (one device, one
    runtime). Expected error = strict cross-validated RMSPE: each fold's rows are predicted by
    a fit (feature scaling included) on the other rows only; nothing held out enters the fit
    that scores it. B: the MACs + constant baseline's features, cross-validated the same way.
    """
    n = len(y)
    if n < MIN_USER_ROWS:
        raise LottoError(f"calibration needs at least {MIN_USER_ROWS} measured networks, got {n}")
    folds = cv_folds(n, max_folds)
    out: dict[str, Any] = {"coef": fit_coefficients(X, y, FEATURES), "n": n,
                           "cv_rule": ("leave-one-network-out CV" if len(folds) == n else
                                       f"{len(folds)}-fold CV over networks")}
    for name, design, features in (("cv", X, FEATURES), ("baseline_cv", B, BASELINE_FEATURES)):
        if design is None:
            continue
        pred = np.full(n, np.nan)
        for test in folds:
            train = np.ones(n, dtype=bool)
            train[test] = False
            pred[test] = design[test] @ fit_coefficients(design[train], y[train], features)
        out[name] = metrics(pred, y)
        out[f"{name}_predictions"] = pred
    out["expected_error"] = out["cv"]["rmspe"]
    return out
