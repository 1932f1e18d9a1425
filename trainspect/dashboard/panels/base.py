"""What every panel is made of: a query over a RunView, its parameters, charts, export rows.

A panel module (TensorBoard-plugin style) holds an `_impl(view, ...)` function that
returns plain data and is tested without HTTP, and a `PANEL` that names it. The
HTTP route and the HTML report only parse parameters and call `PANEL.query`. The
view lives in `static/js/panels/<name>.js`, named alike.

Chart data has one shape everywhere: a chart is
`{"id", "title", "series": [{"key", "label", "points": [[step, min, max], ...]}]}`
where each point is a min/max bucket from `RunView.series(key, buckets=N)` (a
single point has min == max). Values that are not finite become None (a gap), as
JSON has no NaN; `nonfinite` counts them so a panel can say so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainspect.store.reader import RunView

Params = Mapping[str, str]
Data = dict[str, Any]

DEFAULT_BUCKETS = 1000  # min/max buckets per series: 2 points each, a few thousand per chart
MAX_BUCKETS = 5000


class ClientError(Exception):
    """A bad request from a client: carries its HTTP status code; the message is shown."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _no_variants(view: RunView) -> list[dict[str, str]]:
    return [{}]


@dataclass(frozen=True)
class Panel:
    """One dashboard panel: its name (URL, file and JS view), title and query."""

    name: str
    title: str
    query: Callable[[RunView, Params], Data]
    """Parses `params` (strings from the URL) and calls the module's `_impl`."""
    overlay: bool = False
    """Its charts can overlay several runs (compare)."""
    variants: Callable[[RunView], list[dict[str, str]]] = field(default=_no_variants)
    """Parameter sets the HTML report precomputes (step slider positions, streams)."""
    claims: Callable[[str], bool] = field(default=lambda key: False)
    """Whether a scalar key is shown by this panel (others go to "other metrics")."""
    tab: str = "training"
    """The dashboard tab it is on: "training" or "system"."""

    def meta(self) -> dict[str, Any]:
        """What the page needs to lay the panel out (the dashboard's and report's list)."""
        return {"name": self.name, "title": self.title, "overlay": self.overlay, "tab": self.tab}


# ---- parameters ------------------------------------------------------------------------

def int_param(params: Params, name: str, default: int | None, lo: int = 0,
              hi: int = 2**62) -> int | None:
    """An integer URL parameter in [lo, hi], or `default` when absent or empty."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ClientError(f"expected `{name}` to be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ClientError(f"expected `{name}` to be in [{lo}, {hi}], got {value}")
    return value


def buckets_param(params: Params, default: int = DEFAULT_BUCKETS) -> int | None:
    """Min/max buckets per series; "all" gives every point (exports)."""
    if params.get("buckets") == "all":
        return None
    value = int_param(params, "buckets", default, 1, MAX_BUCKETS)
    return default if value is None else value


def str_param(params: Params, name: str, default: str = "", limit: int = 200) -> str:
    raw = params.get(name)
    if raw is None:
        return default
    if len(raw) > limit:
        raise ClientError(f"expected `{name}` to be at most {limit} characters")
    return raw


# ---- values and charts -----------------------------------------------------------------

def finite(value: Any) -> float | None:
    """A float for JSON: None for NaN, inf and missing values."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def jsonable(value: Any) -> Any:
    """`value` with NaN and inf as None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def points(view: RunView, key: str, buckets: int | None) -> list[list]:
    """[[step, min, max], ...] of `key`: min/max buckets, or every point when None."""
    if buckets is None:
        return [[s, finite(v), finite(v)] for s, v in view.series(key)]
    return [[s, finite(lo), finite(hi)] for s, lo, hi in view.series(key, buckets=buckets)]


def series(view: RunView, key: str, buckets: int | None, label: str | None = None) -> Data:
    pts = points(view, key, buckets)
    return {"key": key, "label": label or key, "points": pts}


def chart(chart_id: str, title: str, view: RunView, keys: Iterable[str], buckets: int | None,
          labels: Mapping[str, str] | None = None, have: set[str] | None = None,
          **extra: Any) -> Data | None:
    """A chart of the present `keys` (None if none has data); `have` is view.keys()."""
    have = set(view.keys()) if have is None else have
    labels = labels or {}
    lines = [series(view, k, buckets, labels.get(k)) for k in keys if k in have]
    lines = [s for s in lines if s["points"]]
    if not lines:
        return None
    return {"id": chart_id, "title": title, "series": lines, **extra}


def charts_data(charts: Iterable[Data | None], **extra: Any) -> Data:
    kept = [c for c in charts if c is not None]
    return {"empty": not kept, "charts": kept, **extra}


def latest(view: RunView, keys: Iterable[str]) -> dict[str, float | None]:
    """The last value of each present key (None for NaN/inf, which the table shows as '-')."""
    values = view.latest_values()
    return {k: finite(values[k]) for k in keys if k in values}


def first_segment(key: str) -> str:
    return key.split("/", 1)[0]


# ---- export ----------------------------------------------------------------------------

def export_rows(data: Data) -> tuple[list[str], list[list[Any]]]:
    """A panel's data as one CSV table: its charts' points, else its `table`."""
    if data.get("charts"):
        header = ["chart", "series", "step", "min", "max"]
        rows = [[c["id"], s["key"], p[0], p[1], p[2]]
                for c in data["charts"] for s in c["series"] for p in s["points"]]
        return header, rows
    table = data.get("table")
    if table:
        return list(table["columns"]), [list(r) for r in table["rows"]]
    return ["empty"], []


def range_points(view: RunView, key: str, lo: int | None, hi: int | None,
                 buckets: int) -> list[list]:
    """`key`'s points with lo <= step <= hi as min/max buckets: a zoomed chart's detail."""
    import numpy as np

    from trainspect.store.chunks import downsample

    steps, vals = view.arrays(key)
    start = 0 if lo is None else int(np.searchsorted(steps, lo, "left"))
    stop = steps.size if hi is None else int(np.searchsorted(steps, hi, "right"))
    rows = downsample(steps[start:stop], vals[start:stop], buckets)
    return [[s, finite(a), finite(b)] for s, a, b in rows]
