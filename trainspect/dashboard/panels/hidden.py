"""Hidden states panel: per-module activation mean, std, |max| and non-finite count.

`hidden/<module>/{mean,std,absmax,nonfinite}`. One chart per statistic overlays the
`MAX_SERIES` modules with the largest latest |max|; the table lists every module
and flags those with non-finite activations.
"""

from __future__ import annotations

import re

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

NAME = "hidden"
TITLE = "Hidden states"
STATS = ("mean", "std", "absmax", "nonfinite")
MAX_SERIES = 12
_KEY = re.compile(r"^hidden/(.+)/([^/]+)$")


def claims(key: str) -> bool:
    return key.startswith("hidden/")


def _impl(view: RunView, buckets: int | None = 1000) -> Data:
    keys = view.keys()
    have = set(keys)
    latest = view.latest_values()
    parsed = [(m.group(1), m.group(2)) for k in keys if (m := _KEY.match(k))]
    modules = sorted({mod for mod, _ in parsed})
    stats = [s for s in STATS if any(st == s for _, st in parsed)]
    stats += sorted({st for _, st in parsed} - set(STATS))

    def size(module: str) -> float:
        return finite(latest.get(f"hidden/{module}/absmax")) or 0.0

    shown = sorted(modules, key=lambda m: -size(m))[:MAX_SERIES]
    data = charts_data([
        chart(stat, f"{stat} (top {MAX_SERIES} modules by |max|)" if len(modules) > MAX_SERIES
              else stat, view, [f"hidden/{m}/{stat}" for m in shown], buckets,
              labels={f"hidden/{m}/{stat}": m for m in shown}, have=have)
        for stat in stats
    ])
    rows = [[m, *(finite(latest.get(f"hidden/{m}/{s}")) for s in stats)] for m in modules]
    data["table"] = {"columns": ["module", *stats], "rows": rows}
    if data["empty"]:
        data["reason"] = reasons.watched(view, "hidden-state statistics", "hidden/")
    data["nonfinite_modules"] = [m for m in modules
                                 if (finite(latest.get(f"hidden/{m}/nonfinite")) or 0.0) > 0]
    return data


def query(view: RunView, params: Params) -> Data:
    return _impl(view, buckets_param(params))


PANEL = Panel(NAME, TITLE, query, overlay=True, claims=claims)
