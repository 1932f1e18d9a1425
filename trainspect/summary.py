"""Headline numbers of a run, for `trainspect ls`, `show` and the dashboard's run list.

Pure reads over a `RunView`: no torch, no writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trainspect.store.reader import RunView

# The metrics a person looks at first, in the order they are shown when present.
HEADLINE_KEYS = ("loss", "train/loss", "text/ce", "text/acc", "eval/em", "eval/ce", "text/ece",
                 "draft/accept_len")


@dataclass(frozen=True)
class KeySummary:
    key: str
    points: int
    first_step: int
    last_step: int
    last: float
    min: float
    max: float


def key_summary(view: RunView, key: str) -> KeySummary | None:
    steps, vals = view.arrays(key)
    if steps.size == 0:
        return None
    finite = vals[np.isfinite(vals)]
    return KeySummary(
        key=key, points=int(steps.size), first_step=int(steps[0]), last_step=int(steps[-1]),
        last=float(vals[-1]),
        min=float(finite.min()) if finite.size else math.nan,
        max=float(finite.max()) if finite.size else math.nan,
    )


def headline(view: RunView, limit: int = 3) -> dict[str, float]:
    """Up to `limit` headline metrics with their latest values."""
    latest = view.latest_values()
    chosen = [k for k in HEADLINE_KEYS if k in latest][:limit]
    return {k: latest[k] for k in chosen}
