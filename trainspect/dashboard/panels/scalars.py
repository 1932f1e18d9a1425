"""Other metrics panel: every scalar no other panel shows (`lr`, your own keys), paged.

With hundreds of keys the page stays light: the key list is filtered by a search
string and charts come `page_size` at a time.
"""

from __future__ import annotations

from trainspect.dashboard.panels.base import (
    Data,
    Panel,
    Params,
    buckets_param,
    chart,
    charts_data,
    int_param,
    str_param,
)
from trainspect.store.reader import RunView

NAME = "scalars"
TITLE = "Other metrics"
PAGE_SIZE = 12


def unclaimed(keys: list[str]) -> list[str]:
    from trainspect.dashboard.panels import PANELS

    return [k for k in keys if not any(p.claims(k) for p in PANELS.values())]


def _impl(view: RunView, filter: str = "", page: int = 0, page_size: int = PAGE_SIZE,
          buckets: int | None = 1000) -> Data:
    keys = unclaimed(view.keys())
    words = filter.lower().split()
    chosen = [k for k in keys if all(w in k.lower() for w in words)]
    pages = max(1, -(-len(chosen) // page_size))
    page = min(page, pages - 1)
    shown = chosen[page * page_size:(page + 1) * page_size]
    have = set(shown)
    data = charts_data([chart(k, k, view, [k], buckets, have=have) for k in shown])
    data.update(keys=chosen, total=len(keys), page=page, pages=pages, filter=filter)
    data["empty"] = not keys
    return data


def query(view: RunView, params: Params) -> Data:
    return _impl(view, str_param(params, "filter"), int_param(params, "page", 0) or 0,
                 int_param(params, "page_size", PAGE_SIZE, 1, 100) or PAGE_SIZE,
                 buckets_param(params))


def variants(view: RunView) -> list[dict[str, str]]:
    pages = -(-len(unclaimed(view.keys())) // PAGE_SIZE)
    return [{}] + [{"page": str(p)} for p in range(1, min(pages, 10))]


PANEL = Panel(NAME, TITLE, query, overlay=True, variants=variants)
