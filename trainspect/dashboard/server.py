"""Running the dashboard: uvicorn on a socket bound here, in this thread or a background one.

`serve(dir, host, port)` blocks until stopped (the `trainspect ui` command, or a
thread of its own); `start(...)` runs it in a daemon thread and returns a `Server`
with its URL and `stop()` (tests, `trainspect demo --ui`). Bound to the loopback
it needs no token; bound anywhere else a token is generated unless one is given,
and the URL carries it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainspect.dashboard.auth import check_token, is_loopback, new_token
from trainspect.errors import TrainspectError

log = logging.getLogger("trainspect.dashboard")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7600
START_TIMEOUT_S = 15.0


def _uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError as err:
        raise TrainspectError(
            "the dashboard needs starlette and uvicorn: pip install 'trainspect[ui]'") from err
    return uvicorn


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        raise TrainspectError(f"cannot listen on `--host` {host} `--port` {port}: {err}") from err
    sock.set_inheritable(True)
    return sock


def resolve_token(host: str, token: str | None) -> str | None:
    """The token to require: the one given, else a new one unless bound to the loopback.

    An empty or blank token (`--token "$UNSET"`) is refused: a blank cookie would
    satisfy it.
    """
    if token is not None:
        check_token(token)
        return token
    return None if is_loopback(host) else new_token()


def url_for(host: str, port: int, token: str | None) -> str:
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


@dataclass
class Server:
    """A dashboard being served: where, with which token, and how to stop it."""

    url: str
    host: str
    port: int
    token: str | None
    _server: Any = field(repr=False)
    _app: Any = field(repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def wait(self, poll_s: float = 0.5) -> None:
        """Block until the server stops (KeyboardInterrupt passes through)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(poll_s)

    def stop(self, timeout: float = 10.0) -> None:
        """End the SSE streams, then the server; waits for its thread."""
        self._app.state.stop.set()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)


def _prepare(dir: str | Path | None, host: str, port: int, token: str | None,
             log_level: str, poll_s: float | None) -> tuple[Server, socket.socket]:
    uvicorn = _uvicorn()
    from trainspect.dashboard.app import create_app
    from trainspect.dashboard.sse import POLL_S

    token = resolve_token(host, token)
    app = create_app(dir, token=token, poll_s=POLL_S if poll_s is None else poll_s)
    sock = _bind(host, port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                            http="h11", ws="none", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    return Server(url_for(host, port, token), host, port, token, server, app), sock


def serve(dir: str | Path | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          token: str | None = None, log_level: str = "warning",
          poll_s: float | None = None) -> None:
    """Serve the dashboard for the runs under `dir` until interrupted (blocks).

    Safe to call in a background thread (uvicorn installs no signal handlers
    there). Use `start` to get the URL and a handle instead.
    """
    handle, sock = _prepare(dir, host, port, token, log_level, poll_s)
    log.info("trainspect: dashboard at %s", handle.url)
    try:
        handle._server.run(sockets=[sock])
    finally:
        handle._app.state.stop.set()
        sock.close()


def start(dir: str | Path | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          token: str | None = None, log_level: str = "warning",
          poll_s: float | None = None) -> Server:
    """Serve in a daemon thread; returns once the server answers. `port=0` picks a free one."""
    handle, sock = _prepare(dir, host, port, token, log_level, poll_s)

    def run() -> None:
        try:
            handle._server.run(sockets=[sock])
        except Exception as err:
            log.exception("trainspect: the dashboard server stopped with an error: %s", err)
        finally:
            sock.close()

    handle._thread = threading.Thread(target=run, name="trainspect-dashboard", daemon=True)
    handle._thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not handle._server.started:
        if not handle._thread.is_alive() or time.monotonic() > deadline:
            handle.stop(1.0)
            raise TrainspectError(f"the dashboard did not start on {host}:{handle.port}")
        time.sleep(0.02)
    return handle
