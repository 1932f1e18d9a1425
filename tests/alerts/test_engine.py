"""The alert engine: one problem is one alert, it clears, it survives bad rules, and it
sees the same sequence however the writer batches it."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

import trainspect as ts
from trainspect.alerts import HOLD, AlertEngine, Finding, Rule
from trainspect.errors import TrainspectError
from trainspect.records import Alert

from .series import CONFIG, FAULTS, healthy


class Above(Rule):
    """Fires while `x` > `limit` (test rule)."""

    id = "above"
    keys = ("x",)
    action = "lower x"

    def __init__(self, limit: float = 1.0, **attrs) -> None:
        self.limit = limit
        for name, value in attrs.items():
            setattr(self, name, value)

    def check(self, ctx):
        value = ctx.new["x"]
        if value > self.limit:
            return Finding(f"x is {value:g} at step {ctx.step}",
                           level="critical" if value > 100 else None)
        return None


def feed_all(engine: AlertEngine, values: list[float], key: str = "x",
             start: int = 0) -> list[Alert]:
    out = []
    for i, v in enumerate(values):
        out += engine.feed(start + i, {key: v})
    return out


def summary(alerts: list[Alert]) -> list[tuple]:
    return [(a.step, a.rule, a.level, a.state) for a in alerts]


def test_one_problem_is_one_alert_and_it_clears_after_clear_after_quiet_checks():
    engine = AlertEngine([Above(clear_after=3)], console=False)
    alerts = feed_all(engine, [0, 5, 6, 7, 0, 0, 9, 0, 0, 0, 0])
    # 5, 6, 7 and (after two quiet checks) 9 are the same problem: one fired alert
    assert summary(alerts) == [(1, "above", "warning", "fired"),
                               (9, "above", "warning", "cleared")]
    assert alerts[0].message == "x is 5 at step 1" and alerts[0].action == "lower x"
    assert alerts[1].action == "" and "fired at step 1" in alerts[1].message
    assert engine.active() == []


def test_fire_after_needs_consecutive_checks():
    engine = AlertEngine([Above(fire_after=2)], console=False)
    alerts = feed_all(engine, [5, 0, 5, 0, 5, 5])
    assert summary(alerts) == [(5, "above", "warning", "fired")]


def test_cooldown_blocks_refiring_until_enough_steps_passed():
    engine = AlertEngine([Above(clear_after=1, cooldown_steps=5)], console=False)
    alerts = feed_all(engine, [5, 0, 5, 5, 5, 5, 5, 5])
    # fired 0, cleared 1; steps 2..5 are within 5 steps of the clear; 6 fires again
    assert summary(alerts) == [(0, "above", "warning", "fired"),
                               (1, "above", "warning", "cleared"),
                               (6, "above", "warning", "fired")]


def test_rising_level_escalates_once_and_never_goes_back_down():
    engine = AlertEngine([Above()], console=False)
    alerts = feed_all(engine, [5, 500, 5, 600])
    assert summary(alerts) == [(0, "above", "warning", "fired"),
                               (1, "above", "critical", "fired")]
    assert engine.active()[0].level == "critical"


class PerSubject(Rule):
    """Subjects a and b from keys a and b; only the keys present at a step are checked."""

    id = "per_subject"
    keys = ("a", "b")
    clear_after = 1

    def check(self, ctx):
        return {k: Finding(f"{k} bad", subject=k) if v > 0 else None for k, v in ctx.new.items()}


def test_a_mapping_result_only_touches_the_subjects_it_names():
    engine = AlertEngine([PerSubject()], console=False)
    out = engine.feed(0, {"a": 1, "b": 1})
    out += engine.feed(1, {"b": 0})  # a was not checked: it stays fired
    out += engine.feed(2, {"a": 0})
    assert summary(out) == [(0, "per_subject:a", "warning", "fired"),
                            (0, "per_subject:b", "warning", "fired"),
                            (1, "per_subject:b", "warning", "cleared"),
                            (2, "per_subject:a", "warning", "cleared")]


class Holding(Rule):
    id = "holding"
    keys = ("x",)
    clear_after = 1

    def check(self, ctx):
        if math.isnan(ctx.new["x"]):
            return HOLD
        return Finding("bad") if ctx.new["x"] > 0 else None


def test_hold_keeps_alert_states_as_they_are():
    engine = AlertEngine([Holding()], console=False)
    alerts = feed_all(engine, [1, math.nan, math.nan, 0])
    assert summary(alerts) == [(0, "holding", "warning", "fired"),
                               (3, "holding", "warning", "cleared")]


class Boom(Rule):
    id = "boom"
    keys = ("x",)

    def check(self, ctx):
        if ctx.step == 2:
            raise ZeroDivisionError("planted")
        return None


def test_a_failing_rule_is_switched_off_and_reported_once(caplog):
    engine = AlertEngine([Boom(), Above()], console=False)
    with caplog.at_level(logging.WARNING, logger="trainspect.alerts"):
        alerts = feed_all(engine, [0, 0, 0, 5, 0])
    failed = [a for a in alerts if a.rule == "alert_rule_failed"]
    assert len(failed) == 1 and failed[0].step == 2
    assert "'boom'" in failed[0].message and "ZeroDivisionError: planted" in failed[0].message
    assert [a.rule for a in alerts if a.rule != "alert_rule_failed"] == ["above"]  # others go on
    assert sum("boom" in r.getMessage() for r in caplog.records) == 1


def test_bad_rules_are_refused_with_one_clear_error():
    engine = AlertEngine([Above()], console=False)
    with pytest.raises(TrainspectError, match="already added"):
        engine.add(Above())
    bad_level = Above()
    bad_level.id, bad_level.level = "other", "loud"
    with pytest.raises(TrainspectError, match="level 'loud'"):
        engine.add(bad_level)
    with pytest.raises(TrainspectError, match="alert_rules"):
        engine.add(object())
    with pytest.raises(TrainspectError, match="clear_after=0"):
        AlertEngine([Above(clear_after=0)])


def test_console_logs_each_fired_and_cleared_alert_once_at_its_level(caplog):
    engine = AlertEngine([Above(clear_after=1)])
    with caplog.at_level(logging.DEBUG, logger="trainspect.alerts"):
        feed_all(engine, [5, 6, 500, 0, 0])
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "trainspect.alerts"]
    assert lines == [
        (logging.WARNING, "trainspect [warning] step 0 above: x is 5 at step 0 -> lower x"),
        (logging.CRITICAL, "trainspect [critical] step 2 above: x is 500 at step 2 -> lower x"),
        (logging.INFO, "trainspect [cleared] step 3 above: above cleared at step 3: no longer "
                       "seen for 1 checks (fired at step 2)"),
    ]


def _columns(rows: list[tuple[int, dict]]) -> dict:
    cols: dict[str, list] = {}
    for step, metrics in rows:
        for key, value in metrics.items():
            cols.setdefault(key, []).append((step, value))
    return {k: [(np.array([s for s, _ in pts], np.int64), np.array([v for _, v in pts]),
                 np.zeros(len(pts)))] for k, pts in cols.items()}


@pytest.mark.parametrize("fault", ["nonfinite", "loss_spike", "overfitting", "throughput_drop",
                                   "lr_frozen_warmup", "draft_collapse"])
def test_alerts_do_not_depend_on_how_the_writer_batches(fault):
    rows = list(healthy(fault=FAULTS[fault]))

    def run(batch: int) -> list[tuple]:
        engine = AlertEngine(config=CONFIG, console=False)
        out = []
        for i in range(0, len(rows), batch):
            out += engine.observe(_columns(rows[i:i + batch]), [])
        return [(a.step, a.rule, a.level, a.state, a.message) for a in out]

    one_by_one = run(1)
    assert any(a[1].split(":")[0] == fault for a in one_by_one)
    assert run(7) == one_by_one
    assert run(len(rows)) == one_by_one


class Recorder(Rule):
    id = "recorder"
    keys = ("x",)

    def __init__(self):
        self.seen = []

    def check(self, ctx):
        self.seen.append((ctx.step, ctx.tail("x")[0].tolist()))
        return None


def test_a_resumed_run_going_back_in_steps_drops_the_abandoned_future():
    rule = Recorder()
    engine = AlertEngine([rule], console=False)
    feed_all(engine, [1.0] * 8)
    feed_all(engine, [2.0] * 3, start=5)  # the resumed attempt restarts at step 5
    assert rule.seen[-3] == (5, [0, 1, 2, 3, 4, 5])
    assert rule.seen[-1] == (7, [0, 1, 2, 3, 4, 5, 6, 7])
    assert engine._histories["x"].values().tolist() == [1.0] * 5 + [2.0] * 3


def test_rules_see_alerts_from_probes_and_checkpoint_names():
    seen = {}

    class Peek(Rule):
        id = "peek"
        keys = ("x",)

        def check(self, ctx):
            seen["alerts"] = [a.message for a in ctx.alerts("nonfinite")]
            seen["checkpoint"] = ctx.checkpoint(3)
            return None

    engine = AlertEngine([Peek()], console=False)
    probe = Alert(step=1, rule="hidden_nonfinite", level="warning", message="layers.4 went nan")
    saved = Alert(step=3, rule="checkpoint", level="info", message="checkpoint-300")
    assert engine.observe({}, [probe, saved]) == []  # nothing of its own to say
    engine.feed(4, {"x": 0.0})
    assert seen == {"alerts": ["layers.4 went nan"], "checkpoint": "checkpoint-300"}


def test_engine_on_a_run_stores_its_alerts_with_the_batch(runs):
    engine = AlertEngine(config=CONFIG, console=False)
    with ts.init(project="p", config=CONFIG, alerts=False) as run:
        run.add_observer(engine.observe)
        for step in range(30):
            run.log({"loss": 2.0 if step != 20 else math.nan}, step=step)
    stored = ts.open().run(run.id).alerts()
    # one NaN between finite losses: a warning (a batch with no supervised token does it)
    assert [(a["step"], a["rule"], a["level"], a["state"]) for a in stored] == [
        (20, "nonfinite:loss", "warning", "fired"), (23, "nonfinite:loss", "warning", "cleared")]
    assert stored[0]["message"].startswith(
        "loss is nan at step 20 (last finite value 2 at step 19); the loss before it is finite")


def test_a_non_finite_loss_that_persists_escalates_to_critical():
    engine = AlertEngine(config=CONFIG, console=False)
    out = []
    for step in range(25):
        out += engine.feed(step, {"loss": 2.0 if step < 20 else math.nan})
    assert [(a.step, a.rule, a.level) for a in out] == [(20, "nonfinite:loss", "warning"),
                                                        (21, "nonfinite:loss", "critical")]


class Covered(Above):
    id = "covered"
    covered_by = {"*": ("probe.same_problem", "above")}


def test_a_rule_stays_quiet_while_another_source_reports_the_same_problem():
    def probe(step, state="fired"):
        return Alert(step=step, rule="probe.same_problem", level="critical", message="seen",
                     state=state)

    # the probe's alert is out from step 2 to step 5, in the same batches as the points
    engine = AlertEngine([Covered(clear_after=1)], console=False)
    rows = [(s, {"x": 5.0}) for s in range(2, 9)]
    out = []
    for step, metrics in rows:
        records = [probe(2)] if step == 2 else [probe(5, "cleared")] if step == 5 else []
        out += engine.feed(step, metrics, records=records)
    assert summary(out) == [(5, "covered", "warning", "fired")]  # only once the probe cleared

    # in one batch (a replay), the probe alerts are applied in step order all the same
    engine = AlertEngine([Covered(clear_after=1)], console=False)
    replayed = engine.observe(_columns(rows), [probe(5, "cleared"), probe(2)])
    assert summary(replayed) == summary(out)

    # another rule of the engine can cover it too
    engine = AlertEngine([Above(), Covered()], console=False)
    assert [a.rule for a in feed_all(engine, [5.0, 5.0])] == ["above"]


def test_init_wires_the_engine_with_extra_rules_and_checks_its_arguments(runs):
    with ts.init(project="p", alert_rules=[Above()]) as run:
        run.alerts.add(Holding())  # rules can be added while the run goes
        for step in range(5):
            run.log({"x": 5.0}, step=step)
    assert {r.id for r in run.alerts.rules} >= {"above", "holding", "nonfinite", "plateau"}
    view = ts.open().run(run.id)
    assert [a["rule"] for a in view.alerts()] == ["above", "holding"]
    assert "above" in view.meta["alert_rules"] and "nonfinite" in view.meta["alert_rules"]
    with ts.init(project="p", alerts=False) as quiet:
        assert quiet.alerts.rules == ()
    for kwargs, word in (({"alert_rules": Above()}, "alert_rules"),
                         ({"alert_rules": [Above(), Above()]}, "alert_rules"),
                         ({"webhook": "nope"}, "webhook"), ({"alerts": "yes"}, "alerts")):
        with pytest.raises(TrainspectError, match=word):
            ts.init(project="bad", **kwargs)
    assert not (runs / "bad").exists() or not list((runs / "bad").iterdir())
