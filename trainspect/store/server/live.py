"""The live sync: a run's spool streamed to the team store by a thread of its own.

The training thread never touches it: the run's writer commits to the local
file as always, and this thread (its own read-only handle on the file, its own
server connection) pushes what is new every `interval_s`. When the server is
down, slow or restarted, pushes fail and are retried with a growing pause; the
spool keeps everything meanwhile. Once the sync has been behind for
`lag_alert_s`, one alert says how far (rows, points, seconds, the error); when it
catches up, the alert is cleared.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainspect.records import Alert
from trainspect.store.server.connect import describe_error, redact
from trainspect.store.server.sync import SpoolSync

log = logging.getLogger("trainspect.store.server")

INTERVAL_S = 1.0  # a push per second while the run writes
MAX_BACKOFF_S = 30.0  # the longest pause between attempts while the server is unreachable
LAG_ALERT_S = 60.0  # behind this long: alert once (and clear it on catching up)
FINAL_SYNC_S = 15.0  # what `finish()` gives the sync to send the rest
LAST_TRY_S = 2.0  # after a drain that timed out: one more short try when closing


class LiveSync:
    """Pushes one run's spool to one store until closed; never raises into its caller."""

    def __init__(self, path: Path, url: str, *, emit: Callable[[Alert], None] | None = None,
                 step: Callable[[], int] = lambda: 0, interval_s: float | None = None,
                 lag_alert_s: float | None = None, max_backoff_s: float | None = None) -> None:
        self.path = Path(path)
        self.url = url
        self.where = redact(url)
        self.interval_s = INTERVAL_S if interval_s is None else interval_s
        self.lag_alert_s = LAG_ALERT_S if lag_alert_s is None else lag_alert_s
        self.max_backoff_s = MAX_BACKOFF_S if max_backoff_s is None else max_backoff_s
        self._emit = emit
        self._step = step
        self._syncer = SpoolSync(self.path, url, purpose="live")
        self.synced_seq = 0  # the spool's cursor on the server, as of the last push
        self.newest_seq = 0  # the spool's newest seq, as of the last push
        self.errors = 0
        self.last_error: str | None = None
        self._caught_up_at = time.monotonic()
        self._alerted = False
        self._logged: set[str] = set()
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._stop = threading.Event()
        self._deadline: float | None = None
        self._drained: bool | None = None
        self._thread = threading.Thread(target=self._loop, name="trainspect-sync", daemon=True)
        self._thread.start()

    # ---- the caller's side ---------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def points(self) -> int:
        """Points pushed by this sync so far."""
        return self._syncer.points

    def wait(self, timeout: float = 30.0) -> bool:
        """Block until the server holds everything in the spool as of now; False on timeout."""
        target = self._local_newest()
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._progress:
            while self.synced_seq < target or self.synced_seq < self.newest_seq:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._wake.set()
                self._progress.wait(min(left, 0.2))
        return True

    def drain(self, writer: Any, timeout: float | None = None) -> bool:
        """At the run's end, before its writer closes: commit, then send, for at most
        `timeout` s; alerts raised meanwhile (caught up) still reach the spool."""
        timeout = FINAL_SYNC_S if timeout is None else timeout
        started = time.monotonic()
        writer.flush(timeout)
        self._drained = self.wait(max(0.0, timeout - (time.monotonic() - started)))
        return self._drained

    def close(self, timeout: float | None = None) -> bool:
        """Send what is left (for at most `timeout` s), then stop; True if all was sent.

        After a `drain` that timed out (the server is away), only a short last try.
        """
        if timeout is None:
            timeout = FINAL_SYNC_S if self._drained is not False else LAST_TRY_S
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout + 5.0)
        done = self.synced_seq >= self._local_newest()
        if not done:
            log.warning(
                "trainspect: the team store %s did not receive all of %s before the run ended "
                "(last error: %s). Nothing is lost: the file keeps it; send it with "
                "`trainspect sync %s --to %s`.", self.where, self.path, self.last_error or "none",
                self.path.parent.parent, self.where)
        return done

    # ---- the sync thread -----------------------------------------------------------------

    def _loop(self) -> None:
        pause = self.interval_s
        try:
            while True:
                self._wake.wait(pause)
                self._wake.clear()
                stopping = self._stop.is_set()
                ok = self._round(stopping)
                pause = self.interval_s if ok else min(max(pause * 2, 1.0), self.max_backoff_s)
                if stopping and (ok or time.monotonic() >= (self._deadline or 0.0)):
                    return
                if stopping:  # retry until the deadline, not after it
                    pause = min(pause, max(0.05, (self._deadline or 0.0) - time.monotonic()))
        finally:
            self._syncer.close()
            with self._progress:
                self._progress.notify_all()

    def _round(self, final: bool) -> bool:
        """Push until caught up; True when the server holds all of the spool."""
        try:
            while True:
                pushed = self._syncer.push()
                with self._progress:
                    self.synced_seq, self.newest_seq = pushed.synced_seq, pushed.newest_seq
                    self._progress.notify_all()
                if pushed.caught_up:
                    break
                self._check_lag()  # pushing, but a backlog this large takes a while
                if final and time.monotonic() >= (self._deadline or 0.0):
                    return False
        except Exception as err:  # the server or the file failed: keep the spool, retry later
            self._failed(err)
            return False
        self._caught_up()
        return True

    def _failed(self, err: BaseException) -> None:
        self._syncer.drop_server()
        self.errors += 1
        self.last_error = describe_error(err)
        if self.last_error not in self._logged:
            self._logged.add(self.last_error)
            log.warning("trainspect: cannot sync %s to the team store %s (%s); training goes "
                        "on, the file keeps everything and the sync retries.", self.path.name,
                        self.where, self.last_error)
        self._check_lag()

    def _check_lag(self) -> None:
        behind_s = time.monotonic() - self._caught_up_at
        if not self._alerted and behind_s >= self.lag_alert_s:
            self._alerted = True
            rows, points = self._backlog()
            self._send(Alert(
                step=self._step(), rule="store_sync", level="warning",
                message=f"the team store {self.where} is {behind_s:.0f} s behind: {rows:,} rows "
                        f"({points:,} points) wait in {self.path.name} (last error: "
                        f"{self.last_error or 'none, still sending'})",
                action="Nothing is lost and training goes on: the local file keeps everything "
                       "and the sync catches up when the server answers. Check that the "
                       "server is up and reachable from this machine.",
                wall_time=time.time()))

    def _caught_up(self) -> None:
        if self._alerted:
            self._alerted = False
            behind_s = time.monotonic() - self._caught_up_at
            self._send(Alert(
                step=self._step(), rule="store_sync", level="info", state="cleared",
                message=f"the team store {self.where} caught up after {behind_s:.0f} s behind",
                action="", wall_time=time.time()))
        self._caught_up_at = time.monotonic()
        self._logged.clear()

    def _send(self, alert: Alert) -> None:
        if self._emit is not None:
            self._emit(alert)

    def _backlog(self) -> tuple[int, int]:
        """(rows, points) in the spool after the server's cursor, read from the file."""
        try:
            conn = self._syncer.local()
            rows = sum(conn.execute(f"SELECT count(*) FROM {t} WHERE seq > ?",
                                    (self.synced_seq,)).fetchone()[0]
                       for t in ("scalar_chunks", "samples", "matrices", "alerts"))
            points = conn.execute("SELECT COALESCE(SUM(n), 0) FROM scalar_chunks WHERE seq > ?",
                                  (self.synced_seq,)).fetchone()[0]
            return int(rows), int(points)
        except Exception as err:  # the figure is a courtesy; the alert goes out without it
            log.debug("trainspect: counting the sync backlog failed: %s", err)
            return -1, -1

    def _local_newest(self) -> int:
        try:
            from trainspect.store.server import spool

            conn = spool.open_spool(self.path)
            try:
                return spool.newest_seq(conn)
            finally:
                conn.close()
        except Exception as err:
            log.debug("trainspect: reading %s's newest seq failed: %s", self.path, err)
            return self.newest_seq
