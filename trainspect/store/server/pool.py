"""A few read connections to the team store, shared by a reader's views and threads.

The dashboard answers requests on several threads; each query borrows a
connection, so threads do not queue behind one socket. A connection that broke
(the server restarted) is dropped and the query is tried once more on a fresh
one, so a reader outlives a server restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from trainspect.errors import TrainspectError
from trainspect.store.server.connect import connect, describe_error, psycopg_module, redact
from trainspect.store.server.schema import check_readable

log = logging.getLogger("trainspect.store.server")
T = TypeVar("T")
MAX_CONNECTIONS = 4


class Pool:
    """Up to `size` autocommit connections to `url`, checked for the schema on first use."""

    def __init__(self, url: str, size: int = MAX_CONNECTIONS) -> None:
        self.url = url
        self.where = redact(url)
        self.size = size
        self._idle: list[Any] = []
        self._open = 0
        self._closed = False
        self._cond = threading.Condition()
        self.run(lambda conn: check_readable(conn, self.where))

    def _take(self) -> Any:
        with self._cond:
            while True:
                if self._closed:
                    raise TrainspectError(f"the reader of {self.where} was closed")
                if self._idle:
                    return self._idle.pop()
                if self._open < self.size:
                    self._open += 1
                    break
                self._cond.wait()
        try:
            return connect(self.url, "reader")
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _give(self, conn: Any, broken: bool) -> None:
        with self._cond:
            if broken or self._closed or conn.closed:
                self._open -= 1
                _close_quietly(conn)
            else:
                self._idle.append(conn)
            self._cond.notify()

    def run(self, query: Callable[[Any], T]) -> T:
        """`query(conn)` on a pooled connection; retried once if the connection broke."""
        psycopg = psycopg_module()
        retried = False
        while True:
            conn = self._take()
            try:
                result = query(conn)
            except psycopg.OperationalError as err:
                self._give(conn, broken=True)
                if retried:
                    raise TrainspectError(f"the team store {self.where} did not answer: "
                                          f"{describe_error(err)}") from err
                retried = True
                log.info("trainspect: reconnecting to %s after %s", self.where,
                         describe_error(err))
                continue
            except BaseException:
                self._give(conn, broken=conn.closed)
                raise
            self._give(conn, broken=False)
            return result

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            _close_quietly(conn)


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception as err:  # a broken connection may fail to close in any way
        log.debug("trainspect: closing a store connection failed: %s", err)
