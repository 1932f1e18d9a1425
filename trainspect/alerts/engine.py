"""The alert engine: runs the rules over the record stream and turns findings into alerts.

It sits on the writer thread as a run observer (`run.add_observer(engine.observe)`)
and sees each committed batch once. The batch's points for keys some rule reads
are put in step order and replayed one step at a time, so a rule sees the same
sequence whether the writer committed 1 or 1,000 steps at once, and `doctor` can
replay a stored run through a fresh engine and get the alerts a live one would have
raised.

Turning findings into alerts, per (rule, subject):
  - fire once the problem was seen in `fire_after` consecutive checks (and not
    within `cooldown_steps` of the last time it cleared);
  - while it persists, stay silent (escalating once if the level rises);
  - clear, with an Alert whose state is "cleared", after `clear_after` consecutive
    healthy checks. Rules add threshold hysteresis with `ctx.active(subject)`.
Fired and cleared alerts go to the console (logging) and the webhook here, and to
the store by being returned to the writer. A rule that raises is switched off and
reported once; the other rules go on.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainspect.alerts.delivery import Webhook, log_alert
from trainspect.alerts.history import KeyHistory
from trainspect.alerts.rule import HOLD, Context, Finding, Rule
from trainspect.errors import TrainspectError
from trainspect.records import ALERT_LEVELS, Alert

log = logging.getLogger("trainspect.alerts")

LEVEL_RANK = {level: i for i, level in enumerate(ALERT_LEVELS)}
RULE_FAILED = "alert_rule_failed"
MAX_EXTERNAL = 64  # alerts from probes and the user that rules may consult
_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass
class _State:
    """One (rule, subject): whether its alert is out, and the counters behind that."""

    active: bool = False
    level: str = "info"
    streak: int = 0  # consecutive checks with the problem
    quiet: int = 0  # consecutive healthy checks while active
    counted_step: int | None = None  # the step last counted (a step checked twice counts once)
    fired_step: int = 0
    cleared_step: int | None = None
    alert: Alert | None = None


class AlertEngine:
    """Rules over the stream of records. `rules=None` means the built-in set.

    `config` is the run's config (rules read e.g. `warmup_steps`); `console` logs each
    fired or cleared alert once on `trainspect.alerts`; `webhook` (a URL or a
    `Webhook`) also POSTs every alert, the run's own included; `run` ({id, project,
    name}) goes into the webhook payload.
    """

    def __init__(self, rules: Iterable[Rule] | None = None, *,
                 config: Mapping[str, Any] | None = None, console: bool = True,
                 webhook: str | Webhook | None = None,
                 run: Mapping[str, Any] | None = None) -> None:
        if rules is None:
            from trainspect.alerts.rules import default_rules

            rules = default_rules()
        self.config: dict[str, Any] = dict(config or {})
        self.console = console
        self.webhook: Webhook | None = None
        self._lock = threading.Lock()
        self._rules: tuple[Rule, ...] = ()
        self._ids: set[str] = set()
        self._disabled: set[str] = set()
        self._histories: dict[str, KeyHistory] = {}
        self._interest: dict[str, tuple[Rule, ...] | None] = {}  # key -> rules it triggers
        self._states: dict[str, dict[str, _State]] = {}
        self._active_subjects: dict[str, set[str]] = {}  # rule id -> subjects fired, not cleared
        self._external: list[Alert] = []  # the latest MAX_EXTERNAL, for ctx.alerts
        self._external_active: dict[str, Alert] = {}  # their rule -> fired and not cleared
        self._checkpoints: dict[int, str] = {}
        self._ctx = Context(self._histories, self.config, self._external, self._checkpoints)
        self._wall_time = 0.0
        for rule in rules:
            self.add(rule)
        # last, so that a bad rule raises before a delivery thread is started
        self.webhook = webhook if webhook is None or isinstance(webhook, Webhook) else Webhook(
            webhook, run=run)

    # ---- rules -------------------------------------------------------------------------

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    def add(self, rule: Rule) -> Rule:
        """Add a rule (an instance; its state is its own, so do not share it between runs)."""
        _validate(rule, self._ids)
        with self._lock:
            self._rules = (*self._rules, rule)
            self._ids.add(rule.id)
            self._interest.clear()
        return rule

    def remove(self, rule_id: str) -> None:
        with self._lock:
            self._rules = tuple(r for r in self._rules if r.id != rule_id)
            self._ids.discard(rule_id)
            self._interest.clear()

    def note_checkpoint(self, step: int, name: str) -> None:
        """Tell the rules which checkpoint was saved at `step` (they name it in actions)."""
        with self._lock:
            self._checkpoints[int(step)] = str(name)

    def active(self) -> list[Alert]:
        """The alerts fired and not yet cleared, oldest first."""
        with self._lock:
            out = [s.alert for states in self._states.values() for s in states.values()
                   if s.active and s.alert is not None]
        return sorted(out, key=lambda a: a.step)

    def tracks(self, key: str) -> bool:
        """Whether some rule reads `key` (replays need only these series)."""
        with self._lock:
            return self._interest_of(key) is not None

    # ---- input -------------------------------------------------------------------------

    def observe(self, columns: Mapping[str, list[tuple[np.ndarray, ...]]],
                records: Iterable[Any] = ()) -> list[Alert]:
        """The run observer: new scalar columns and other records in, new alerts out."""
        external = [r for r in records if isinstance(r, Alert)]
        with self._lock:
            external = [a for a in external if not self._owns(a.rule)]
            fresh = self._run(columns, sorted(external, key=lambda a: a.step))
        for alert in fresh:
            if self.console:
                log_alert(alert)
        if self.webhook is not None:
            for alert in (*external, *fresh):
                self.webhook.send(alert)
        return fresh

    def feed(self, step: int, values: Mapping[str, float], wall_time: float | None = None,
             records: Iterable[Any] = ()) -> list[Alert]:
        """Observe one step's values (tests, notebooks, replays of other loggers)."""
        t = time.time() if wall_time is None else wall_time
        columns = {k: [(np.array([step], np.int64), np.array([float(v)], np.float64),
                        np.array([t], np.float64))] for k, v in values.items()}
        return self.observe(columns, records)

    def close(self, timeout: float = 5.0) -> None:
        """Give the webhook up to `timeout` seconds to deliver what is queued."""
        if self.webhook is not None:
            self.webhook.close(timeout)

    # ---- the batch -----------------------------------------------------------------------

    def _note(self, alert: Alert) -> None:
        """An alert from a probe, the eval or the user: rules may read it or defer to it."""
        self._external.append(alert)
        del self._external[:-MAX_EXTERNAL]
        if alert.state == "cleared":
            self._external_active.pop(alert.rule, None)
        else:
            self._external_active[alert.rule] = alert
        if alert.rule == "checkpoint" and alert.message:
            self._checkpoints[alert.step] = alert.message.strip()

    def _covered(self, rule: Rule, subject: str) -> bool:
        """Whether another source already reports this problem (see Rule.covered_by)."""
        covered_by = getattr(rule, "covered_by", None) or {}
        names = (*covered_by.get("*", ()), *covered_by.get(subject, ()))
        for name in names:
            if name in self._external_active or self._active_subjects.get(name):
                return True
        return False

    def _owns(self, rule_name: str) -> bool:
        return rule_name == RULE_FAILED or rule_name.split(":", 1)[0] in self._ids

    def _interest_of(self, key: str) -> tuple[Rule, ...] | None:
        """The rules `key` triggers (maybe none), or None when no rule reads it."""
        if key in self._interest:
            return self._interest[key]
        readers = [r for r in self._rules if r.reads(key)]
        if not readers:
            self._interest[key] = None
            return None
        self._interest[key] = tuple(r for r in readers if r.triggered_by(key))
        capacity = max(int(r.history) for r in readers)
        h = self._histories.get(key)
        if h is None:
            self._histories[key] = KeyHistory(capacity)
            self._ctx._keys_changed()
        elif h.capacity < capacity:
            h.capacity = capacity
        return self._interest[key]

    def _run(self, columns: Mapping[str, list[tuple[np.ndarray, ...]]],
             external: list[Alert]) -> list[Alert]:
        names: list[str] = []
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for key, segments in columns.items():
            if self._interest_of(key) is None:
                continue
            index = len(names)
            names.append(key)
            for segment in segments:
                steps, values = segment[0], segment[1]
                times = segment[2] if len(segment) > 2 else np.zeros(len(steps))
                parts.append((np.asarray(steps, np.int64), np.asarray(values, np.float64),
                              np.asarray(times, np.float64),
                              np.full(len(steps), index, np.int64)))
        if not parts:
            for alert in external:
                self._note(alert)
            return []
        steps, values, times, which = (np.concatenate(c) for c in zip(*parts))
        order = np.argsort(steps, kind="stable")  # step order; within a step, as logged
        steps_l, values_l = steps[order].tolist(), values[order].tolist()
        times_l, which_l = times[order].tolist(), which[order].tolist()
        out: list[Alert] = []
        i, n, e = 0, len(steps_l), 0
        while i < n:
            j = i
            step = steps_l[i]
            while e < len(external) and external[e].step <= step:  # in step order, as live
                self._note(external[e])
                e += 1
            new: dict[str, float] = {}
            while j < n and steps_l[j] == step:
                key = names[which_l[j]]
                new[key] = values_l[j]
                self._histories[key].append(step, values_l[j])
                j += 1
            self._wall_time = max(times_l[i:j])
            self._step(step, new, out)
            i = j
        for alert in external[e:]:
            self._note(alert)
        return out

    def _step(self, step: int, new: dict[str, float], out: list[Alert]) -> None:
        ctx = self._ctx
        ctx.step, ctx.new = step, new
        if len(new) == 1:
            triggered: Iterable[Rule] = self._interest[next(iter(new))] or ()
        else:
            hit = {id(r) for key in new for r in (self._interest[key] or ())}
            triggered = [r for r in self._rules if id(r) in hit]
        for rule in triggered:
            if rule.id not in self._disabled:
                self._check(rule, out)

    # ---- findings to alerts ------------------------------------------------------------

    def _check(self, rule: Rule, out: list[Alert]) -> None:
        ctx = self._ctx
        states = self._states.setdefault(rule.id, {})
        ctx._active = self._active_subjects.setdefault(rule.id, set())
        try:
            result = rule.check(ctx)
            present, healthy = _normalise(result)
        except Exception as err:
            self._disable(rule, err, out)
            return
        if present is None:  # HOLD
            return
        for subject, finding in present.items():
            self._present(rule, subject, finding, states.setdefault(subject, _State()), out)
        quiet = ((s for s in list(states) if s not in present) if healthy is None
                 else (s for s in healthy if s in states))
        for subject in quiet:
            self._quiet(rule, subject, states[subject], out)

    def _present(self, rule: Rule, subject: str, finding: Finding, st: _State,
                 out: list[Alert]) -> None:
        step = self._ctx.step
        if st.counted_step != step:
            st.streak += 1
            st.counted_step = step
        st.quiet = 0
        level = finding.level or rule.level
        if st.active:
            if LEVEL_RANK.get(level, 1) > LEVEL_RANK.get(st.level, 1):  # escalate, once per level
                self._fire(rule, subject, finding, level, st, out)
            return
        if st.streak < rule.fire_after:
            return
        if st.cleared_step is not None and step < st.cleared_step + rule.cooldown_steps:
            return
        if self._covered(rule, subject):
            st.streak = 0  # someone else reports it; start afresh once they clear
            return
        self._fire(rule, subject, finding, level, st, out)

    def _fire(self, rule: Rule, subject: str, finding: Finding, level: str, st: _State,
              out: list[Alert]) -> None:
        step = self._ctx.step if finding.step is None else int(finding.step)
        alert = Alert(step=step, rule=_name(rule.id, subject), level=level,
                      message=finding.message,
                      action=rule.action if finding.action is None else finding.action,
                      state="fired", wall_time=self._wall_time or time.time())
        st.active, st.level, st.fired_step, st.alert, st.quiet = True, level, step, alert, 0
        self._active_subjects.setdefault(rule.id, set()).add(subject)
        out.append(alert)

    def _quiet(self, rule: Rule, subject: str, st: _State, out: list[Alert]) -> None:
        step = self._ctx.step
        counted = st.counted_step == step
        st.counted_step = step
        st.streak = 0
        if not st.active:
            return
        if not counted:
            st.quiet += 1
        if st.quiet < rule.clear_after:
            return
        message = rule.cleared_message(subject, st.fired_step, self._ctx)
        out.append(Alert(step=step, rule=_name(rule.id, subject), level=st.level,
                         message=message, action="", state="cleared",
                         wall_time=self._wall_time or time.time()))
        st.active, st.cleared_step, st.quiet, st.alert = False, step, 0, None
        self._active_subjects[rule.id].discard(subject)

    def _disable(self, rule: Rule, err: Exception, out: list[Alert]) -> None:
        self._disabled.add(rule.id)
        log.warning("trainspect: alert rule %s failed at step %d and was switched off",
                    rule.id, self._ctx.step, exc_info=err)
        out.append(Alert(
            step=self._ctx.step, rule=RULE_FAILED, level="warning",
            message=f"the alert rule '{rule.id}' failed at step {self._ctx.step} "
                    f"({type(err).__name__}: {err}) and was switched off; the other rules go on",
            action="Fix or remove the rule; the traceback is logged on 'trainspect.alerts'.",
            wall_time=self._wall_time or time.time(),
        ))


def engine_for_run(*, alerts: bool = True, alert_rules: Iterable[Rule] | None = None,
                   webhook: str | Webhook | None = None, config: Mapping[str, Any] | None = None,
                   run: Mapping[str, Any] | None = None) -> AlertEngine:
    """The engine `ts.init` attaches: the built-in rules (unless `alerts=False`) plus
    `alert_rules`, delivering to the console and `webhook`. Bad arguments raise one
    TrainspectError naming them."""
    if not isinstance(alerts, bool):
        raise TrainspectError(f"expected `alerts` to be True or False, got {alerts!r}")
    if alert_rules is None:
        extra: list[Rule] = []
    elif isinstance(alert_rules, (str, bytes, Mapping)) or not isinstance(alert_rules, Iterable):
        raise TrainspectError("expected `alert_rules` to be a list of trainspect.alerts.Rule "
                              f"instances, got {type(alert_rules).__name__}")
    else:
        extra = list(alert_rules)
    from trainspect.alerts.rules import default_rules

    return AlertEngine([*(default_rules() if alerts else []), *extra], config=config,
                       webhook=webhook, run=run)


def _name(rule_id: str, subject: str) -> str:
    return f"{rule_id}:{subject}" if subject else rule_id


def _normalise(result: Any) -> tuple[dict[str, Finding] | None, list[str] | None]:
    """(subjects with a finding, subjects checked healthy); healthy None means all others.

    (None, None) for HOLD.
    """
    if result is HOLD:
        return None, None
    if result is None:
        return {}, None
    if isinstance(result, Finding):
        return {result.subject: result}, None
    if isinstance(result, Mapping):
        present = {str(s): f for s, f in result.items() if f is not None}
        for subject, finding in present.items():
            if not isinstance(finding, Finding):
                raise TypeError(f"check() mapped {subject!r} to {finding!r}, not a Finding")
        return present, [str(s) for s, f in result.items() if f is None]
    present = {}
    for finding in result:
        if not isinstance(finding, Finding):
            raise TypeError(f"check() returned {finding!r}, not a Finding")
        present[finding.subject] = finding
    return present, None


def _validate(rule: Any, ids: set[str]) -> None:
    rule_id = getattr(rule, "id", None)
    if not isinstance(rule_id, str) or not _ID.match(rule_id):
        raise TrainspectError(f"expected each of `alert_rules` to have an `id` of letters, "
                              f"digits, '_', '-' or '.', got {rule_id!r} on {rule!r}")
    if rule_id in ids or rule_id == RULE_FAILED:
        raise TrainspectError(f"`alert_rules`: a rule with id {rule_id!r} is already added")
    if not callable(getattr(rule, "check", None)) or not callable(getattr(rule, "reads", None)):
        raise TrainspectError(f"`alert_rules`: {rule!r} is not a trainspect.alerts.Rule "
                              "(it needs check(ctx), and keys to read)")
    if getattr(rule, "level", None) not in ALERT_LEVELS:
        raise TrainspectError(f"`alert_rules`: rule {rule_id!r} has level "
                              f"{getattr(rule, 'level', None)!r}, expected one of {ALERT_LEVELS}")
    for attr, low in (("fire_after", 1), ("clear_after", 1), ("cooldown_steps", 0),
                      ("history", 1)):
        value = getattr(rule, attr, None)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise TrainspectError(f"`alert_rules`: rule {rule_id!r} has {attr}={value!r}, "
                                  f"expected an int >= {low}")
