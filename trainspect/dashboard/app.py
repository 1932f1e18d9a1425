"""The ASGI app: routes that parse a request and call a panel's query, plus the static page.

Routes never compute: they resolve the run through the catalog (names checked),
parse parameters, and call `PANEL.query` or the runs list. Errors meant for the
client (a bad parameter, no such run) carry their status and message; anything
else is logged and answered with an opaque 500.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from trainspect.dashboard import sse
from trainspect.dashboard.auth import TokenGuard
from trainspect.dashboard.catalog import Catalog
from trainspect.dashboard.panels import PANELS, runs
from trainspect.dashboard.panels.base import (
    ClientError,
    buckets_param,
    export_rows,
    int_param,
    jsonable,
    range_points,
    str_param,
)

log = logging.getLogger("trainspect.dashboard")
STATIC = Path(__file__).parent / "static"
MAX_FOLLOWED_RUNS = 64

# Scripts only from this origin: even if data ever reached the DOM as markup, no
# inline script or event handler in it could run.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'; form-action 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def dump(data: Any) -> str:
    try:
        return json.dumps(data, allow_nan=False, separators=(",", ":"), default=str)
    except ValueError:
        return json.dumps(jsonable(data), allow_nan=False, separators=(",", ":"), default=str)


def ok(data: Any, status: int = 200) -> Response:
    return Response(dump(data), status, media_type="application/json",
                    headers={"cache-control": "no-store"})


def api(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """Client errors with their status and message; anything else an opaque, logged 500."""

    def wrapped(request: Request) -> Response:
        try:
            return handler(request)
        except ClientError as err:
            return ok({"error": str(err)}, err.status)
        except Exception as err:  # opaque 500 to the client, the traceback to the log
            log.exception("trainspect: dashboard request %s failed: %s", request.url.path, err)
            return ok({"error": "internal error (see the server log)"}, 500)

    return wrapped


def _catalog(request: Request) -> Catalog:
    return request.app.state.catalog


def _view(request: Request):
    p = request.path_params
    return _catalog(request).get(p["project"], p["run"])


def _panel(request: Request):
    name = request.path_params["panel"]
    if name not in PANELS:
        raise ClientError(f"no panel {name!r}; panels: {sorted(PANELS)}", 404)
    return PANELS[name]


# ---- routes ------------------------------------------------------------------------------

def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})


@api
def panel_list(request: Request) -> Response:
    return ok([p.meta() for p in PANELS.values()])


@api
def run_list(request: Request) -> Response:
    q = str_param(request.query_params, "q")
    return ok(runs._impl(_catalog(request).runs(), q))


@api
def resolve_run(request: Request) -> Response:
    """The run a link names (`project/id`, a bare id, a unique suffix or a name), as the
    page addresses it: `{"ref": "project/id", "id", "project", "name"}`."""
    ref = str_param(request.query_params, "run", limit=300)
    if not ref:
        raise ClientError("expected `run` to name a run (project/id, id, suffix or name)")
    view = _catalog(request).ref(ref)
    return ok({"ref": runs.run_ref(view), "id": view.id, "project": view.project,
               "name": view.name})


@api
def panel_data(request: Request) -> Response:
    panel, view = _panel(request), _view(request)
    return ok(panel.query(view, request.query_params))


@api
def panel_export(request: Request) -> Response:
    panel, view = _panel(request), _view(request)
    params = dict(request.query_params)
    fmt = params.pop("format", "json")
    if fmt not in ("csv", "json"):
        raise ClientError(f"expected `format` to be csv or json, got {fmt!r}")
    params.setdefault("buckets", "all")  # exports are at full resolution
    data = panel.query(view, params)
    name = f"{view.project}_{view.id}_{panel.name}.{fmt}"
    headers = {"content-disposition": f'attachment; filename="{name}"',
               "cache-control": "no-store"}
    if fmt == "json":
        return Response(dump(data), media_type="application/json", headers=headers)
    return Response(to_csv(*export_rows(data)), media_type="text/csv; charset=utf-8",
                    headers=headers)


def to_csv(header: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return out.getvalue()


@api
def series_range(request: Request) -> Response:
    view, q = _view(request), request.query_params
    key = str_param(q, "key", limit=500)
    if key not in view.keys():
        raise ClientError(f"no metric {key!r} in this run", 404)
    buckets = buckets_param(q) or 1000
    lo, hi = int_param(q, "lo", None, -(2**62)), int_param(q, "hi", None, -(2**62))
    return ok({"key": key, "points": range_points(view, key, lo, hi, buckets)})


def events(request: Request) -> Response:
    try:
        refs = request.query_params.getlist("run")[:MAX_FOLLOWED_RUNS]
        if not refs:
            raise ClientError("expected at least one `run=project/run_id`")
        cursors = sse.decode_cursors(request.query_params.get("cursor"))
        cursors.update(sse.decode_cursors(request.headers.get("last-event-id")))
        catalog = _catalog(request)
        followers = [sse.Follower(ref, catalog.ref(ref), cursors.get(ref)) for ref in refs]
    except ClientError as err:
        return ok({"error": str(err)}, err.status)
    stream = sse.stream(followers, request.is_disconnected, request.app.state.stop,
                        request.app.state.poll_s)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})


# ---- the app -----------------------------------------------------------------------------

class SecurityHeaders:
    """Adds the CSP and friends to every answer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(dir: str | Path | None = None, token: str | None = None,
               poll_s: float = sse.POLL_S) -> Any:
    """The dashboard as an ASGI app over the runs directory `dir`.

    With `token`, every request must present it (see `auth`); without, only
    requests addressed to the loopback are answered.
    """
    catalog = Catalog(None if dir is None else str(dir))
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        stop.set()
        catalog.close()

    project_run = "/api/runs/{project}/{run}"
    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/panels", panel_list),
            Route("/api/runs", run_list),
            Route("/api/resolve", resolve_run),
            Route(project_run + "/panels/{panel}", panel_data),
            Route(project_run + "/export/{panel}", panel_export),
            Route(project_run + "/series", series_range),
            Route("/api/events", events),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.catalog = catalog
    app.state.stop = stop
    app.state.poll_s = poll_s
    guarded = TokenGuard(SecurityHeaders(app), token)
    guarded.state = app.state  # catalog, stop (the server sets it to end SSE streams)
    return guarded
