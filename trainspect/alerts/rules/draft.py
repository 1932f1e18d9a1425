"""Draft heads (EAGLE, Medusa): later positions collapsing faster than they should."""

from __future__ import annotations

import math
import re

from trainspect.alerts.rule import HOLD, CheckResult, Context, Finding, Rule
from trainspect.alerts.rules.common import median
from trainspect.alerts.stats import num

_POS = re.compile(r"^draft/pos(\d+)/(acc|cond_acc)$")


class DraftCollapse(Rule):
    """Later draft positions collapse: far below a geometric decay, or falling while pos0 holds.

    Each position's value is the median of its last 3 points; its best is the highest
    such median so far. Two tests, the first that holds names the position:
    - geometric: from pos0 and pos1, r = min(acc1 / acc0, 1) and the expected accuracy
      at position i is acc0 * r**i; a position i >= 2 collapses when its accuracy is
      < 0.5x expected and at least 0.05 below it. Judged only once pos0 accuracy is
      >= 0.3: before that the head is still learning the basics and later positions
      are near zero anyway;
    - falling: a position i >= 1 whose accuracy, or conditional accuracy
      (`draft/pos<i>/cond_acc`: correct given all earlier positions correct), is below
      0.5x its own best and at least 0.03 under it, while pos0 keeps >= 0.8x its best.
      A window's accuracy over thousands of draft tokens moves by about a hundredth;
      halving is a position that stopped working, not noise, and pos0 holding rules
      out the whole model getting worse (that is the loss rules' business).
    A weak head is not a collapsing one: absolute accuracies are judged only against
    the head's own pos0 and history. Warning; clears after 3 checks without a collapse.
    """

    id = "draft_collapse"
    keys = ("draft/pos*/acc", "draft/pos*/cond_acc")
    history = 8
    smooth = 3
    min_acc0 = 0.3
    below_expected = 0.5  # collapse: acc_i < this x the geometric expectation
    min_abs_gap = 0.05
    fall = 0.5  # falling: below this share of its own best ...
    min_fall = 0.03  # ... and at least this far below it
    pos0_holds = 0.8  # ... while pos0 keeps this share of its best
    action = ("Later draft positions are the bottleneck: check what position i reads at "
              "that step (its input hidden states or features must be the ones it will "
              "see at inference, not zeros, stale or another position's), that its "
              "targets are shifted by i + 1 tokens, then train with more unrolled "
              "(test-time-training) steps or weight later positions more in the loss.")

    def __init__(self) -> None:
        self._best: dict[str, float] = {}

    def check(self, ctx: Context) -> CheckResult:
        if not any(_POS.match(k) for k in ctx.new):
            return HOLD
        acc: dict[int, float] = {}
        cond: dict[int, float] = {}
        for key in ctx.keys("draft/pos*"):
            m = _POS.match(key)
            if m:
                target = acc if m.group(2) == "acc" else cond
                value = median(ctx.values(key, self.smooth))
                target[int(m.group(1))] = value
                if math.isfinite(value) and value > self._best.get(key, -math.inf):
                    self._best[key] = value
        if 0 not in acc:
            return None
        geometric = self._geometric(ctx, acc, cond)
        if geometric is not None:
            return geometric
        best0 = self._best.get("draft/pos0/acc", math.nan)
        if not acc[0] >= self.pos0_holds * best0:
            return None
        for i in sorted(set(acc) | set(cond)):
            for name, values in (("accuracy", acc), ("conditional accuracy", cond)):
                key = f"draft/pos{i}/{'acc' if values is acc else 'cond_acc'}"
                now, best = values.get(i, math.nan), self._best.get(key, math.nan)
                if i >= 1 and now < self.fall * best and best - now >= self.min_fall:
                    return self._finding(ctx, i, acc, f"{name} {num(now)} has fallen below "
                                         f"half its best {num(best)} while pos0 holds "
                                         f"({num(acc[0])}, best {num(best0)})")
        return None

    def _geometric(self, ctx: Context, acc: dict[int, float], cond: dict[int, float]
                   ) -> Finding | None:
        if 1 not in acc or not acc[0] >= self.min_acc0:
            return None
        r = min(acc[1] / acc[0], 1.0)
        for i in sorted(acc):
            if i >= 2 and math.isfinite(acc[i]):
                expected = acc[0] * r**i
                if acc[i] < self.below_expected * expected and expected - acc[i] >= \
                        self.min_abs_gap:
                    return self._finding(ctx, i, acc,
                                         f"accuracy {num(acc[i])} is far below the "
                                         f"{num(expected)} a geometric decay predicts "
                                         f"(decay per position from pos0/pos1: {num(r)})")
        return None

    def _finding(self, ctx: Context, i: int, acc: dict[int, float], what: str) -> Finding:
        curve = ", ".join(f"pos{j} {num(acc[j])}" for j in sorted(acc))
        return Finding(f"draft position {i} {what} at step {ctx.step} (accuracy by position: "
                       f"{curve})")
