"""The loss-composition probe against float64 numpy references and planted faults:
a zero-weight component leaking into the total, a weighted component missing or stuck
at zero, gradient-accumulation scaling, curriculum weights, bad input, fixed-size state."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import trainspect as ts
from trainspect.probes.losses import MAX_COMPONENTS, LossProbe, losses

LOG_EVERY = 5


def _view(runs, run):
    run.finish()
    return ts.open(runs).run(run.id)


def _window_means(values: np.ndarray) -> list[float]:
    """Means over the flush windows (steps 1-5, 6-10, ...) of one value per step."""
    return [float(values[i:i + LOG_EVERY].mean()) for i in range(0, len(values), LOG_EVERY)]


def _series(view, key):
    return [v for _, v in view.series(key)]


def test_components_weights_and_total_match_a_float64_reference(runs):
    rng = np.random.default_rng(0)
    steps = 10
    raw = {"kd": rng.uniform(1, 20, steps), "feature": rng.uniform(0, 5, steps)}
    curriculum = np.linspace(0.0, 0.9, steps)  # the feature weight ramps up: a curriculum
    run = ts.init(project="p", log_every=LOG_EVERY)
    for i, step in enumerate(range(1, steps + 1)):
        comps = {k: torch.tensor(v[i], dtype=torch.float64) for k, v in raw.items()}
        # a weight may be a 0-d tensor too (a schedule computed on the device)
        weights = {"kd": torch.tensor(0.7, dtype=torch.float64), "feature": float(curriculum[i])}
        total = 0.7 * comps["kd"] + curriculum[i] * comps["feature"]
        losses(run, step, comps, weights, total=total)
    view = _view(runs, run)
    assert [s for s, _ in view.series("loss/total")] == [5, 10]
    expected_total = 0.7 * raw["kd"] + curriculum * raw["feature"]
    np.testing.assert_allclose(_series(view, "loss/total"), _window_means(expected_total),
                               rtol=1e-12)
    np.testing.assert_allclose(_series(view, "loss/kd/raw"), _window_means(raw["kd"]),
                               rtol=1e-12)
    np.testing.assert_allclose(_series(view, "loss/feature/weight"), _window_means(curriculum),
                               rtol=1e-12)
    np.testing.assert_allclose(_series(view, "loss/feature/scaled"),
                               _window_means(curriculum * raw["feature"]), rtol=1e-12)
    assert max(_series(view, "loss/sum_gap")) < 1e-12
    assert view.alerts() == []
    assert run.errors == {} and run.rejected_values == 0


def test_a_zero_weight_component_reaching_the_total_is_named_with_its_coefficient(runs):
    rng = np.random.default_rng(1)
    steps = 5
    kd, feat, attn = rng.uniform(10, 20, steps), rng.uniform(30, 50, steps), rng.uniform(1, 2,
                                                                                          steps)
    run = ts.init(project="p", log_every=LOG_EVERY)
    for i in range(steps):
        comps = {"kd": torch.tensor(kd[i]), "feature": torch.tensor(feat[i]),
                 "attention": torch.tensor(attn[i])}
        weights = {"kd": 0.7, "feature": 0.0, "attention": 0.0}
        total = 0.7 * comps["kd"] + comps["feature"]  # the routing loss bypasses its weight
        losses(run, i + 1, comps, weights, total=total)
    view = _view(runs, run)
    totals = 0.7 * kd + feat
    gap = totals - 0.7 * kd
    (sum_gap,) = _series(view, "loss/sum_gap")
    assert sum_gap == pytest.approx(np.abs(gap).sum() / np.abs(totals).sum(), rel=1e-5)
    (leak,) = _series(view, "loss/feature/leak")
    assert leak == pytest.approx(feat.mean(), rel=1e-5)  # coefficient 1 x mean raw
    assert "loss/attention/leak" not in view.keys()  # it does not explain the gap
    alerts = view.alerts()
    assert [(a["rule"], a["level"], a["step"]) for a in alerts] == [("losses.leak", "critical",
                                                                      5)]
    message = alerts[0]["message"]
    assert "'feature'" in message and "coefficient 1" in message and "steps 1-5" in message
    assert "'feature'" in alerts[0]["action"]


def test_a_leak_at_another_weight_gets_that_coefficient(runs):
    rng = np.random.default_rng(2)
    run = ts.init(project="p", log_every=LOG_EVERY)
    for step in range(1, 6):
        ce, aux = rng.uniform(1, 3), rng.uniform(5, 9)
        losses(run, step, {"ce": ce, "aux": aux}, {"ce": 1.0, "aux": 0.0}, total=ce + 0.25 * aux)
    view = _view(runs, run)
    (alert,) = view.alerts()
    assert alert["rule"] == "losses.leak" and "coefficient 0.25" in alert["message"]


def test_a_gap_no_zero_weight_component_explains_is_reported_as_such(runs):
    run = ts.init(project="p", log_every=LOG_EVERY)
    for step in range(1, 6):
        losses(run, step, {"ce": 2.0 + step, "aux": 1.0}, {"ce": 1.0, "aux": 0.5},
               total=2 * (2.0 + step) + 0.5)  # ce counted twice
    view = _view(runs, run)
    assert [a["rule"] for a in view.alerts()] == ["losses.sum_gap"]
    assert "loss/ce/leak" not in view.keys()


def test_a_weighted_component_that_is_missing_or_stuck_at_zero_is_reported(runs):
    run = ts.init(project="p", log_every=LOG_EVERY)
    for step in range(1, 11):
        ce = torch.tensor(2.0 + 0.1 * step)
        # 'kd' is weighted but never passed; 'routing' is passed but always exactly 0;
        # 'aux' is 0 on some calls only: fine
        aux = torch.tensor(0.0 if step % 2 else 1.0)
        losses(run, step, {"ce": ce, "routing": torch.tensor(0.0), "aux": aux},
               {"ce": 1.0, "kd": 0.7, "routing": 0.3, "aux": 0.1},
               total=ce + 0.1 * aux)
    view = _view(runs, run)
    alerts = view.alerts()
    assert sorted((a["rule"], a["step"]) for a in alerts) == [("losses.missing", 5),
                                                              ("losses.stuck", 5)]
    by_rule = {a["rule"]: a["message"] for a in alerts}
    assert "'kd'" in by_rule["losses.missing"] and "5 of 5 calls" in by_rule["losses.missing"]
    assert "'routing'" in by_rule["losses.stuck"] and "all 5 calls" in by_rule["losses.stuck"]
    assert _series(view, "loss/kd/weight") == [0.7, 0.7]  # recorded though never passed
    assert "loss/kd/raw" not in view.keys()  # missing, not silently zero
    assert max(_series(view, "loss/sum_gap")) < 1e-6


def test_grad_accum_scales_the_total_back_to_the_components(runs):
    k = 4
    run = ts.init(project="p", log_every=LOG_EVERY)
    for step in range(1, 6):
        for micro in range(k):
            ce = torch.tensor(1.0 + step + 0.1 * micro)
            losses(run, step, {"ce": ce}, total=ce / k, grad_accum=k)
    view = _view(runs, run)
    per_call = [1.0 + s + 0.1 * m for s in range(1, 6) for m in range(k)]
    assert _series(view, "loss/total") == pytest.approx([np.mean(per_call)], rel=1e-6)
    assert _series(view, "loss/sum_gap")[0] < 1e-6
    assert view.alerts() == []

    run = ts.init(project="p", log_every=LOG_EVERY)  # the same loop without grad_accum=k
    for step in range(1, 6):
        ce = torch.tensor(1.0 + step)
        losses(run, step, {"ce": ce}, total=ce / k)
    view = _view(runs, run)
    assert _series(view, "loss/sum_gap") == pytest.approx([k - 1.0], rel=1e-6)  # |x/4-x|/|x/4|
    assert [a["rule"] for a in view.alerts()] == ["losses.sum_gap"]


def test_bad_input_is_reported_once_and_never_raises(runs, caplog):
    run = ts.init(project="p", log_every=LOG_EVERY)
    with caplog.at_level(logging.WARNING, logger="trainspect"):
        for step in range(1, 4):
            losses(run, step, {"ce": torch.ones(2)}, total=1.0)  # not 0-d
            losses(run, step, "ce", total=1.0)
            losses(run, step, {"a/b": 1.0})
            losses(run, step, {"ce": 1.0}, grad_accum=0)
            losses(run, step, {"ce": 1.0}, {"ce": "high"})
        losses(run, 4, {"ce": 1.0}, total=1.0)  # a good call still counts
    view = _view(runs, run)
    assert run.rejected_values == 15 and run.errors == {}
    warnings = [r.getMessage() for r in caplog.records if "losses" in r.getMessage()]
    assert len(warnings) == 1 and "components" in warnings[0]  # once per key
    assert view.series("loss/ce/raw") == [(4, 1.0)]


def test_state_is_fixed_size_and_caches_are_bounded(runs):
    run = ts.init(project="p", log_every=LOG_EVERY)
    sizes = []
    for step in range(1, 201):
        names = {f"c{step % 7}": float(step), "ce": 1.0}
        losses(run, step, names, {f"c{step % 7}": float(step % 3)})
        if step in (10, 200):
            probe = run.probe("losses")
            sizes.append(sum(t.numel() for t in probe.state()))
    run.finish()
    assert sizes[0] == sizes[1] == MAX_COMPONENTS * 13 + 6
    assert len(probe._patterns) <= 64 and len(probe.slots) == 8


def test_too_many_component_names_are_rejected_not_grown(runs):
    probe = LossProbe(torch.device("cpu"))
    run = ts.init(project="p")
    run.add_probe(probe)
    for i in range(MAX_COMPONENTS + 3):
        losses(run, i + 1, {f"c{i}": 1.0})
    run.finish()
    assert len(probe.slots) == MAX_COMPONENTS and run.rejected_values == 3
