"""What an alert rule is: a plain object that looks at recent metrics and names a problem.

Write your own by subclassing `Rule`:

    class LossAboveTen(Rule):
        '''Fires when the loss exceeds 10 (warning); clears after 3 points below it.'''
        id = "loss_above_ten"
        keys = ("loss",)
        action = "Lower the learning rate."

        def check(self, ctx):
            if ctx.new["loss"] > 10:
                return Finding(f"loss is {ctx.new['loss']:.3g} at step {ctx.step}")
            return None

    run.alerts.add(LossAboveTen())          # or ts.init(..., alert_rules=[LossAboveTen()])

The engine calls `check(ctx)` at every step where a key matching `triggers`
(default: `keys`) got a new value, in step order, so a rule sees the same sequence
live and when `doctor` replays a stored run. It keeps history for every key that
matches `keys` (globs, `*` also matches `/`). The engine, not the rule, turns
findings into alerts: one alert when a problem appears, none while it persists,
one "cleared" alert when it has been absent for `clear_after` checks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import numpy as np

from trainspect.alerts.history import KeyHistory


@dataclass(frozen=True)
class Finding:
    """A problem a rule sees now: what, with the numbers, and (optionally) what to do."""

    message: str
    subject: str = ""  # which instance of the problem (a metric, a stream, a component)
    action: str | None = None  # defaults to the rule's `action`
    level: str | None = None  # defaults to the rule's `level`
    step: int | None = None  # defaults to the step being checked


class _Hold:
    """Returned by `check` when it has nothing new to say: alert states stay as they are."""

    def __repr__(self) -> str:
        return "HOLD"


HOLD = _Hold()

# What `check` may return:
#   None                      healthy: every active alert of this rule counts one quiet check
#   Finding / [Finding, ...]  these subjects have the problem; other active ones count quiet
#   {subject: Finding | None} only the subjects named were checked; None means healthy
#   HOLD                      no information at this step
CheckResult = None | Finding | Iterable[Finding] | Mapping[str, Finding | None] | _Hold


class Rule(ABC):
    """Base class of alert rules. Subclasses set the class attributes and `check`.

    Document every threshold in the subclass docstring: it is what `doctor` and a
    user reading an alert will look up.
    """

    id: str = "rule"
    level: str = "warning"  # info, warning or critical
    keys: tuple[str, ...] = ()  # glob patterns of the metrics this rule reads
    triggers: tuple[str, ...] | None = None  # patterns whose new points call check; None: keys
    history: int = 64  # points kept per key for this rule
    fire_after: int = 1  # consecutive checks with the problem before the alert fires
    clear_after: int = 3  # consecutive healthy checks before a fired alert clears
    cooldown_steps: int = 0  # after clearing, steps before the same subject may fire again
    # Alerts that already report this problem, by subject ("*": any subject): rule names
    # of other sources (probes, the eval: "grads.detached") or ids of other rules. While
    # one of them is fired and not cleared, this rule does not fire: one problem, one alert.
    covered_by: Mapping[str, tuple[str, ...]] = {}
    action: str = ""

    @abstractmethod
    def check(self, ctx: Context) -> CheckResult:
        """Look at `ctx` (this step's new values, the recent history) and report."""

    def cleared_message(self, subject: str, fired_step: int, ctx: Context) -> str:
        what = f"{self.id} ({subject})" if subject else self.id
        return (f"{what} cleared at step {ctx.step}: no longer seen for {self.clear_after} "
                f"checks (fired at step {fired_step})")

    def reads(self, key: str) -> bool:
        return any(fnmatchcase(key, p) for p in self.keys)

    def triggered_by(self, key: str) -> bool:
        patterns = self.keys if self.triggers is None else self.triggers
        return any(fnmatchcase(key, p) for p in patterns)


class Context:
    """What a rule sees at one step. One instance is reused; do not keep it."""

    def __init__(self, histories: dict[str, KeyHistory], config: Mapping[str, Any],
                 external: list[Any], checkpoints: dict[int, str]) -> None:
        self.step = 0
        self.new: dict[str, float] = {}  # keys with a point at this step -> value
        self.config = config  # the run's config (e.g. warmup_steps)
        self._histories = histories
        self._external = external
        self._checkpoints = checkpoints
        self._active: set[str] = set()
        self._matches: dict[str, list[str]] = {}  # pattern -> keys; emptied when keys appear
        self._first: dict[tuple[str, ...], str] = {}  # first_present's answers, likewise

    # ---- metrics ---------------------------------------------------------------------

    def history(self, key: str) -> KeyHistory | None:
        return self._histories.get(key)

    def has(self, key: str) -> bool:
        h = self._histories.get(key)
        return h is not None and len(h) > 0

    def last(self, key: str) -> float | None:
        h = self._histories.get(key)
        return None if h is None else h.last

    def tail(self, key: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        h = self._histories.get(key)
        if h is None:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        return h.tail(n)

    def values(self, key: str, n: int | None = None) -> np.ndarray:
        return self.tail(key, n)[1]

    def recent(self, key: str, n: int) -> list[float]:
        """The last `n` values of `key` as a list (cheap; for checks that run every step)."""
        h = self._histories.get(key)
        return [] if h is None else h.recent(n)

    def keys(self, pattern: str) -> list[str]:
        """Known keys matching the glob `pattern`, in the order they first appeared."""
        found = self._matches.get(pattern)
        if found is None:
            found = self._matches[pattern] = [k for k in self._histories
                                              if fnmatchcase(k, pattern)]
        return found

    def _keys_changed(self) -> None:
        self._matches.clear()
        self._first.clear()

    def first_present(self, keys: tuple[str, ...]) -> str | None:
        """The first of `keys` that has points (e.g. the run's main loss name). Cached until
        a new key appears: a key that has points keeps them (histories are never emptied)."""
        found = self._first.get(keys)
        if found is None:
            found = next((k for k in keys if self.has(k)), None)
            if found is not None:
                self._first[keys] = found
        return found

    # ---- alerts and checkpoints ----------------------------------------------------------

    def active(self, subject: str = "") -> bool:
        """Whether this rule's alert for `subject` is fired and not cleared (for hysteresis)."""
        return subject in self._active

    def alerts(self, *words: str, rule: str = "") -> list[Any]:
        """Recent alerts of other sources (probes, the eval, the user) up to this step whose
        rule starts with `rule` and whose rule or message contains any of `words` (no
        words: all), oldest first."""
        found = []
        for alert in self._external:
            if alert.step > self.step or alert.state == "cleared" or not alert.rule.startswith(
                    rule):
                continue
            text = f"{alert.rule} {alert.message}".lower()
            if not words or any(w.lower() in text for w in words):
                found.append(alert)
        return found

    def checkpoint(self, step: int | None) -> str | None:
        """The checkpoint name recorded for `step`, if any source named one."""
        return None if step is None else self._checkpoints.get(int(step))
