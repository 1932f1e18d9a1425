"""Metric names the built-in rules share, and small helpers over a rule's context."""

from __future__ import annotations

import math
from collections.abc import Iterable

from trainspect.alerts.rule import Context

# The training loss under the names trainers use, most specific first is not implied:
# a run's main loss is the first of these it logs (see `main_loss`).
LOSS_KEYS = ("loss", "loss/total", "train/loss")
LR_KEYS = ("lr", "train/lr", "optim/lr")
# First path segments that are metric families, not token streams (the metric table of
# docs/architecture.md).
FAMILIES = frozenset({"loss", "lora", "grad", "hidden", "speed", "mem", "eval", "train", "lr",
                      "optim"})


def main_loss(ctx: Context) -> str | None:
    """The run's training loss key: the first of LOSS_KEYS that has points."""
    return ctx.first_present(LOSS_KEYS)


def stream_of(key: str, metric: str) -> str | None:
    """'text' for 'text/<metric>'; None for per-group keys and metric families."""
    head, sep, tail = key.partition("/")
    if not sep or tail != metric or head in FAMILIES:
        return None
    return head


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def median(values: Iterable[float]) -> float:
    """Median of the finite values, NaN if there are none.

    Pure Python: for the short windows rules use, sorting a list is ~20x faster than
    numpy's median call overhead, and rules run at every step.
    """
    xs = sorted(v for v in values if math.isfinite(v))
    n = len(xs)
    if n == 0:
        return math.nan
    mid = n // 2
    return float(xs[mid]) if n % 2 else (xs[mid - 1] + xs[mid]) / 2.0
