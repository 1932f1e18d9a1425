"""Held-out progress: the fixed eval plateaus, regresses, or drifts away from train (overfitting).

Eval metrics are few points far apart, so these rules keep every eval they saw
(bounded at `history`) and decide from the last few evals, not from a time window.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from trainspect.alerts.rule import HOLD, CheckResult, Context, Finding, Rule
from trainspect.alerts.rules.common import LOSS_KEYS, main_loss, median
from trainspect.alerts.stats import finite, num
from trainspect.eval.trends import CE_MIN_GAIN, RECENT_EVALS

HIGHER_IS_BETTER = {"eval/em": True, "eval/ce": False}


def _best(values: np.ndarray, higher: bool) -> int:
    """Index of the best finite value (the earliest of equals)."""
    masked = np.where(np.isfinite(values), values, -np.inf if higher else np.inf)
    return int(np.argmax(masked) if higher else np.argmin(masked))


def _where(ctx: Context, step: int) -> str:
    name = ctx.checkpoint(step)
    return f"step {step} ({name})" if name else f"step {step}"


class EvalPlateau(Rule):
    """The fixed eval stopped improving: EM and CE alike.

    Reads `eval/em` (higher is better) and `eval/ce` (lower is better). A metric is
    flat when, with at least 4 evals, the best of its last 3 evals is no better than
    the best before them by more than 0.005 EM (absolute) or 1% CE (relative), and not
    worse by more than 0.02 EM / 5% CE either (that is `regression`). The plateau needs
    every eval metric the run logs to be flat: EM moves in whole examples and can sit
    at 0 for many evals while CE falls, and a metric that has never left 0 says nothing
    (EM is then not judged). Info: a plateau is a decision point, not a fault. Clears
    at the first eval that improves on the best. Subject: the headline metric (EM once
    it has been above 0, else CE). Quiet while the fixed eval's own `eval_plateau`
    alert is out (runs that evaluate with `run.evaluate` get that one).
    """

    id = "plateau"
    level = "info"
    keys = ("eval/em", "eval/ce")
    history = 256
    covered_by = {"*": ("eval_plateau",)}
    patience = RECENT_EVALS  # evals without improvement
    clear_after = 1
    em_delta = 0.005  # EM must rise by more than this (absolute) to count as improvement
    ce_rel_delta = CE_MIN_GAIN  # CE must fall by more than this share to count
    action = ""

    def check(self, ctx: Context) -> CheckResult:
        if not any(k in ctx.new for k in self.keys):
            return HOLD
        h = ctx.history("eval/em")
        em_moved = h is not None and h.max > 0
        judged = [k for k in self.keys if ctx.has(k) and (k != "eval/em" or em_moved)]
        if not judged:
            return HOLD
        subject = judged[0]
        flats = [self._flat(ctx, k) for k in judged]
        if not all(flats):
            return {subject: None}
        return {subject: self._finding(ctx, subject, judged)}

    def _flat(self, ctx: Context, key: str) -> bool:
        values = ctx.tail(key)[1]
        if finite(values).size < self.patience + 1:
            return False
        higher = HIGHER_IS_BETTER[key]
        before, recent = values[: -self.patience], values[-self.patience:]
        b, r = before[_best(before, higher)], recent[_best(recent, higher)]
        if higher:
            return bool(b - 0.02 <= r <= b + self.em_delta)
        return bool(b * (1 - self.ce_rel_delta) <= r <= b * 1.05)

    def _finding(self, ctx: Context, key: str, judged: list[str]) -> Finding:
        steps, values = ctx.tail(key)
        best_i = _best(values, HIGHER_IS_BETTER[key])
        where = _where(ctx, int(steps[best_i]))
        also = [k for k in judged if k != key]
        others = f" ({', '.join(also)} flat too)" if also else ""
        return Finding(
            f"{key} has not improved for {self.patience} evals (latest {num(values[-1])}, "
            f"best {num(values[best_i])} at {where}){others}", subject=key,
            action=f"Diminishing returns: consider stopping and keeping the checkpoint from "
                   f"{where}. To go further, add data for the weakest patterns (`trainspect "
                   f"doctor` lists them) or change the schedule (lower LR, longer decay).")


class EvalRegression(Rule):
    """The fixed-eval metric got worse than its best and stayed there.

    Subjects `eval/em` and `eval/ce`. With at least 3 evals, fires when the last 2
    evals are both worse than the best before them: EM lower by more than 0.02
    (absolute), CE higher by more than 5% (relative). Warning. Hysteresis: once
    fired, it clears only when the latest eval is back within 0.01 EM / 2.5% CE of
    the best. Quiet while the fixed eval's own `eval_regressing` alert is out.
    """

    id = "regression"
    keys = ("eval/em", "eval/ce")
    history = 256
    covered_by = {"*": ("eval_regressing",)}
    clear_after = 1
    em_drop = 0.02
    ce_rise = 0.05
    action = ""

    def check(self, ctx: Context) -> CheckResult:
        out: dict[str, Finding | None] = {}
        for key in ("eval/em", "eval/ce"):
            if key in ctx.new:
                out[key] = self._check_key(ctx, key)
        return out or HOLD

    def _check_key(self, ctx: Context, key: str) -> Finding | None:
        steps, values = ctx.tail(key)
        if finite(values).size < 3:
            return None
        higher = HIGHER_IS_BETTER[key]
        active = ctx.active(key)
        recent = values[-1:] if active else values[-2:]
        before = values[: -len(recent)]
        best_i = _best(before, higher)
        best = before[best_i]
        if higher:
            margin = self.em_drop / 2 if active else self.em_drop
            worse = bool(np.all(recent < best - margin))
        else:
            margin = self.ce_rise / 2 if active else self.ce_rise
            worse = bool(np.all(recent > best * (1 + margin)))
        if not worse:
            return None
        where = _where(ctx, int(steps[best_i]))
        return Finding(
            f"{key} fell to {num(values[-1])} from its best {num(best)} at {where} "
            f"({len(recent)} evals in a row worse)" if higher else
            f"{key} rose to {num(values[-1])} from its best {num(best)} at {where} "
            f"({len(recent)} evals in a row worse)", subject=key,
            action=f"Training now hurts held-out quality: keep the checkpoint from {where}; "
                   f"lower the learning rate, add regularisation or more varied data before "
                   f"training further.")


class Overfitting(Rule):
    """The gap between eval and train cross-entropy keeps growing while train keeps falling.

    At each `eval/ce` point, gap = eval/ce - train CE, where train CE is the median of
    the last 5 `text/ce` points at or before the eval (else the main loss). Fires
    with at least 3 evals when, over the last 3 evals: the gap rose at each eval, by
    >= 0.05 nats in total, to >= max(0.1 nats, 10% of train CE); train CE fell; and
    the latest eval/ce is no better than the best before. Warning. Clears at the
    first eval that breaks the pattern.
    """

    id = "overfitting"
    keys = ("eval/ce", "text/ce", *LOSS_KEYS)
    triggers = ("eval/ce",)
    history = 64
    clear_after = 1
    min_gap = 0.1  # nats
    min_rel_gap = 0.1  # of train CE
    min_growth = 0.05  # nats over the last 3 evals

    def __init__(self) -> None:
        self._evals: deque[tuple[int, float, float]] = deque(maxlen=16)  # step, eval, train
        self._best_eval = np.inf

    def check(self, ctx: Context) -> CheckResult:
        train_key = "text/ce" if ctx.has("text/ce") else main_loss(ctx)
        eval_ce = ctx.new["eval/ce"]
        if train_key is None or not np.isfinite(eval_ce):
            return HOLD
        steps, values = ctx.tail(train_key)
        train = median(values[steps <= ctx.step][-5:])
        if not np.isfinite(train):
            return HOLD
        best_before = self._best_eval
        self._best_eval = min(self._best_eval, eval_ce)
        self._evals.append((ctx.step, eval_ce, train))
        if len(self._evals) < 3:
            return None
        (s0, e0, t0), (_, e1, t1), (_, e2, t2) = list(self._evals)[-3:]
        g0, g1, g2 = e0 - t0, e1 - t1, e2 - t2
        growing = g0 < g1 < g2 and g2 - g0 >= self.min_growth
        if not (growing and g2 >= max(self.min_gap, self.min_rel_gap * t2) and t2 < t0
                and eval_ce >= best_before):
            return None
        return Finding(
            f"eval/ce - {train_key} grew from {num(g0)} to {num(g2)} over the last 3 evals "
            f"(steps {s0}-{ctx.step}) while {train_key} kept falling ({num(t0)} -> {num(t2)}) "
            f"and eval/ce stopped improving (best {num(best_before)}): the model is "
            "memorising the training data",
            action="Keep the checkpoint with the best eval/ce and stop; then add or "
                   "deduplicate data, regularise (dropout, weight decay), lower the "
                   "learning rate or train fewer epochs.")
