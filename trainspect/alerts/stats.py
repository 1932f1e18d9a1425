"""The few statistics the rules and `doctor` share: robust z-scores and a slope test.

Pure functions over float64 numpy arrays, NaN and inf dropped first, so a rule can
hand over a raw window without cleaning it. Kept in one place so that "spike",
"rising" and "flat" mean the same thing in an alert and in a diagnosis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trainspect.text import number

# MAD * 1.4826 estimates the standard deviation of normally distributed data.
MAD_TO_SIGMA = 1.4826
# A slope is "real" when it is at least this many standard errors from zero:
# two-sided p ~ 0.05 with a dozen points, stricter with fewer.
SLOPE_T = 2.0
# ... and when the change it predicts over the window is at least this share of
# the metric's level (so a significant but negligible drift still reads "flat").
SLOPE_MIN_REL_CHANGE = 0.01


def finite(values: np.ndarray) -> np.ndarray:
    """`values` without NaN and inf, as float64."""
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def robust_z(x: float, window: np.ndarray) -> float:
    """How many robust standard deviations `x` lies above the window's median.

    The scale is the median absolute deviation (x 1.4826). A window with no spread
    (MAD 0) gives +-inf for any other value and 0 for the median itself; callers pair
    the z-score with a ratio test so a flat series does not alarm on a tiny wiggle.
    """
    w = finite(window)
    if w.size == 0 or not math.isfinite(x):
        return math.nan
    median = float(np.median(w))
    scale = float(np.median(np.abs(w - median))) * MAD_TO_SIGMA
    if scale == 0.0:
        return 0.0 if x == median else math.copysign(math.inf, x - median)
    return (x - median) / scale


@dataclass(frozen=True)
class Trend:
    """The least-squares line through a window of (step, value) points."""

    direction: str  # "rising", "falling", "flat", or "unknown" (too few points)
    slope: float  # value units per step
    t: float  # slope / its standard error
    change: float  # slope x the window's step span: the fitted change over the window
    points: int
    first_step: int
    last_step: int


def trend(steps: np.ndarray, values: np.ndarray, *, min_points: int = 4,
          t_threshold: float = SLOPE_T, min_rel_change: float = SLOPE_MIN_REL_CHANGE) -> Trend:
    """The slope test: rising / falling when the slope is significant and not negligible.

    Fits value = a + b * step by least squares over the finite points. The trend is
    "rising" or "falling" when |b| is at least `t_threshold` standard errors (t-test
    on the slope, n - 2 degrees of freedom) AND the fitted change over the window,
    |b| * (last step - first step), is at least `min_rel_change` of the mean absolute
    level; otherwise "flat". Fewer than `min_points` finite points give "unknown".
    """
    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values)
    x, y = steps[keep], values[keep]
    n = int(x.size)
    if n < max(min_points, 3) or x[-1] == x[0]:
        first, last = (int(x[0]), int(x[-1])) if n else (0, 0)
        return Trend("unknown", math.nan, math.nan, math.nan, n, first, last)
    xc = x - x.mean()
    sxx = float(xc @ xc)
    slope = float(xc @ (y - y.mean())) / sxx
    residuals = y - y.mean() - slope * xc
    dof = n - 2
    se = math.sqrt(float(residuals @ residuals) / dof / sxx) if dof > 0 else math.inf
    # a perfect line (se 0): any non-zero slope is certain
    t = slope / se if se > 0.0 else (0.0 if slope == 0.0 else math.copysign(math.inf, slope))
    change = slope * float(x[-1] - x[0])
    level = float(np.mean(np.abs(y)))
    significant = abs(t) >= t_threshold and abs(change) >= min_rel_change * max(level, 1e-12)
    direction = "flat" if not significant else ("rising" if slope > 0 else "falling")
    return Trend(direction, slope, t, change, n, int(x[0]), int(x[-1]))


num = number  # messages and tables format numbers alike


def pct(fraction: float) -> str:
    """0.413 -> '41%'."""
    return f"{fraction * 100:.0f}%"
