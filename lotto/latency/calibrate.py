"""Fitting the phone models to published latencies, and cross-validating them.

Data: `data/pixel_published_latency.csv` (a copy of shared/data, with its sources), the only
calibration input. Float rows only: the 12 int8 rows (paper Table 4) are excluded, not modelled.

Steps (docs/latency.md, phone model: fitting and validation):

1. Source harmonisation. Labels move with the TFLite version: the MobileNetV2 README table is
   older than the MobileNetV3 paper (V2 1.0 @ 224 on Pixel 1: 73.8 ms vs 64 ms). Rows are put
   on the paper's scale (the reference: it is the only source with all three phones and both
   families) by one factor per source group: the geometric mean ratio over the networks both
   groups report. The factor uses labels only, no model; it is applied before any fit.
2. Pixel-1 coefficients: non-negative least squares on relative error (rows weighted by 1/y),
   features scaled to unit range, plus a prior pseudo-row for the h-swish term (the paper: the
   optimised h-swish costs about 1 ms over ReLU on V3-Large 1.0), so that a fit without any
   MobileNetV3 row still prices h-swish.
3. Pixel 2 / 3: the Pixel-1 model times one scale per phone (relative least squares).
4. Cross-validation: leave one family out (MobileNetV2 vs MobileNetV3, and V2 / V3-Large /
   V3-Small), strictly: everything estimated from data (harmonisation factors, coefficients,
   feature scaling, Pixel-2/3 scales) comes from the training rows only, so a held-out row's
   label never enters the fit that predicts it. A held-out row whose source group has no
   training row (the V2 README rows when V2 is held out) keeps its own scale: the runtime drift
   of an unseen source is part of the error, as it is for a user comparing with their own phone.
   RMSPE, share within +-10% and Spearman per held-out family; `seen_sources` repeats the
   pooled metrics over the rows whose source the fit had calibrated. The pooled strict RMSPE is
   the shipped expected error. `strict=False` (factors from all label pairs, held-out ones
   included) is kept only to show how much that leak flattered the figure.
"""

from __future__ import annotations

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
from lotto.latency.phone import (
    BASELINE_FEATURES,
    FEATURES,
    PHONES,
    baseline_features,
    spec_features,
)
from lotto.latency.variants import calibration_spec

DATA_FILE = "pixel_published_latency.csv"
COLUMNS = (
    "network", "width_mult", "resolution", "published_mmacs", "device", "precision",
    "latency_ms", "source",
)
REFERENCE_GROUP = "v3_paper"
VERSION = "pixel-additive-v2"  # v2: per-kernel op counts, strict CV
# Paper text (MobileNetV3 5.2): optimised h-swish costs ~1 ms more than ReLU on V3-Large 1.0.
HSWISH_PRIOR_MS = 1.0
PRIOR_WEIGHT = 1.0  # the prior pseudo-row weighs as much as one data row's relative error


def data_path() -> Path:
    return Path(str(resources.files("lotto.latency") / "data" / DATA_FILE))


def source_group(source: str) -> str:
    """Rows that share a runtime version share a group (and a harmonisation factor)."""
    if "MobileNetV2 checkpoint table" in source:
        return "v2_readme"  # 2018 TFLite, tensorflow/models README
    # MobileNetV3 paper Tables 3, 5, 9 and the README's V3 rows (which repeat the paper's values)
    return REFERENCE_GROUP


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


@dataclass
class Calibration:
    """Float rows of the calibration CSV with their features (X) and baseline features (B)."""

    rows: pd.DataFrame
    X: np.ndarray
    B: np.ndarray
    sha256: str
    excluded: dict[str, int]


def load_calibration(path: Path | None = None) -> Calibration:
    path = Path(path) if path is not None else data_path()
    try:
        raw = path.read_bytes()
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError) as e:
        raise LottoError(f"cannot read calibration data {path}: {e}") from None
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
    return Calibration(rows, np.array(X), np.array(B), hashlib.sha256(raw).hexdigest(), excluded)


# ---------------------------------------------------------------------------------------------
# Pieces of the fit


def harmonisation_factors(rows: pd.DataFrame) -> dict[str, float]:
    """Factor per source group = geomean(label / reference label) over shared settings."""
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
    from lotto.latency.phone import spec_features as sf

    n = sf(preset("mobilenet_v3_large"))[FEATURES.index("hswish_elems")]
    return {"hswish_elems": HSWISH_PRIOR_MS / n}


def fit_coefficients(
    X: np.ndarray,
    y: np.ndarray,
    features: Sequence[str],
    prior: dict[str, float] | None = None,
) -> np.ndarray:
    """min sum(((X c - y) / y)^2) + prior rows, c >= 0 (NNLS on unit-range columns)."""
    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1.0
    A = (X / scale) / y[:, None]
    b = np.ones(len(y))
    for name, value in (prior or {}).items():
        j = list(features).index(name)
        row = np.zeros(len(features))
        # in unit-range space c_j = c_scaled_j / scale_j: residual = w * (c_j / value - 1)
        row[j] = PRIOR_WEIGHT / (value * scale[j])
        A = np.vstack([A, row])
        b = np.append(b, PRIOR_WEIGHT)
    coef, _ = nnls(A, b, maxiter=50 * A.shape[1])
    return coef / scale


def fit_scale(pred: np.ndarray, y: np.ndarray) -> float:
    """The s minimising sum(((s * pred - y) / y)^2)."""
    r = pred / y
    return float(np.sum(r) / np.sum(r * r))


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


# ---------------------------------------------------------------------------------------------
# Fitting and cross-validation


def _design(cal: Calibration, baseline: bool) -> tuple[np.ndarray, tuple[str, ...]]:
    return (cal.B, BASELINE_FEATURES) if baseline else (cal.X, FEATURES)


def fit_devices(
    cal: Calibration, train: np.ndarray, baseline: bool = False, strict: bool = False
) -> dict[str, Any]:
    """Pixel-1 coefficients and Pixel-2/3 scales from the rows where `train` is True."""
    X, names = _design(cal, baseline)
    rows = cal.rows
    factors = harmonisation_factors(rows[train] if strict else rows)
    y = harmonised(rows, factors)
    p1 = train & (rows.device == "pixel1").to_numpy()
    prior = None if baseline else hswish_prior(names)
    coef = fit_coefficients(X[p1], y[p1], names, prior)
    scales = {"pixel1": 1.0}
    counts = {"pixel1": int(p1.sum())}
    for phone in PHONES[1:]:
        sel = train & (rows.device == phone).to_numpy()
        counts[phone] = int(sel.sum())
        scales[phone] = fit_scale(X[sel] @ coef, y[sel]) if sel.any() else float("nan")
    return {"coef": coef, "scales": scales, "factors": factors, "counts": counts}


def cross_validate(
    cal: Calibration, by: str = "family2", baseline: bool = False, strict: bool = True
) -> dict[str, Any]:
    """Leave-one-family-out predictions and metrics, per phone and held-out family."""
    X, _ = _design(cal, baseline)
    rows = cal.rows
    pred = np.full(len(rows), np.nan)
    truth = np.full(len(rows), np.nan)
    seen = np.zeros(len(rows), dtype=bool)
    for fam in sorted(rows[by].unique()):
        test = (rows[by] == fam).to_numpy()
        fit = fit_devices(cal, ~test, baseline, strict)
        scale = rows.device.map(fit["scales"]).to_numpy(float)
        # predictions on each row's own label scale (reference-scale model x its source's
        # factor from this fold's fit, 1 for an unseen source), scored against the raw label
        factor = np.array([fit["factors"].get(g, 1.0) for g in rows.group])
        pred[test] = (X[test] @ fit["coef"]) * scale[test] * factor[test]
        truth[test] = rows.latency_ms.to_numpy(float)[test]
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
    return out


def _plain(cv: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cv.items() if k not in ("predictions", "truth")}


def fit_all(cal: Calibration | None = None) -> dict[str, Any]:
    """Everything `data/phone_model.json` holds (deterministic: same data, same numbers)."""
    cal = cal or load_calibration()
    everything = np.ones(len(cal.rows), dtype=bool)
    final = fit_devices(cal, everything)
    base = fit_devices(cal, everything, baseline=True)
    cv = cross_validate(cal, "family2")
    cv3 = cross_validate(cal, "family")
    cv_leaky = cross_validate(cal, "family2", strict=False)
    cv_base = cross_validate(cal, "family2", baseline=True)
    devices = {}
    for phone in PHONES:
        devices[phone] = {
            "coef": {f: float(c) for f, c in zip(FEATURES, final["coef"])},
            "scale": final["scales"][phone],
            "expected_error": cv["devices"][phone]["pooled"]["rmspe"],
            "n_rows": final["counts"]["pixel1"],
            "n_scale_rows": final["counts"][phone] if phone != "pixel1" else 0,
            "baseline": {
                "coef": {f: float(c) for f, c in zip(BASELINE_FEATURES, base["coef"])},
                "scale": base["scales"][phone],
                "expected_error": cv_base["devices"][phone]["pooled"]["rmspe"],
            },
        }
    return {
        "schema": 1,
        "version": VERSION,
        "features": list(FEATURES),
        "units": "ms per MAC / byte / op / element; fixed in ms",
        "data": {
            "file": DATA_FILE,
            "sha256": cal.sha256,
            "float_rows": int(len(cal.rows)),
            "excluded": cal.excluded,
        },
        "harmonisation": final["factors"],
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
        "cv": {
            "lofo_v2_v3": _plain(cv),  # strict: the quoted expected error
            "lofo_v2_v3large_v3small": _plain(cv3),
            "baseline_lofo_v2_v3": _plain(cv_base),
            # not strict: factors from all label pairs, held-out ones included (for comparison)
            "lofo_v2_v3_shared_factors": _plain(cv_leaky),
        },
    }


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
