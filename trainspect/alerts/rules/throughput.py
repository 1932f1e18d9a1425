"""Throughput: tokens per second falling well below their recent level; a straggler rank."""

from __future__ import annotations

import math
import re

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


_RANK = re.compile(r"^speed/rank(\d+)/(step_s|late_s)$")


class Straggler(Rule):
    """One rank is slower than the others: the whole job waits for it.

    With several ranks the flush records, per rank, `speed/rank<i>/step_s` (host busy
    time per step between flushes) and `speed/rank<i>/late_s` (how long after the
    first rank it reached the flush). A rank is the straggler in a window when its
    busy time per step is >= 1.25x the median of the other ranks', or it reached the
    flush later than the others by >= 25% of the window's median busy time. Fires
    (warning) after 3 such windows in a row for the same rank, so one slow window (a
    checkpoint written by rank 0, a garbage collection) does not; clears after 3
    windows without it. Under DDP the ranks meet at every step's all_reduce, so the
    fast ranks' waiting is inside their busy time and only the flush arrival times
    still differ.
    """

    id = "straggler"
    keys = ("speed/rank*/step_s", "speed/rank*/late_s")
    history = 4
    fire_after = 3
    slower = 1.25
    late_share = 0.25
    action = ("Find what slows this rank: its data loading (a slow disk or too few "
              "workers on that node), a busier or throttled GPU, other processes on its "
              "host, or uneven batches (sequence lengths) given to it; the others wait "
              "for it at every synchronisation.")

    def check(self, ctx: Context) -> CheckResult:
        busy: dict[int, float] = {}
        late: dict[int, float] = {}
        for key in ctx.new:
            m = _RANK.match(key)
            if m and math.isfinite(ctx.new[key]):
                (busy if m.group(2) == "step_s" else late)[int(m.group(1))] = ctx.new[key]
        if len(busy) < 2:
            return HOLD
        steps = median(busy.values())
        for rank, value in sorted(busy.items()):
            others = median(v for r, v in busy.items() if r != rank)
            slow = others > 0 and value >= self.slower * others
            behind = rank in late and late[rank] - min(late.values()) >= self.late_share * \
                steps * _window_steps(ctx)
            if slow or behind:
                why = (f"{num(value)} s of work per step against {num(others)} s on the other "
                       "ranks" if slow else f"it reached the flush {num(late[rank])} s after "
                       "the first rank")
                return Finding(f"rank {rank} is the straggler in the window ending at step "
                               f"{ctx.step}: {why}", subject=str(rank))
        return None


def _window_steps(ctx: Context) -> int:
    """Steps between the last two flushes (1 before there are two)."""
    steps = ctx.tail("speed/rank0/step_s", 2)[0]
    return int(steps[-1] - steps[0]) if steps.size == 2 else 1
