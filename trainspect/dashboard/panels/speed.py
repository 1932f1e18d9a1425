"""Throughput and memory panel: `speed/*` and `mem/*`, one chart each, units in the names."""

from __future__ import annotations

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

NAME = "speed"
TITLE = "Throughput and memory"
FIRST = ("speed/tokens_per_s", "speed/supervised_tokens_per_s", "speed/step_s", "speed/mfu",
         "mem/peak_gb")


def claims(key: str) -> bool:
    return key.startswith(("speed/", "mem/"))


def _impl(view: RunView, buckets: int | None = 1000) -> Data:
    keys = [k for k in view.keys() if claims(k)]
    ordered = [k for k in FIRST if k in keys] + [k for k in keys if k not in FIRST]
    have = set(keys)
    data = charts_data([chart(k, k, view, [k], buckets, have=have) for k in ordered])
    latest = view.latest_values()
    data["latest"] = {k: finite(latest.get(k)) for k in ordered}
    return data


def query(view: RunView, params: Params) -> Data:
    return _impl(view, buckets_param(params))


PANEL = Panel(NAME, TITLE, query, overlay=True, claims=claims)
