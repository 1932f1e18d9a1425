"""The store a run writes to when its file cannot be opened: accepts and drops everything.

Training goes on without a record; `Run` has logged one error saying where it
tried to write and how to fix it.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class NullWriter:
    """Same surface as StoreWriter; every queue has room for nothing."""

    def __init__(self) -> None:
        self.scalars: deque = deque(maxlen=0)
        self.records: deque = deque(maxlen=0)
        self.jobs: deque = deque(maxlen=0)
        self.observers: list = []
        self.alive = False

    def set_meta(self, **values: Any) -> None:
        """Dropped: there is no file to hold it."""

    def flush(self, timeout: float = 60.0) -> bool:
        return False

    def close(self, timeout: float = 60.0) -> bool:
        return False
