"""The live dashboard: an ASGI app over the run store, its panels, SSE and the HTML report.

It reads runs only through `trainspect.store.reader` and never imports torch or the
probes, so it can start, stop and restart while a trainer writes. `serve(...)`
runs it (also from a background thread, for `trainspect demo --ui`);
`create_app(...)` gives the ASGI app; `write_report(...)` writes one self-contained
HTML file with the same views (and needs neither Starlette nor uvicorn).

The names are imported on first use, so `trainspect report` works without the
`ui` extra installed.
"""

from __future__ import annotations

from typing import Any

_WHERE = {
    "create_app": "trainspect.dashboard.app",
    "Server": "trainspect.dashboard.server",
    "serve": "trainspect.dashboard.server",
    "start": "trainspect.dashboard.server",
    "write_report": "trainspect.dashboard.report",
    "build_report": "trainspect.dashboard.report",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'trainspect.dashboard' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
