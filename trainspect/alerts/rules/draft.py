"""Draft heads (EAGLE, Medusa): later positions collapsing faster than they should."""

from __future__ import annotations

import math
import re

from trainspect.alerts.rule import HOLD, CheckResult, Context, Finding, Rule
from trainspect.alerts.rules.common import median
from trainspect.alerts.stats import num

_POS = re.compile(r"^draft/pos(\d+)/(acc|cond_acc)$")


class DraftCollapse(Rule):
    """Draft accuracy falls with position much faster than a geometric decay predicts.

    Each position's value is the median of its last 3 points. From pos0 and pos1,
    r = min(acc1 / acc0, 1) and the expected accuracy at position i is acc0 * r**i.
    A position i >= 2 collapses when its accuracy is < 0.5x expected and at least
    0.05 below it; a position i >= 1 also collapses when `draft/pos<i>/cond_acc`
    (correct given all earlier positions correct) is < 0.2. Judged only once
    pos0 accuracy is >= 0.3: before that the head is still learning the basics and
    later positions are near zero anyway. Names the first collapsing position.
    Warning; clears after 3 checks without a collapse.
    """

    id = "draft_collapse"
    keys = ("draft/pos*/acc", "draft/pos*/cond_acc")
    history = 8
    smooth = 3
    min_acc0 = 0.3
    below_expected = 0.5  # collapse: acc_i < this x the geometric expectation
    min_abs_gap = 0.05
    min_cond_acc = 0.2
    action = ("Later draft positions are the bottleneck: train with more unrolled "
              "(test-time-training) steps, weight later positions more in the loss, and "
              "check that position i's targets are shifted by i + 1 tokens and that its "
              "input hidden states are the ones it will see at inference.")

    def check(self, ctx: Context) -> CheckResult:
        if not any(_POS.match(k) for k in ctx.new):
            return HOLD
        acc: dict[int, float] = {}
        cond: dict[int, float] = {}
        for key in ctx.keys("draft/pos*"):
            m = _POS.match(key)
            if m:
                target = acc if m.group(2) == "acc" else cond
                target[int(m.group(1))] = median(ctx.values(key, self.smooth))
        if 0 not in acc or 1 not in acc or not acc[0] >= self.min_acc0:
            return None
        r = min(acc[1] / acc[0], 1.0)
        for i in sorted(set(acc) | set(cond)):
            if i >= 2 and i in acc and math.isfinite(acc[i]):
                expected = acc[0] * r**i
                if acc[i] < self.below_expected * expected and expected - acc[i] >= \
                        self.min_abs_gap:
                    return self._finding(ctx, i, acc, cond, r,
                                         f"accuracy {num(acc[i])} is far below the "
                                         f"{num(expected)} a geometric decay predicts")
            if i >= 1 and i in cond and cond[i] < self.min_cond_acc:
                return self._finding(ctx, i, acc, cond, r,
                                     f"conditional accuracy {num(cond[i])} is below "
                                     f"{self.min_cond_acc}")
        return None

    def _finding(self, ctx: Context, i: int, acc: dict[int, float], cond: dict[int, float],
                 r: float, what: str) -> Finding:
        curve = ", ".join(f"pos{j} {num(acc[j])}" for j in sorted(acc))
        return Finding(f"draft position {i} {what} at step {ctx.step} (accuracy by position: "
                       f"{curve}; decay per position from pos0/pos1: {num(r)})")
