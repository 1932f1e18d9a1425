"""What the alert engine remembers of each metric: its recent points and a few totals.

Memory stays bounded: a key keeps at most its `capacity` latest points (the largest
window any interested rule asked for), plus running totals (count, first step,
best value and its step) that cost a few numbers however long the run is.
When a resumed run goes back in steps, the points at or after the new step are
dropped first, so a rule never sees the abandoned attempt's future.
"""

from __future__ import annotations

import math

import numpy as np


class KeyHistory:
    """The last `capacity` (step, value) points of one key, oldest first, and its totals."""

    __slots__ = ("capacity", "_steps", "_values", "count", "first_step", "min", "min_step",
                 "max", "max_step")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._steps: list[int] = []
        self._values: list[float] = []
        self.count = 0  # points ever appended (rewinds do not subtract)
        self.first_step: int | None = None
        self.min = math.inf  # over finite values ever appended
        self.min_step: int | None = None
        self.max = -math.inf
        self.max_step: int | None = None

    def append(self, step: int, value: float) -> None:
        steps = self._steps
        while steps and steps[-1] >= step:  # a rewind (resume) or a re-log of the same step
            steps.pop()
            self._values.pop()
        steps.append(step)
        self._values.append(value)
        if len(steps) > 2 * self.capacity:  # trim in amortised O(1)
            del steps[: -self.capacity]
            del self._values[: -self.capacity]
        self.count += 1
        if self.first_step is None:
            self.first_step = step
        if math.isfinite(value):
            if value < self.min:
                self.min, self.min_step = value, step
            if value > self.max:
                self.max, self.max_step = value, step

    def __len__(self) -> int:
        return min(len(self._steps), self.capacity)

    @property
    def last_step(self) -> int | None:
        return self._steps[-1] if self._steps else None

    @property
    def last(self) -> float | None:
        return self._values[-1] if self._values else None

    def tail(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The last `n` points (all kept points if None) as (int64 steps, float64 values)."""
        n = len(self) if n is None else min(n, len(self))
        if n <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        return (np.array(self._steps[-n:], dtype=np.int64),
                np.array(self._values[-n:], dtype=np.float64))

    def values(self, n: int | None = None) -> np.ndarray:
        return self.tail(n)[1]

    def recent(self, n: int) -> list[float]:
        """The last `n` values as a plain list: cheaper than arrays for a per-step gate."""
        return self._values[-min(n, len(self)):] if n > 0 else []

    def at_or_before(self, step: int) -> float | None:
        """The value of the latest kept point at or before `step`."""
        for i in range(len(self._steps) - 1, max(len(self._steps) - self.capacity, 0) - 1, -1):
            if self._steps[i] <= step:
                return self._values[i]
        return None
