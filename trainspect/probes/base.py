"""The shape every probe has: declared device state, `update`, and `compute` at the flush.

Like a torchmetrics `Metric`: the state is a few fixed-size tensors whose values are
sums (so ranks and flush windows pool by adding), `update` only queues device work,
and `compute` turns the pooled numbers into records on the writer thread, long after
the training step has moved on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class Probe:
    """Base class; subclasses set `name` and implement the three methods."""

    name: str = "probe"

    def state(self) -> Sequence[Any]:
        """The device tensors to flush (fixed size, sum-reduced); empty if idle."""
        return ()

    def reset(self) -> None:
        """Zero the state after a flush copied it (queued on the device, no sync)."""

    def compute(self, state: list[np.ndarray], step: int, wall_time: float) -> list[Any]:
        """Records from the pooled state, on the writer thread (host numpy arrays)."""
        return []
