"""The shared statistics against hand-computed values and an independent least-squares fit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainspect.alerts.history import KeyHistory
from trainspect.alerts.rules.common import median
from trainspect.alerts.stats import robust_z, trend


def test_robust_z_by_hand():
    # median 3; absolute deviations 2, 1, 0, 1, 97 -> MAD 1 -> sigma 1.4826
    assert robust_z(10.0, np.array([1, 2, 3, 4, 100.0])) == pytest.approx(7 / 1.4826)
    assert robust_z(3.0, np.array([1, 2, 3, 4, 100.0, math.nan])) == 0.0  # NaN ignored
    assert robust_z(2.0, np.array([2.0, 2.0, 2.0])) == 0.0
    assert robust_z(2.5, np.array([2.0, 2.0, 2.0])) == math.inf
    assert math.isnan(robust_z(1.0, np.array([math.nan])))


def test_trend_slope_and_t_match_an_independent_fit():
    rng = np.random.default_rng(3)
    steps = np.arange(10, 60, 2)
    values = 5.0 - 0.02 * steps + 0.05 * rng.standard_normal(steps.size)
    t = trend(steps, values)
    x = np.column_stack([np.ones(steps.size), steps.astype(float)])
    coef, residual, *_ = np.linalg.lstsq(x, values, rcond=None)
    se = math.sqrt(residual[0] / (steps.size - 2) * np.linalg.inv(x.T @ x)[1, 1])
    assert t.slope == pytest.approx(coef[1], rel=1e-12)
    assert t.t == pytest.approx(coef[1] / se, rel=1e-9)
    assert t.change == pytest.approx(coef[1] * 48, rel=1e-12)
    assert (t.direction, t.points, t.first_step, t.last_step) == ("falling", 25, 10, 58)


def test_trend_directions():
    steps = np.arange(20)
    rng = np.random.default_rng(0)
    assert trend(steps, 2.0 * steps + 1).direction == "rising"  # a perfect line: t is inf
    assert trend(steps, rng.standard_normal(20) + 10).direction == "flat"  # noise only
    # significant (noise-free) but only 0.19% over the window: still flat
    assert trend(steps, 100 + 0.0001 * steps).direction == "flat"
    assert trend(steps[:3], steps[:3] * 1.0).direction == "unknown"
    with_nan = np.where(steps % 2 == 0, steps * 1.0, math.nan)
    assert trend(steps, with_nan).points == 10


def test_median_matches_numpy_and_skips_nonfinite():
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 50):
        xs = rng.standard_normal(n)
        assert median(list(xs)) == pytest.approx(float(np.median(xs)))
    assert median([1.0, math.nan, 3.0, math.inf]) == 2.0
    assert math.isnan(median([math.nan]))


def test_key_history_keeps_the_last_points_and_running_bests():
    h = KeyHistory(capacity=4)
    for step, value in enumerate([5.0, 1.0, math.nan, 7.0, 3.0, 2.0, 4.0]):
        h.append(step, value)
    steps, values = h.tail()
    assert steps.tolist() == [3, 4, 5, 6] and values.tolist() == [7.0, 3.0, 2.0, 4.0]
    assert (h.min, h.min_step, h.max, h.max_step, h.count) == (1.0, 1, 7.0, 3, 7)
    assert h.recent(2) == [2.0, 4.0] and h.at_or_before(5) == 2.0
    h.append(4, 9.0)  # a rewind: steps 4.. are replaced; older kept points show again
    assert h.tail()[0].tolist() == [1, 2, 3, 4] and h.tail()[1].tolist()[-2:] == [7.0, 9.0]
    for step in range(5, 40):  # trimming keeps exactly `capacity` visible points
        h.append(step, float(step))
    assert len(h) == 4 and h.tail()[0].tolist() == [36, 37, 38, 39]
