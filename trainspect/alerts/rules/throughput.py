"""Throughput: tokens per second falling well below their recent level."""

from __future__ import annotations

import math

from trainspect.alerts.rule import HOLD, CheckResult, Context, Finding, Rule
from trainspect.alerts.rules.common import median
from trainspect.alerts.stats import num, pct


class ThroughputDrop(Rule):
    """`speed/tokens_per_s` falls more than 40% below its rolling median.

    The reference is the median of the previous 50 points (at least 10). Fires
    (warning) after 3 consecutive points below 0.6x the reference, so one slow step
    (a checkpoint save) does not alarm. A window that holds a fixed eval (`eval/em` or
    any `<name>/em_se` logged inside it) is not judged: tokens per second are over the
    window's wall time, and the eval's pause is not training time. While fired the
    reference is frozen at its value when the drop began (else the slow points would
    become the new normal); it clears after 3 points back at >= 0.8x it.
    """

    id = "throughput_drop"
    keys = ("speed/tokens_per_s", "eval/em", "*/em_se")
    triggers = ("speed/tokens_per_s",)
    history = 64
    window = 50
    min_points = 10
    fire_after = 3
    drop = 0.6  # below this share of the reference is a drop
    recover = 0.8  # at or above this share clears
    action = ("Something slowed the loop: look for data-loader stalls (num_workers, slow "
              "storage), host-device syncs added to the step (.item(), printing tensors), "
              "other processes on the GPU, thermal throttling, or longer sequences; "
              "compare speed/step_s and mem/peak_gb around this step.")

    def __init__(self) -> None:
        self._reference: float | None = None  # frozen while a drop is on or pending

    def check(self, ctx: Context) -> CheckResult:
        x = ctx.new["speed/tokens_per_s"]
        if not math.isfinite(x) or self._evaluated(ctx):
            return HOLD
        if self._reference is None:
            previous = ctx.recent("speed/tokens_per_s", self.window + 1)[:-1]
            if not math.isfinite(sum(previous)):
                previous = [v for v in previous if math.isfinite(v)]
            if len(previous) < self.min_points:
                return None
            if x >= self.drop * max(previous):  # median <= max: cannot be a drop
                return None
            reference = median(previous)
        else:
            reference = self._reference
        if not (reference > 0):
            return None
        ratio = x / reference
        if ctx.active():
            if ratio >= self.recover:
                return None
            return Finding(self._message(ctx, x, reference, ratio))
        if ratio < self.drop:
            if self._reference is None:
                self._reference = reference  # freeze for the streak
            return Finding(self._message(ctx, x, reference, ratio))
        self._reference = None
        return None

    def _evaluated(self, ctx: Context) -> bool:
        """Whether an eval was logged after the previous throughput point, up to now."""
        steps = ctx.tail("speed/tokens_per_s", 2)[0]
        since = int(steps[0]) if steps.size == 2 else -1
        for key in ("eval/em", *ctx.keys("*/em_se")):
            h = ctx.history(key)
            if h is not None and h.last_step is not None and since < h.last_step <= ctx.step:
                return True
        return False

    def _message(self, ctx: Context, x: float, reference: float, ratio: float) -> str:
        return (f"speed/tokens_per_s {num(x)} at step {ctx.step} is {pct(1 - ratio)} below "
                f"its rolling median {num(reference)}")
