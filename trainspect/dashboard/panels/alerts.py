"""Alerts panel: what fired (or cleared), when, with numbers, and what to do about it.

Newest first, optionally one level only. Messages and actions are shown as text.
"""

from __future__ import annotations

from trainspect.dashboard.panels.base import ClientError, Data, Panel, Params, str_param
from trainspect.records import ALERT_LEVELS
from trainspect.store.reader import RunView

NAME = "alerts"
TITLE = "Alerts"
MAX_ALERTS = 500


def _impl(view: RunView, level: str = "") -> Data:
    if level and level not in ALERT_LEVELS:
        raise ClientError(f"expected `level` to be one of {ALERT_LEVELS}, got {level!r}")
    every = view.alerts()
    counts = {lv: sum(1 for a in every if a["level"] == lv) for lv in ALERT_LEVELS}
    chosen = [a for a in every if not level or a["level"] == level][::-1][:MAX_ALERTS]
    alerts = [{k: a[k] for k in ("step", "rule", "level", "message", "action", "state",
                                 "wall_time")} for a in chosen]
    columns = ["step", "level", "rule", "state", "message", "action"]
    return {"empty": not every, "alerts": alerts, "counts": counts, "level": level,
            "table": {"columns": columns, "rows": [[a[c] for c in columns] for a in alerts]}}


def query(view: RunView, params: Params) -> Data:
    return _impl(view, str_param(params, "level"))


PANEL = Panel(NAME, TITLE, query)
