"""Who may read the dashboard: loopback by default, a token when bound anywhere else.

On 127.0.0.1 (the default) there is no token, but the Host header must name the
loopback too, so a web page cannot reach the dashboard by DNS rebinding. Bound to
any other address, every request (pages, static files, API and the SSE stream)
must carry the token: as `?token=` (the printed URL; the answer then sets a
cookie so the page's own requests carry it), the cookie, or an
`Authorization: Bearer` header. Tokens are compared in constant time.
"""

from __future__ import annotations

import ipaddress
import secrets
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from trainspect.errors import TrainspectError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
COOKIE = "trainspect_token"

Scope = dict[str, Any]


def new_token() -> str:
    return secrets.token_urlsafe(24)


def check_token(token: str) -> str:
    """`token` if it can guard the dashboard, else one TrainspectError naming `--token`."""
    if not isinstance(token, str) or not token.strip():
        raise TrainspectError(
            f"`--token` is empty ({token!r}), which a blank cookie would satisfy: give a "
            "real token, or leave `--token` out to have one generated")
    if token != token.strip() or any(c in token for c in ";,\"\\") or not token.isprintable():
        raise TrainspectError("`--token` must be printable, without spaces at its ends, "
                              "';', ',', '\"' or '\\' (it travels in a cookie)")
    return token


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a Host header, without the port ("[::1]:7600" -> "::1")."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def cookie_name(scope: Scope) -> str:
    port = (scope.get("server") or (None, None))[1]
    return f"{COOKIE}_{port}" if port else COOKIE  # one per port: dashboards side by side


def presented_token(scope: Scope) -> tuple[str | None, bool]:
    """(token, came from the query string) from the query, a bearer header or the cookie."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0], True
    headers = {k.decode("latin-1").lower(): v.decode("latin-1")
               for k, v in scope.get("headers", [])}
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    cookies = SimpleCookie()
    try:
        cookies.load(headers.get("cookie", ""))
    except Exception:  # a malformed cookie header is no token, not a server error
        return None, False
    morsel = cookies.get(cookie_name(scope))
    return (morsel.value if morsel else None), False


class TokenGuard:
    """ASGI middleware: the token check (or, without a token, the loopback Host check)."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = None if token is None else check_token(token)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":  # the dashboard has none: refuse, never bypass
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        if self.token is None:
            headers = dict(scope.get("headers", []))
            host = host_name(headers.get(b"host", b"").decode("latin-1"))
            if not is_loopback(host):
                await _refuse(send, 403, "this dashboard answers only to localhost / 127.0.0.1")
                return
            await self.app(scope, receive, send)
            return
        given, from_query = presented_token(scope)
        if given is None or not secrets.compare_digest(given.encode(), self.token.encode()):
            await _refuse(send, 401, "a token is required: open the URL that `trainspect ui` "
                                     "printed (it ends in ?token=...)")
            return
        if not from_query:
            await self.app(scope, receive, send)
            return
        cookie = (f"{cookie_name(scope)}={self.token}; Path=/; HttpOnly; SameSite=Strict")

        async def send_with_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"set-cookie", cookie.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


async def _refuse(send: Any, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
