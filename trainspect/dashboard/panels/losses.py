"""Loss composition panel: each component raw, its weight, what it adds, and the sum check.

`loss/<name>/raw|weight|scaled`, `loss/total` and `loss/sum_gap` (|total - sum of
scaled parts| / |total|, a fraction). The table flags what the seeds' users hunted by hand: a
component with weight 0 that still adds to the total, a scaled value that is not
raw x weight, and a total that is not the sum of its parts.
"""

from __future__ import annotations

import math
import re

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

NAME = "losses"
TITLE = "Loss composition"
PARTS = ("raw", "weight", "scaled")
REL_TOL = 1e-3
_PART = re.compile(r"^loss/(.+)/(raw|weight|scaled)$")


def claims(key: str) -> bool:
    return _PART.match(key) is not None or key in ("loss/total", "loss/sum_gap")


def components(keys: list[str]) -> list[str]:
    return sorted({m.group(1) for k in keys if (m := _PART.match(k))})


def flags(raw: float | None, weight: float | None, scaled: float | None) -> list[str]:
    """What is wrong with one component's latest numbers (empty when consistent)."""
    out = []
    if weight == 0 and scaled not in (None, 0.0):
        out.append("weight is 0 but it still adds to the total")
    if None not in (raw, weight, scaled) and not math.isclose(
            raw * weight, scaled, rel_tol=REL_TOL, abs_tol=1e-12):
        out.append(f"scaled {scaled:.6g} is not raw x weight = {raw * weight:.6g}")
    return out


def _impl(view: RunView, buckets: int | None = 1000) -> Data:
    keys = view.keys()
    have = set(keys)
    names = components(keys)
    latest = view.latest_values()
    data = charts_data([
        chart("scaled", "Contribution to the total (scaled)", view,
              [f"loss/{n}/scaled" for n in names] + ["loss/total"], buckets, have=have),
        chart("raw", "Raw components", view, [f"loss/{n}/raw" for n in names], buckets,
              have=have),
        chart("weight", "Weights", view, [f"loss/{n}/weight" for n in names], buckets,
              have=have),
        chart("sum_gap", "|total - sum of scaled| / |total|", view, ["loss/sum_gap"], buckets,
              have=have),
    ])
    total = finite(latest.get("loss/total"))
    rows, problems = [], []
    for n in names:
        raw, weight, scaled = (finite(latest.get(f"loss/{n}/{p}")) for p in PARTS)
        share = scaled / total if scaled is not None and total else None
        found = flags(raw, weight, scaled)
        problems += [f"{n}: {f}" for f in found]
        rows.append([n, raw, weight, scaled, share, "; ".join(found)])
    gap = finite(latest.get("loss/sum_gap"))
    if gap is not None and abs(gap) > REL_TOL:  # loss/sum_gap is already relative to |total|
        problems.append(f"the total differs from the sum of its scaled parts by "
                        f"{gap:.2%} of the total")
    data["table"] = {"columns": ["component", "raw", "weight", "scaled", "share", "flags"],
                     "rows": rows}
    data["total"] = total
    data["problems"] = problems
    return data


def query(view: RunView, params: Params) -> Data:
    return _impl(view, buckets_param(params))


PANEL = Panel(NAME, TITLE, query, overlay=True, claims=claims)
