"""MnasNet's reward: ACC(m) * (LAT(m) / TAR) ** w, with w = alpha if LAT <= TAR else beta.

Soft constraint (the paper's main setting): alpha = beta = -0.07 (doubling latency must buy about
5% relative accuracy: 1.05 * 2 ** -0.07 ~ 1). MobileNetV3-Small searched with w = -0.15. Hard
constraint (the paper's ablation): alpha = 0, beta = -1, i.e. accuracy alone below the target and a
steep penalty above it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lotto.errors import LottoError

CONSTRAINTS = ("soft", "hard")
PRESETS = {"large": -0.07, "small": -0.15}  # MobileNetV3's w per variant (soft constraint)


@dataclass(frozen=True)
class Objective:
    target_ms: float
    alpha: float  # exponent at or under the target
    beta: float  # exponent over it

    def __call__(self, accuracy: float, latency_ms: float) -> float:
        return reward(accuracy, latency_ms, self.target_ms, self.alpha, self.beta)


def reward(accuracy: float, latency_ms: float, target_ms: float, alpha: float, beta: float
           ) -> float:
    """ACC * (LAT / TAR) ** w; w = alpha when LAT <= TAR (the edge belongs to alpha), else beta."""
    w = alpha if latency_ms <= target_ms else beta
    return float(accuracy) * (float(latency_ms) / float(target_ms)) ** w


def objective(target_ms: float, constraint: str = "soft", w: float | None = None,
              preset: str = "large") -> Objective:
    """The reward's exponents: soft = `w` (when given, else the preset's) for both alpha and
    beta; hard = (0, -1), which takes no `w` (a `w` would silently make it soft)."""
    if not target_ms > 0:
        raise LottoError(f"target latency must be > 0 ms, got {target_ms}")
    if constraint not in CONSTRAINTS:
        raise LottoError(f"constraint {constraint!r}: choose soft or hard")
    if preset not in PRESETS:
        raise LottoError(f"preset {preset!r}: choose large or small")
    if w is not None:
        if w > 0:
            raise LottoError(f"w = {w} > 0 would reward slower networks; use w <= 0")
        if constraint == "hard":
            raise LottoError(f"w = {w} with the hard constraint: hard uses alpha 0, beta -1 "
                             "and takes no w; drop w or use the soft constraint")
        return Objective(float(target_ms), float(w), float(w))
    if constraint == "hard":
        return Objective(float(target_ms), 0.0, -1.0)
    return Objective(float(target_ms), PRESETS[preset], PRESETS[preset])
