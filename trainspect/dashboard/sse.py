"""Live updates: Server-Sent Events that follow runs with the reader's cursor.

Each connection follows one or more runs. A `Follower` asks its run for the rows
written after its cursor (`RunView.rows_after`), never re-reading a history, and
turns them into one small event: new scalar points (bounded per key by min/max
downsampling, so a burst cannot flood the browser), new alerts, and which samples
and matrices arrived (the page re-asks those panels). The event id carries every
run's cursor, so a browser that reconnects (`Last-Event-ID`) misses nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import numpy as np

from trainspect.dashboard.panels.base import finite
from trainspect.store.chunks import downsample
from trainspect.store.reader import RunView

POLL_S = 0.25  # how often a connection asks its runs for new rows
HEARTBEAT_S = 15.0  # a comment line keeps proxies from closing an idle stream
STATUS_S = 2.0  # how often run status (running, finished, crashed) is re-read
MAX_POINTS_PER_KEY = 500  # per event; more new points than this are min/max bucketed


def current_cursor(view: RunView) -> int:
    """The seq of the newest row in the run (what a follower starting now begins after)."""
    cursor = getattr(view, "cursor", None)
    if callable(cursor):
        return int(cursor())
    return int(view.rows_after(0, keys=[])["cursor"])


class Follower:
    """Follows one run from a cursor; `poll()` returns the next event's data or None."""

    def __init__(self, ref: str, view: RunView, cursor: int | None = None) -> None:
        self.ref = ref
        self.view = view
        self.cursor = current_cursor(view) if cursor is None else cursor
        self.last_step: dict[str, int] = {}
        self.status = view.status
        self.attempt = view.meta.get("attempt", 1)
        self._status_at = time.monotonic()

    def poll(self) -> dict[str, Any] | None:
        new = self.view.rows_after(self.cursor)
        self.cursor = new["cursor"]
        event: dict[str, Any] = {"run": self.ref, "cursor": self.cursor}
        scalars = {}
        for key, pts in new["scalars"].items():
            kept = self._fresh_points(key, pts)
            if kept:
                scalars[key] = kept
        if scalars:
            event["scalars"] = scalars
        if new["samples"]:
            event["samples"] = sorted({r["step"] for r in new["samples"]})
        if new["alerts"]:
            event["alerts"] = [{k: a[k] for k in ("step", "rule", "level", "message", "action",
                                                  "state")} for a in new["alerts"]]
        if new["matrices"]:
            event["matrices"] = sorted({m["name"] for m in new["matrices"]})
        self._check_status(event)
        return event if len(event) > 2 else None

    def _fresh_points(self, key: str, pts: list[tuple[int, float]]) -> list[list]:
        """Points past the last step sent for `key` (a merged chunk repeats old ones)."""
        last = self.last_step.get(key)
        by_step = dict(pts)  # newest write wins within the batch
        steps = sorted(s for s in by_step if last is None or s > last)
        if not steps:
            return []
        self.last_step[key] = steps[-1]
        vals = [by_step[s] for s in steps]
        if len(steps) > MAX_POINTS_PER_KEY:
            rows = downsample(np.asarray(steps, np.int64), np.asarray(vals, np.float64),
                              MAX_POINTS_PER_KEY)
            return [[s, finite(lo), finite(hi)] for s, lo, hi in rows]
        return [[s, finite(v), finite(v)] for s, v in zip(steps, vals)]

    def _check_status(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._status_at < STATUS_S:
            return
        self._status_at = now
        self.view.refresh()
        status, attempt = self.view.status, self.view.meta.get("attempt", 1)
        if status != self.status:
            self.status = event["status"] = status
        if attempt != self.attempt:  # resumed: steps may go back, the page reloads
            self.attempt = attempt
            self.last_step.clear()
            event["reset"] = True


def encode_cursors(followers: list[Follower]) -> str:
    return ",".join(f"{f.ref}={f.cursor}" for f in followers)


def decode_cursors(text: str | None) -> dict[str, int]:
    """`ref=cursor,ref=cursor` (an event id) as a dict; malformed parts are ignored."""
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        ref, _, cursor = part.rpartition("=")
        if ref and cursor.isdigit():
            out[ref] = int(cursor)
    return out


def format_event(name: str, data: dict[str, Any], event_id: str | None = None) -> str:
    lines = [f"id: {event_id}"] if event_id is not None else []
    lines += [f"event: {name}", "data: " + json.dumps(data, allow_nan=False, default=str)]
    return "\n".join(lines) + "\n\n"


async def stream(followers: list[Follower], disconnected: Callable[[], Any],
                 stop: threading.Event, poll_s: float = POLL_S,
                 heartbeat_s: float = HEARTBEAT_S) -> AsyncIterator[str]:
    """The event stream: a hello with the cursors, then updates as runs write."""
    hello = {"cursors": {f.ref: f.cursor for f in followers},
             "status": {f.ref: f.status for f in followers}}
    yield "retry: 2000\n" + format_event("hello", hello, encode_cursors(followers))
    quiet_since = time.monotonic()
    while not stop.is_set():
        if await disconnected():
            return
        events = await anyio.to_thread.run_sync(lambda: [f.poll() for f in followers])
        for event in events:
            if event is not None:
                quiet_since = time.monotonic()
                yield format_event("update", event, encode_cursors(followers))
        if time.monotonic() - quiet_since > heartbeat_s:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        await anyio.sleep(poll_s)
