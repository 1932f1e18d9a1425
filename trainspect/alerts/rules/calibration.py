"""Confidence that stops matching correctness: calibration drift, confidently wrong."""

from __future__ import annotations

import math

from trainspect.alerts.rule import CheckResult, Context, Finding, Rule
from trainspect.alerts.rules.common import median, stream_of
from trainspect.alerts.stats import num, pct, trend
from trainspect.eval.trends import RECENT_EVALS, drift_floor, gained


class CalibrationDrift(Rule):
    """Expected calibration error rises well above its best while CE stops improving.

    Subjects `eval/ece` and every `<stream>/ece` (e.g. `text/ece`). The value
    compared is the latest eval for `eval/ece`, and the median of the last 5 points
    for a stream (a flush window is noisy). The best is the lowest such value after
    a burn-in (the first 2 evals, the first 20 stream points): a model that barely
    predicts anything is trivially calibrated, so early ECE is not a fair baseline;
    for the eval, the best restarts at each eval with a new lowest `eval/ce`
    (calibration lost while CE still improved is learning, not drift).
    Fires when the value is > 1.2x the best AND more than the sampling noise above it:
    `eval.trends.drift_floor` of the tokens behind the value (`eval/tokens`, or the
    stream's `supervised_tokens` over the smoothed windows), twice the standard
    deviation of the difference of two ECE estimates, at least 0.01. And only while
    the matching CE (`eval/ce`, `<stream>/ce`) is not still improving: CE is a proper
    scoring rule that already charges for miscalibration, so ECE rising while CE falls
    is the model sharpening faster than it gets right (improving: the best CE of the
    last 3 evals / last 5 stream points more than 1% below the best before them).
    Clears when the value is back under 1.1x the best. Warning. `eval/ece` stays quiet
    while the fixed eval's own `eval_calibration_drift` alert is out.
    """

    id = "calibration_drift"
    keys = ("eval/ece", "*/ece", "eval/ce", "*/ce", "eval/tokens", "*/supervised_tokens")
    triggers = ("eval/ece", "*/ece")
    history = 32
    covered_by = {"eval/ece": ("eval_calibration_drift",)}
    clear_after = 2
    rise = 1.2  # fire above this multiple of the best
    clear_rise = 1.1  # clear below this multiple
    burn_in = {"eval": 2, "stream": 20}
    smooth = {"eval": 1, "stream": 5}
    action = ("The model is growing overconfident: finish with a lower learning rate "
              "(0.5x), or average weights (EMA/SWA), or add label smoothing; prefer a "
              "checkpoint near the best ECE if calibration matters downstream.")

    def __init__(self) -> None:
        self._best: dict[str, tuple[float, int]] = {}  # key -> (best smoothed ECE, its step)

    def check(self, ctx: Context) -> CheckResult:
        out: dict[str, Finding | None] = {}
        for key in ctx.new:
            kind = "eval" if key == "eval/ece" else ("stream" if stream_of(key, "ece") else None)
            if kind is None:
                continue
            h = ctx.history(key)
            if h is None or not math.isfinite(ctx.new[key]):
                continue
            n = self.smooth[kind]
            value = median(h.values(n))
            if h.count <= self.burn_in[kind] or not math.isfinite(value):
                out[key] = None
                continue
            prefix = key[: -len("ece")]
            best = self._best.get(key)
            if best is None or value < best[0] or self._new_best_ce(ctx, prefix, kind):
                self._best[key] = best = (value, ctx.step)
            tokens = (ctx.last("eval/tokens") if kind == "eval" else
                      sum(ctx.values(f"{prefix}supervised_tokens", n)))
            floor = drift_floor(tokens if tokens is not None else math.nan)
            active = ctx.active(key)
            drifted = (value > best[0] * (self.clear_rise if active else self.rise)
                       and value - best[0] > floor / (2 if active else 1)
                       and not gained(ctx.values(f"{prefix}ce"), False,
                                      recent=RECENT_EVALS if kind == "eval" else 5))
            out[key] = Finding(
                f"{key} is {num(value)} at step {ctx.step}, {num(value - best[0])} "
                f"({pct(value / best[0] - 1) if best[0] > 0 else 'far'}) above its best "
                f"{num(best[0])} at step {best[1]} (sampling noise: {num(floor)}), while "
                f"{prefix}ce no longer improves", subject=key) if drifted else None
        return out

    @staticmethod
    def _new_best_ce(ctx: Context, prefix: str, kind: str) -> bool:
        """For the eval: whether this eval's CE is the lowest so far (the ECE baseline
        restarts there: calibration lost while CE still improved is not drift)."""
        h = ctx.history(f"{prefix}ce")
        return kind == "eval" and h is not None and h.last is not None and \
            h.last <= h.min and h.last_step == ctx.step


class ConfidentlyWrong(Rule):
    """The model grows more confident in its wrong predictions (`<stream>/conf_gap`).

    conf_gap = target_conf - conf is <= 0 (the label can get at most the top
    probability). Per stream: fires when the median of the last 5 points is < -0.1,
    the slope test (stats.trend: t >= 2 and >= 1% change) over the last 20 points
    says "falling" (the gap widens), and `<stream>/acc`, when logged, is not rising
    over the same points (a model that learns fast is briefly confident before it is
    right, with accuracy rising), nor is `<stream>/teacher_agree` when a teacher is
    observed (a distilled student is confident in its teacher's picks, which may not
    be the labels: that is what it is trained to do). Needs 10 points. Clears when the
    median is back above -0.05 or the gap trend turns rising. Warning.
    """

    id = "confidently_wrong"
    keys = ("*/conf_gap", "*/acc", "*/teacher_agree")
    triggers = ("*/conf_gap",)
    history = 32
    window = 20
    min_points = 10
    fire_gap = -0.1
    clear_gap = -0.05
    action = ("The model puts more probability on its wrong predictions than on the "
              "labels, and increasingly so: check that labels are aligned with the logits "
              "(shifted by one for a causal LM), the chat template and the label masking, "
              "and for label noise; lower the learning rate.")

    def check(self, ctx: Context) -> CheckResult:
        out: dict[str, Finding | None] = {}
        for key in ctx.new:
            stream = stream_of(key, "conf_gap")
            if stream is None:
                continue
            steps, gaps = ctx.tail(key, self.window)
            if gaps.size < self.min_points:
                out[stream] = None
                continue
            now = median(gaps[-5:])
            gap_trend = trend(steps, gaps)
            acc_key = f"{stream}/acc"
            if ctx.active(stream):
                bad = now < self.clear_gap and gap_trend.direction != "rising"
            else:
                bad = now < self.fire_gap and gap_trend.direction == "falling"
                for rising_key in (acc_key, f"{stream}/teacher_agree"):
                    if bad and ctx.has(rising_key):
                        steps_r, values_r = ctx.tail(rising_key, self.window)
                        bad = trend(steps_r, values_r).direction != "rising"
            acc = (f" while {acc_key} is not rising (latest {num(ctx.last(acc_key))})"
                   if ctx.has(acc_key) else "")
            out[stream] = Finding(
                f"{key} is {num(now)} at step {ctx.step} and widening "
                f"({num(gap_trend.change)} over steps {gap_trend.first_step}-"
                f"{gap_trend.last_step}){acc}", subject=stream,
            ) if bad else None
        return out
