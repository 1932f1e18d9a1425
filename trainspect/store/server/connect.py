"""Store URLs and connections to the team store (psycopg 3, imported only here).

A store URL is a libpq URL, `postgresql://user[:password]@host[:port]/database`
(also `postgres://`); a password may instead come from `~/.pgpass` or
$PGPASSWORD, as for `psql`. Messages show the URL without its password.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from trainspect.errors import TrainspectError

ENV_STORE = "TRAINSPECT_STORE"
_SCHEMES = ("postgresql://", "postgres://")
CONNECT_TIMEOUT_S = 5  # a server that does not answer must not hold anyone long
# A sync statement (a large COPY) may take a while; one that takes this long is stuck.
SYNC_STATEMENT_TIMEOUT_MS = 120_000
READ_STATEMENT_TIMEOUT_MS = 60_000


def is_store_url(value: object) -> bool:
    """True for a `postgresql://` or `postgres://` URL (a team store), else False."""
    return isinstance(value, str) and value.lower().startswith(_SCHEMES)


def store_url(value: str | None) -> str | None:
    """`value`, else $TRAINSPECT_STORE, else None; an error naming `store` if malformed."""
    url = value if value is not None else os.environ.get(ENV_STORE) or None
    if url is None:
        return None
    if not is_store_url(url):
        source = "`store`" if value is not None else f"${ENV_STORE}"
        raise TrainspectError(
            f"expected {source} to be a postgresql://user@host:port/database URL, "
            f"got {redact(str(url))!r}")
    return url


def redact(url: str) -> str:
    """The URL with its password (if any) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r":[^:@/]*@", ":***@", url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def psycopg_module() -> Any:
    try:
        import psycopg
    except ImportError as err:
        raise TrainspectError(
            "the team store needs psycopg 3: pip install 'trainspect[team]'") from err
    return psycopg


def connect(url: str, purpose: str, *, statement_timeout_ms: int = READ_STATEMENT_TIMEOUT_MS,
            autocommit: bool = True) -> Any:
    """A connection with a short connect timeout, TCP keepalives and a statement timeout.

    Keepalives let a connection notice a server that vanished (a killed host, a
    dropped network) in about 30 s instead of the kernel's two hours.
    """
    psycopg = psycopg_module()
    from trainspect.store.server.arrays import register_numpy

    try:
        conn = psycopg.connect(
            url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S,
            application_name=f"trainspect-{purpose}", keepalives=1, keepalives_idle=10,
            keepalives_interval=5, keepalives_count=3,
            options=f"-c statement_timeout={int(statement_timeout_ms)}",
        )
    except psycopg.Error as err:
        raise TrainspectError(f"cannot connect to the team store {redact(url)}: "
                              f"{_first_line(err)}") from err
    register_numpy(conn)
    return conn


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def describe_error(err: BaseException) -> str:
    """One line for a log message or an alert: the error's class and first line."""
    return f"{type(err).__name__}: {_first_line(err)}"
