"""Where alerts go besides the store: the console (logging) and an optional webhook.

The console gets one readable line per fired or cleared alert on the
`trainspect.alerts` logger, at the alert's level. The webhook gets a JSON POST per
alert from its own daemon thread, fed through a bounded queue: `send` never blocks
the caller (the writer thread), failures are retried with exponential backoff, and
when the endpoint is down for long the queue drops new alerts and counts them
instead of growing. Payload building is pure; `_post` is the one function that
touches the network.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from trainspect.errors import TrainspectError
from trainspect.records import Alert

log = logging.getLogger("trainspect.alerts")

LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}


def alert_line(alert: Alert) -> str:
    """`trainspect [warning] step 530 loss_spike: loss 7.9 is ... -> Check the batch ...`"""
    tag = "cleared" if alert.state == "cleared" else alert.level
    action = f" -> {alert.action}" if alert.action and alert.state != "cleared" else ""
    return f"trainspect [{tag}] step {alert.step} {alert.rule}: {alert.message}{action}"


def log_alert(alert: Alert) -> None:
    """The console: one line, at the alert's level (INFO for a cleared alert)."""
    level = logging.INFO if alert.state == "cleared" else LOG_LEVELS.get(alert.level,
                                                                          logging.WARNING)
    log.log(level, "%s", alert_line(alert))


def payload(alert: Alert, run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of a webhook POST. `text` makes it readable in Slack-style hooks."""
    return {
        "text": alert_line(alert),
        "run": dict(run or {}),
        "step": alert.step,
        "rule": alert.rule,
        "level": alert.level,
        "state": alert.state,
        "message": alert.message,
        "action": alert.action,
        "wall_time": alert.wall_time,
    }


def check_url(url: Any) -> str:
    if not isinstance(url, str) or urlparse(url).scheme not in ("http", "https") or not urlparse(
            url).netloc:
        raise TrainspectError(f"expected `webhook` to be an http(s) URL, got {url!r}")
    return url


class Webhook:
    """POSTs alerts as JSON to `url` from a daemon thread; never blocks, never raises.

    A POST that fails (connection error, timeout, HTTP 5xx or 429) is retried up to
    `retries` more times, waiting `backoff_s`, 2x, 4x ... in between. Other HTTP
    errors (4xx) are not retried. At most `max_queue` alerts wait; more are dropped
    and counted in `dropped`. `sent` and `failed` count outcomes.
    """

    def __init__(self, url: str, *, run: Mapping[str, Any] | None = None, timeout_s: float = 5.0,
                 retries: int = 4, backoff_s: float = 0.5, max_queue: int = 256,
                 headers: Mapping[str, str] | None = None) -> None:
        self.url = check_url(url)
        self.run = dict(run or {})
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.headers = {"Content-Type": "application/json", **dict(headers or {})}
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=max_queue)
        self._pending = 0  # queued or being delivered
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._warned_drop = False
        self._thread = threading.Thread(target=self._loop, name="trainspect-webhook", daemon=True)
        self._thread.start()

    def send(self, alert: Alert) -> bool:
        """Queue `alert` for delivery; False (and counted) if the queue is full or closed."""
        if self._stop.is_set():
            self.dropped += 1
            return False
        with self._pending_lock:
            self._pending += 1
        try:
            self._queue.put_nowait(alert)
            return True
        except queue.Full:
            with self._pending_lock:
                self._pending -= 1
            self.dropped += 1
            if not self._warned_drop:
                self._warned_drop = True
                log.warning("trainspect: the alert webhook %s is not keeping up; alerts are "
                            "being dropped (counted in Webhook.dropped)", self.url)
            return False

    def close(self, timeout: float = 5.0) -> bool:
        """Deliver what is queued within `timeout` seconds, then stop; True if all went."""
        if not self._thread.is_alive():
            return self._pending == 0
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        try:
            self._queue.put_nowait(None)  # wake the thread if it waits for work
        except queue.Full:
            log.debug("webhook queue full at close; the thread sees the stop flag")
        self._thread.join(max(0.0, deadline - time.monotonic()) + 0.1)
        return self._pending == 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            alert = self._queue.get()
            if alert is None:
                continue
            try:
                self._deliver(alert)
            except Exception as err:  # the thread must outlive any bug in one delivery
                self.failed += 1
                log.warning("trainspect: webhook delivery failed unexpectedly (%s: %s)",
                            type(err).__name__, err, exc_info=True)
            finally:
                with self._pending_lock:
                    self._pending -= 1

    def _deliver(self, alert: Alert) -> None:
        body = json.dumps(payload(alert, self.run), default=repr).encode()
        error = ""
        for attempt in range(self.retries + 1):
            # wait backoff_s * 2**(attempt-1) before a retry, but wake at once when closing
            if attempt and self._stop.wait(self.backoff_s * 2 ** (attempt - 1)):
                break
            ok, retry, error = self._post(body)
            if ok:
                self.sent += 1
                return
            if not retry:
                break
        self.failed += 1
        log.warning("trainspect: could not deliver alert %s (step %d) to the webhook %s: %s",
                    alert.rule, alert.step, self.url, error)

    def _post(self, body: bytes) -> tuple[bool, bool, str]:
        """One POST: (delivered, worth retrying, error text)."""
        request = urllib.request.Request(self.url, data=body, headers=self.headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
            return True, False, ""
        except urllib.error.HTTPError as err:
            return False, err.code >= 500 or err.code == 429, f"HTTP {err.code} {err.reason}"
        except (urllib.error.URLError, OSError) as err:  # refused, DNS, timeout
            return False, True, f"{type(err).__name__}: {getattr(err, 'reason', err)}"
