"""Doctor panel: the diagnosis and recommended actions of `trainspect.alerts.doctor`.

The doctor is optional here: when the module or its `diagnose(view) -> dict` is
missing, the panel says "doctor not available"; when it fails on a run, the panel
shows the error and the dashboard carries on.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import time
from typing import Any

from trainspect.dashboard.panels.base import Data, Panel, Params
from trainspect.store.reader import RunView

NAME = "doctor"
TITLE = "Doctor"
MODULE = "trainspect.alerts.doctor"
log = logging.getLogger("trainspect.dashboard")
MIN_INTERVAL_S = 30.0  # a running run is re-diagnosed at most this often
MAX_CACHED = 64


class DiagnosisCache:
    """The last diagnosis per run file. A diagnosis reads whole series (seconds on a
    million points), so it is recomputed only when the run changed, and for a run still
    writing at most every MIN_INTERVAL_S."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple, float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, view: RunView, compute: Any) -> Any:
        state = (view.last_step(), len(view.alerts()), view.status)
        path = str(view.path)
        with self._lock:
            entry = self._entries.get(path)
        now = time.monotonic()
        if entry is not None and (entry[0] == state or (
                state[2] == "running" and now - entry[1] < MIN_INTERVAL_S)):
            return entry[2]
        result = compute(view)
        with self._lock:
            if len(self._entries) >= MAX_CACHED:
                self._entries.pop(next(iter(self._entries)))
            self._entries[path] = (state, now, result)
        return result


CACHE = DiagnosisCache()


def _load() -> Any:
    try:
        module = importlib.import_module(MODULE)
    except ImportError as err:
        if err.name is not None and MODULE.startswith(err.name):
            return None  # not installed: the doctor is optional
        raise
    return getattr(module, "diagnose", None)


def plain(value: Any, depth: int = 0) -> Any:
    """The diagnosis as JSON-safe values: text for anything unusual, None for NaN."""
    if depth > 8:
        return str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    return str(value)


def _impl(view: RunView) -> Data:
    try:
        diagnose = _load()
    except Exception as err:  # a doctor that fails to import must not break the page
        log.warning("trainspect: cannot import %s: %s", MODULE, err)
        return {"empty": True, "available": False,
                "message": f"doctor not available ({type(err).__name__}: {err})"}
    if diagnose is None:
        return {"empty": True, "available": False, "message": "doctor not available"}
    try:
        result = CACHE.get(view, diagnose)
    except Exception as err:
        log.warning("trainspect: the doctor failed on %s", view.path, exc_info=err)
        return {"empty": True, "available": True,
                "message": f"the doctor failed on this run: {type(err).__name__}: {err}"}
    return {"empty": not result, "available": True, "diagnosis": plain(result)}


def query(view: RunView, params: Params) -> Data:
    return _impl(view)


PANEL = Panel(NAME, TITLE, query)
