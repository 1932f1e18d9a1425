"""Fixed eval panel: exact match, CE and ECE on the fixed set, the best checkpoint, the trend.

The trend compares the best EM of the last `window` evals with the best before
them: higher by more than `tol` is improving, lower by more than `tol` is
regressing, else a plateau ("flat for 3 evals"). The best checkpoint comes from
the run's metadata when the eval recorded one, else from the newest alert that
names a checkpoint, else from the step with the highest EM.
"""

from __future__ import annotations

import re
from typing import Any

from trainspect.dashboard.panels import reasons
from trainspect.dashboard.panels.base import (
    Data,
    Panel,
    Params,
    buckets_param,
    chart,
    charts_data,
    finite,
)
from trainspect.store.reader import RunView

NAME = "fixed_eval"
TITLE = "Fixed eval"
KEYS = ("eval/em", "eval/ce", "eval/ece")
_CHECKPOINT = re.compile(r"checkpoint[-_/.\w]*")


def claims(key: str) -> bool:
    return key in KEYS


def trend(values: list[float], window: int = 3, tol: float = 0.005) -> str:
    """improving / plateau / regressing, or "too few evals" (needs window + 1)."""
    values = [v for v in values if finite(v) is not None]
    if len(values) <= window:
        return "too few evals"
    before, recent = max(values[:-window]), max(values[-window:])
    if recent > before + tol:
        return "improving"
    if recent < before - tol:
        return "regressing"
    return "plateau"


def best_checkpoint(view: RunView, em: list[tuple[int, float]]) -> Data | None:
    meta: dict[str, Any] = view.meta
    named = meta.get("best_checkpoint")
    if isinstance(named, dict):
        return {"checkpoint": str(named.get("checkpoint") or named.get("name") or ""),
                "step": named.get("step"), "em": finite(named.get("em")), "source": "meta"}
    if isinstance(named, str) and named:
        return {"checkpoint": named, "step": None, "em": None, "source": "meta"}
    for alert in reversed(view.alerts()):
        found = _CHECKPOINT.search(f"{alert['message']} {alert['action']}")
        if found:
            return {"checkpoint": found.group(0), "step": alert["step"], "em": None,
                    "source": "alert"}
    scored = [(v, s) for s, v in em if finite(v) is not None]
    if not scored:
        return None
    value, step = max(scored, key=lambda vs: (vs[0], -vs[1]))  # earliest of equal bests
    checkpoints = meta.get("checkpoints") or {}
    name = checkpoints.get(str(step)) if isinstance(checkpoints, dict) else None
    return {"checkpoint": str(name) if name else f"step {step}", "step": step,
            "em": value, "source": "eval/em"}


def _impl(view: RunView, buckets: int | None = 1000, window: int = 3) -> Data:
    have = set(view.keys())
    em = view.series("eval/em") if "eval/em" in have else []
    latest = view.latest_values()
    data = charts_data([
        chart("em", "Exact match", view, ["eval/em"], buckets, have=have),
        chart("ce", "Cross-entropy", view, ["eval/ce"], buckets, have=have),
        chart("ece", "Expected calibration error", view, ["eval/ece"], buckets, have=have),
    ])
    data["latest"] = {k: finite(latest[k]) for k in KEYS if k in latest}
    data["evals"] = len(em)
    data["trend"] = trend([v for _, v in em], window) if em else None
    data["best"] = best_checkpoint(view, em) if em or "best_checkpoint" in view.meta else None
    if data["empty"]:
        data["reason"] = reasons.fixed_eval(view)
    return data


def query(view: RunView, params: Params) -> Data:
    return _impl(view, buckets_param(params))


PANEL = Panel(NAME, TITLE, query, overlay=True, claims=claims)
