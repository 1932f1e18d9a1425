"""The run's step clock: which step a call is at, and when a `log_every` window ends.

Steps come from the loop (`step=`), or, until a call gives one, count the calls.
A step past the current window's end closes it: the run flushes the window's device
state (recorded at the window's last step) before moving on. Steps may go back
(a resumed run); windows only move forward.
"""

from __future__ import annotations

from typing import Any

from trainspect.inputs import as_step


class StepClock:
    """Steps as the loop gives them, and the `log_every` windows they fall in."""

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every
        self.step = 0  # the highest step given so far
        self.window_end = log_every
        self._given = False
        self._calls = 0

    def resolve(self, step: Any) -> int:
        """The step a call is at: `step` checked, else the last given one, else the call count.

        Raises TrainspectError for a step that is not a non-negative int64 integer.
        """
        if step is None:
            if self._given:
                return self.step
            self._calls += 1
            return self._calls - 1
        step = as_step(step)
        self._given = True
        return step

    def ends_window(self, step: int) -> bool:
        """True when `step` lies past the current window: flush it before `move_to`."""
        return step > self.window_end

    def move_to(self, step: int) -> None:
        if step > self.window_end:
            self.window_end = -(-step // self.log_every) * self.log_every
        if step > self.step:
            self.step = step

    def close_window(self) -> None:
        """After an explicit flush: the next window starts after the current step."""
        self.window_end = -(-(self.step + 1) // self.log_every) * self.log_every
