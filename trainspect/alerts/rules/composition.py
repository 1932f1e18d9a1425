"""Loss composition: a component leaking through a zero weight, parts not summing to the total.

Reads the loss probe's `loss/<name>/raw|weight|scaled` (scaled = raw x weight),
`loss/total`, `loss/sum_gap` (|total - sum of scaled parts| / |total|, pooled over the
window) and `loss/<name>/leak` (the share of a zero-weight part found in the total).
The relative gap is `loss/sum_gap` when logged, else computed from `loss/total` and
the scaled parts at that step; the signed absolute gap (to match a leaking part's
raw value) is computed from them when they are logged, else sum_gap x |total|.
"""

from __future__ import annotations

import math
import re

from trainspect.alerts.rule import HOLD, CheckResult, Context, Finding, Rule
from trainspect.alerts.stats import num, pct

_PART = re.compile(r"^loss/(.+)/(raw|weight|scaled|leak)$")
KEYS = ("loss/*/raw", "loss/*/weight", "loss/*/scaled", "loss/*/leak", "loss/total",
        "loss/sum_gap")


def parts_at(ctx: Context) -> dict[str, dict[str, float]]:
    """{component: {raw, weight, scaled, leak}} from the values logged at this step.

    A weight not logged at this step is taken from its latest value (weights change
    rarely and may be logged less often).
    """
    parts: dict[str, dict[str, float]] = {}
    for key, value in ctx.new.items():
        m = _PART.match(key)
        if m:
            parts.setdefault(m.group(1), {})[m.group(2)] = value
    for name, p in parts.items():
        if "weight" not in p:
            weight = ctx.last(f"loss/{name}/weight")
            if weight is not None:
                p["weight"] = weight
    return parts


def gap_at(ctx: Context, parts: dict[str, dict[str, float]]) -> tuple[float, float] | None:
    """(total - sum of scaled parts, its size relative to |total|) at this step, or None."""
    total = ctx.new.get("loss/total")
    scaled = [p["scaled"] for p in parts.values() if "scaled" in p]
    relative = ctx.new.get("loss/sum_gap")
    if total is not None and scaled:
        gap = total - math.fsum(scaled)
        if relative is None:
            relative = abs(gap) / max(abs(total), 1e-12)
    elif relative is not None:
        total = total if total is not None else ctx.last("loss/total")
        gap = relative * abs(total) if total is not None else math.nan
    else:
        return None
    if not math.isfinite(relative):
        return None
    return gap, relative


def whole_factor(ctx: Context, parts: dict[str, dict[str, float]], tolerance: float = 1e-3,
                 max_factor: int = 64) -> tuple[float, float, float] | None:
    """(k or 1/k, total, sum of scaled parts) when loss/total is within `tolerance` of a
    whole multiple k in 2..`max_factor` of the sum of its scaled parts (or of 1/k)."""
    total = ctx.new.get("loss/total")
    scaled = [p["scaled"] for p in parts.values() if "scaled" in p]
    if total is None or not scaled:
        return None
    sum_parts = math.fsum(scaled)
    if not (math.isfinite(total) and math.isfinite(sum_parts)) or sum_parts == 0 or \
            total == 0:
        return None
    ratio = total / sum_parts
    for value, inverse in ((ratio, False), (1 / ratio, True)):
        k = round(value)
        if 2 <= k <= max_factor and abs(value - k) <= tolerance * k:
            return (1 / k if inverse else float(k)), total, sum_parts
    return None


class ZeroWeightLeak(Rule):
    """A loss component with weight 0 still reaches the total.

    Per component with `loss/<name>/weight` == 0, critical when any of: the probe's
    `loss/<name>/leak` is != 0; `loss/<name>/scaled` is != 0; or the gap
    total - sum(scaled) is within 5% of the component's raw value (it is added
    unweighted). Warning when it is the only zero-weight component with a non-zero raw
    value, the relative gap is > 1%, and the gap is between 0.1x and 1.05x its raw
    value (it leaks at some other weight: the likely culprit). Clears after 3 checks
    without it. Quiet while the loss probe's own `losses.leak` alert is out.
    """

    id = "zero_weight_leak"
    level = "critical"
    keys = KEYS
    history = 8
    covered_by = {"*": ("losses.leak", "loss_total_scaled")}
    match_tol = 0.05  # |gap - raw| <= this share of |raw| means "added unweighted"
    action = ("Skip adding a component whose weight is 0 (or multiply it by its weight "
              "where it is added: routing/auxiliary losses often bypass the curriculum), "
              "and check that eval uses the same weights as training.")

    def check(self, ctx: Context) -> CheckResult:
        parts = parts_at(ctx)
        if not parts:
            return HOLD
        gap = gap_at(ctx, parts)
        zero = {n: p for n, p in parts.items() if p.get("weight") == 0}
        suspects = [n for n, p in zero.items()
                    if p.get("raw", 0) != 0 and math.isfinite(p.get("raw", 0))]
        out: dict[str, Finding | None] = {}
        for name, p in zero.items():
            raw, why, level = p.get("raw"), None, None
            if p.get("leak", 0) != 0:
                why = f"the loss probe measured {num(p['leak'])} of it in the total"
            elif p.get("scaled", 0) != 0:
                why = f"loss/{name}/scaled is {num(p['scaled'])}"
            elif (raw and gap is not None and math.isfinite(gap[0])
                  and abs(gap[0] - raw) <= self.match_tol * abs(raw)):
                why = (f"total - sum of scaled parts = {num(gap[0])}, its raw value "
                       f"{num(raw)}: it is added unweighted")
            elif (suspects == [name] and gap is not None and gap[1] > 0.01
                  and whole_factor(ctx, parts) is None
                  and math.isfinite(gap[0]) and 0.1 * abs(raw) <= abs(gap[0]) <= 1.05 * abs(raw)):
                why = (f"the total exceeds the sum of scaled parts by {num(gap[0])} "
                       f"({pct(gap[1])}) and it is the only zero-weight part with a non-zero "
                       f"raw value ({num(raw)})")
                level = "warning"
            out[name] = Finding(
                f"loss component '{name}' has weight 0 at step {ctx.step} but {why}",
                subject=name, level=level) if why else None
        return out


class SumGap(Rule):
    """The total loss is not the sum of its weighted components.

    Fires when |loss/total - sum of loss/<name>/scaled| > 1% of |loss/total| (see the
    module docstring for where the gap comes from); clears when it is back under
    0.5% for 3 checks. Warning. Quiet while a leak explains the gap (zero_weight_leak,
    or the loss probe's losses.leak), the total is a whole multiple of the parts
    (loss_total_scaled's) or the probe's own losses.sum_gap alert is out.
    """

    id = "loss_sum_gap"
    keys = KEYS
    history = 8
    covered_by = {"*": ("zero_weight_leak", "losses.leak", "losses.sum_gap",
                        "loss_total_scaled")}
    fire_rel = 0.01
    clear_rel = 0.005
    action = ("The loss you optimise is not the weighted sum you log: a term is added "
              "without its weight, counted twice, or missing from the logged components. "
              "Print every component and the total at this step and compare.")

    def check(self, ctx: Context) -> CheckResult:
        parts = parts_at(ctx)
        gap = gap_at(ctx, parts)
        if gap is None:
            return HOLD
        if whole_factor(ctx, parts) is not None:
            return None  # a whole-factor scale: loss_total_scaled's
        limit = self.clear_rel if ctx.active() else self.fire_rel
        if gap[1] <= limit:
            return None
        by = f"{num(gap[0])} ({pct(gap[1])} of the total)" if math.isfinite(gap[0]) else pct(
            gap[1]) + " of the total"
        return Finding(f"loss/total differs from the sum of the scaled components by {by} at "
                       f"step {ctx.step}")


class ComponentConstant(Rule):
    """A loss component whose value never changes: it is not computed from this batch.

    Per component, `loss/<name>/raw` (the window's mean): fires when the last 3 windows'
    values are identical to 1e-9 relative and non-zero (exactly zero is the loss probe's
    `losses.stuck`). A mean over a window of a function of the model's outputs never
    repeats to nine digits; a cached tensor, a value computed once before the loop or
    a constant placeholder does. Warning while the component's weight is non-zero;
    info while it is 0 (it adds nothing yet, and will add a constant once its weight
    is on: the alert then escalates). Clears at the first window that differs.
    """

    id = "component_constant"
    keys = ("loss/*/raw", "loss/*/weight")
    triggers = ("loss/*/raw",)
    history = 4
    windows = 3
    rel_tol = 1e-9
    clear_after = 1
    action = ("Compute the component from this step's outputs: it is a cached or "
              "precomputed value (a tensor kept from the first batch, a .detach() reused, "
              "a number computed before the loop), so it adds a constant and trains "
              "nothing.")

    def check(self, ctx: Context) -> CheckResult:
        out: dict[str, Finding | None] = {}
        for key in ctx.new:
            m = _PART.match(key)
            if not m or m.group(2) != "raw":
                continue
            values = ctx.recent(key, self.windows)
            name = m.group(1)
            if len(values) < self.windows or values[-1] == 0 or not math.isfinite(values[-1]):
                out[name] = None
                continue
            ref = values[-1]
            same = all(abs(v - ref) <= self.rel_tol * abs(ref) for v in values)
            weight = ctx.last(f"loss/{name}/weight")
            off = weight == 0
            out[name] = Finding(
                f"loss component '{name}' has been {num(ref)} in each of the last "
                f"{self.windows} windows (to step {ctx.step}): it does not depend on the "
                "batch" + (" (its weight is 0 for now)" if off else ""), subject=name,
                level="info" if off else "warning") if same else None
        return out or HOLD


class TotalScaled(Rule):
    """The total loss is a whole multiple (or fraction) of the sum of its parts.

    At each window with `loss/total` and the components' `loss/<name>/scaled`, the
    ratio total / sum(scaled). A term added without its weight, or missing, moves the
    ratio with every batch; a ratio within 0.1% of a whole number k in 2..64 (or of
    1/k) in 2 consecutive windows is a scale factor (window means of k x the parts
    give k to rounding error): with gradient accumulation, the loss not divided by the
    k micro-batches (k), or divided twice (1/k). Critical: the gradient is off by k.
    Clears after 3 windows without it.
    """

    id = "loss_total_scaled"
    level = "critical"
    keys = KEYS
    history = 4
    fire_after = 2
    tolerance = 1e-3
    max_factor = 64
    action = ("With gradient accumulation over k micro-batches, divide the loss by k "
              "exactly once before backward (and pass grad_accum=k to run.losses): an "
              "undivided loss multiplies the gradient, and so the learning rate under SGD "
              "or the clipping threshold under Adam, by k; dividing twice shrinks it by k.")

    def check(self, ctx: Context) -> CheckResult:
        parts = parts_at(ctx)
        if "loss/total" not in ctx.new or not parts:
            return HOLD
        found = whole_factor(ctx, parts, self.tolerance, self.max_factor)
        if found is None:
            return None
        factor, total, sum_parts = found
        times = f"{num(factor)}x" if factor >= 1 else f"1/{round(1 / factor)} of"
        return Finding(f"loss/total {num(total)} is {times} the sum of the scaled components "
                       f"{num(sum_parts)} at step {ctx.step}: the loss is scaled by a whole "
                       "factor")
