"""Gradients panel: global norm, share of zero gradients, and per-layer norms.

`grad/norm`, `grad/zero_frac` and `grad/<layer>/norm`. With many layers the chart
overlays the `MAX_SERIES` largest by latest norm; the table lists every layer.
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

NAME = "gradients"
TITLE = "Gradients"
MAX_SERIES = 12
_LAYER = re.compile(r"^grad/(.+)/norm$")


def claims(key: str) -> bool:
    return key.startswith("grad/")


def _impl(view: RunView, buckets: int | None = 1000) -> Data:
    keys = view.keys()
    have = set(keys)
    latest = view.latest_values()
    layers = [m.group(1) for k in keys if (m := _LAYER.match(k))]
    ranked = sorted(layers, key=lambda n: -(finite(latest.get(f"grad/{n}/norm")) or 0.0))
    other = [k for k in keys if k.startswith("grad/") and k not in ("grad/norm", "grad/zero_frac")
             and not _LAYER.match(k)]
    data = charts_data([
        chart("norm", "Gradient norm (global)", view, ["grad/norm"], buckets, have=have),
        chart("zero_frac", "Share of zero gradients", view, ["grad/zero_frac"], buckets,
              have=have),
        chart("layers", f"Per-layer norm (largest {MAX_SERIES})", view,
              [f"grad/{n}/norm" for n in ranked[:MAX_SERIES]], buckets,
              labels={f"grad/{n}/norm": n for n in ranked}, have=have),
        chart("other", "Other gradient metrics", view, other, buckets, have=have),
    ])
    if data["empty"]:
        data["reason"] = reasons.watched(view, "gradient statistics", "grad/")
    data["table"] = {"columns": ["layer", "norm"],
                     "rows": [[n, finite(latest.get(f"grad/{n}/norm"))] for n in ranked]}
    return data


def query(view: RunView, params: Params) -> Data:
    return _impl(view, buckets_param(params))


PANEL = Panel(NAME, TITLE, query, overlay=True, claims=claims)
