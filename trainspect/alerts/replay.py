"""Re-run the alert rules over a stored run: what a live engine would have raised.

The engine evaluates step by step whatever the batching, so feeding a stored run's
full series in one batch gives the same alerts as the live run would have got
(minus anything that depended on wall-clock time, which no built-in rule does).
Alerts stored by other sources (probes, the user) are handed to the rules as they
would have been live, so e.g. the non-finite rule can quote the hidden-state probe.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from trainspect.alerts.engine import RULE_FAILED, AlertEngine
from trainspect.alerts.rule import Rule
from trainspect.alerts.rules import BUILTIN
from trainspect.records import Alert
from trainspect.store.reader import RunView

BUILTIN_IDS = frozenset(cls.id for cls in BUILTIN) | {RULE_FAILED}


def is_builtin(rule_name: str) -> bool:
    """Whether a stored alert's rule ('loss_spike' or 'nonfinite:loss') is a built-in rule."""
    return rule_name.split(":", 1)[0] in BUILTIN_IDS


def as_alert(row: dict) -> Alert:
    return Alert(step=int(row["step"]), rule=str(row["rule"]), level=str(row["level"]),
                 message=str(row["message"]), action=str(row.get("action") or ""),
                 state=row.get("state") or "fired", wall_time=float(row.get("wall_time") or 0))


def replay(view: RunView, rules: Iterable[Rule] | None = None) -> list[Alert]:
    """The alerts `rules` (default: the built-in set) raise over the stored series of `view`."""
    engine = AlertEngine(rules, config=view.config, console=False)
    columns = {}
    for key in view.keys():
        if engine.tracks(key):
            steps, values = view.arrays(key)
            columns[key] = [(steps, values, np.zeros(steps.size))]
    external = [as_alert(a) for a in view.alerts() if not is_builtin(a["rule"])]
    return engine.observe(columns, external)
