"""Runs panel: every run with its status, step, headline numbers and config, searchable.

Unlike the other panels it reads many runs, not one, so its query takes the list
of run views. Search matches, case-insensitively, every word of `q` against the
run's id, project, name, status and config keys and values.
"""

from __future__ import annotations

from typing import Any

from trainspect.dashboard.panels.base import Data, finite
from trainspect.store.reader import RunView
from trainspect.summary import headline

NAME = "runs"
TITLE = "Runs"
MAX_CONFIG_ITEMS = 40
MAX_CONFIG_CHARS = 200


def run_ref(view: RunView) -> str:
    """The id the dashboard's URLs use for a run: `project/run_id`."""
    return f"{view.project}/{view.id}"


def describe(view: RunView) -> Data:
    """One run's row: identity, status, progress, headline numbers, config as text."""
    config = {str(k): _text(v) for k, v in list(view.config.items())[:MAX_CONFIG_ITEMS]}
    return {
        "ref": run_ref(view),
        "id": view.id,
        "project": view.project,
        "name": view.name,
        "status": view.status,
        "step": view.last_step(),
        "started_at": view.started_at,
        "ended_at": view.ended_at,
        "headline": {k: finite(v) for k, v in headline(view).items()},
        "config": config,
        "alerts": len(view.alerts()),
    }


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text[:MAX_CONFIG_CHARS]


def matches(row: Data, query: str) -> bool:
    words = query.lower().split()
    haystack = " ".join([row["id"], row["project"], row["name"], row["status"],
                         *(f"{k}={v}" for k, v in row["config"].items())]).lower()
    return all(w in haystack for w in words)


def _impl(views: list[RunView], q: str = "") -> Data:
    rows = [describe(v.refresh()) for v in views]
    if q.strip():
        rows = [r for r in rows if matches(r, q)]
    table = {
        "columns": ["ref", "name", "status", "step", "started_at"],
        "rows": [[r["ref"], r["name"], r["status"], r["step"], r["started_at"]] for r in rows],
    }
    return {"empty": not rows, "runs": rows, "table": table, "query": q}
