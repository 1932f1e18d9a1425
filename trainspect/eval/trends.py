"""Is the fixed eval still improving? Best checkpoint, trends, calibration drift, train gap.

Pure functions over the evaluations of a run (no torch): `evaluate` calls them with
the points it holds, and `eval_summary(view)` calls them with the points in a run's
store, for the doctor, the dashboard and notebooks.

The rules, in full:

- Best checkpoint: the highest EM (or the chosen metric: em and acc higher is better,
  ce and ece lower), ties broken by the lower CE (for em/acc/ece) or the higher EM
  (for ce), then by the earlier step.
- Trend of a metric: the least-squares slope b of its last `TREND_WINDOW` values
  (at least `MIN_TREND_POINTS`) against the eval index 0, 1, 2, ... is compared with
  its noise. Each eval's standard error s_i is the binomial sqrt(p(1-p)/n) for EM
  (p Laplace-smoothed, (k+1)/(n+2), so 0% and 100% are not noiseless), and the standard
  error of the per-example mean for CE and token accuracy. With s^2 the mean of the
  s_i^2, the slope's standard error is s / sqrt(sum_i (x_i - mean x)^2). The trend is
  "improving" when the slope in the good direction exceeds `TREND_Z` standard errors,
  "regressing" when it is that far in the bad direction, else "plateau"; stored as
  +1 / 0 / -1 (`eval/trend/em`). A change smaller than the eval's own sampling noise
  is a plateau: with 80 examples EM must move by several points per eval to count.
- CE still improving: its trend is "improving", or the best CE of the last
  `RECENT_EVALS` evals is more than `CE_MIN_GAIN` (1%) below the best before them. The
  slope test above treats each eval as a fresh sample of examples, but a fixed eval
  scores the same examples every time, so a steady fall smaller than the per-example
  spread is still real: the gain over the best is the second, direct test.
- Plateau: the EM trend is "plateau", the token-accuracy trend is not "improving" and
  CE is not still improving. EM moves in whole examples: on a small model it can sit
  at 0% for many evals while CE and accuracy improve steadily, and that is learning,
  not a plateau.
- Calibration drift: ECE more than `DRIFT_RATIO` (20%) above its best (lowest) value
  since the eval with the lowest CE, leaving out the first `DRIFT_BURN_IN` evals (a
  model that barely predicts is trivially calibrated, so its early ECE is no
  baseline); more than `drift_floor(tokens)` above it in absolute terms (a relative
  change of a near-zero ECE is not drift); and CE not still improving. CE is a proper
  scoring rule that already charges for miscalibration: an ECE that rises while CE
  falls is the model sharpening faster than it gets right, part of learning; drift is
  what happens after CE stopped improving. The floor is twice the standard deviation
  of the difference of two ECE estimates on the eval's supervised tokens (see
  `drift_floor`), never below `DRIFT_FLOOR`. `eval/ece_drift` stores the relative rise
  (0.35 = 35% above the best).
- Train/eval gap: the eval CE minus the latest training CE at or before the eval step
  (`text/ce`, else `loss`, else `train/loss`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainspect.errors import TrainspectError

TREND_WINDOW = 4  # evals the slope is fitted over
MIN_TREND_POINTS = 3  # fewer evals than this: no trend yet
TREND_Z = 2.0  # slopes within this many standard errors of 0 are a plateau
DRIFT_RATIO = 0.20  # ECE this far above its best is calibration drift ...
DRIFT_BURN_IN = 2  # the first evals are not a baseline for calibration (see the doc)
DRIFT_FLOOR = 0.01  # ... if also at least this far above it in absolute terms (see drift_floor)
RECENT_EVALS = 3  # evals whose best is compared with the best before them
CE_MIN_GAIN = 0.01  # CE more than this share below the earlier best is still improving
TREND_VALUE = {"improving": 1, "plateau": 0, "regressing": -1}
HIGHER_IS_BETTER = {"em": True, "acc": True, "ce": False, "ece": False}
TREND_METRICS = ("em", "ce", "acc")
TRAIN_KEYS = ("text/ce", "loss", "train/loss")
POINT_KEYS = ("em", "ce", "acc", "ece", "n", "em_se", "ce_se", "acc_se", "tokens")


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation's headline numbers (NaN where unknown)."""

    step: int
    em: float
    ce: float
    acc: float
    ece: float
    n: float
    em_se: float = math.nan
    ce_se: float = math.nan
    acc_se: float = math.nan
    checkpoint: str | None = None
    tokens: float = math.nan  # supervised tokens the ECE was measured on


    def se(self, metric: str) -> float:
        if metric == "em" and not math.isfinite(self.em_se) and self.n > 0:
            k = self.em * self.n
            p = (k + 1.0) / (self.n + 2.0)
            return math.sqrt(p * (1.0 - p) / self.n)
        return float(getattr(self, f"{metric}_se", math.nan))


def slope(values: Sequence[float]) -> float:
    """Least-squares slope of `values` against 0, 1, 2, ..."""
    y = np.asarray(values, dtype=np.float64)
    x = np.arange(y.size, dtype=np.float64)
    dx = x - x.mean()
    return float((dx * (y - y.mean())).sum() / (dx * dx).sum())


def trend(values: Sequence[float], ses: Sequence[float], higher_is_better: bool = True,
          window: int = TREND_WINDOW, z: float = TREND_Z) -> str:
    """"improving", "plateau", "regressing", or "insufficient" (see the module docstring)."""
    pairs = [(v, s) for v, s in zip(values, ses) if math.isfinite(v)][-window:]
    if len(pairs) < MIN_TREND_POINTS:
        return "insufficient"
    ys = [v for v, _ in pairs]
    noise = [s * s for _, s in pairs if math.isfinite(s)]
    s = math.sqrt(sum(noise) / len(noise)) if noise else 0.0
    x = np.arange(len(ys), dtype=np.float64)
    slope_se = s / math.sqrt(float(((x - x.mean()) ** 2).sum()))
    b = slope(ys) * (1.0 if higher_is_better else -1.0)
    if b > z * slope_se:
        return "improving"
    if b < -z * slope_se:
        return "regressing"
    return "plateau"


def gained(values: Sequence[float], higher_is_better: bool, recent: int = RECENT_EVALS,
           min_gain: float = CE_MIN_GAIN) -> bool:
    """Whether the best of the last `recent` values (all but the first while there are
    fewer) beats the best before them by more than `min_gain` of its size."""
    finite = [v for v in values if math.isfinite(v)]
    recent = min(recent, len(finite) - 1)  # early on: the evals since the first
    if recent < 1:
        return False
    before, last = finite[:-recent], finite[-recent:]
    if higher_is_better:
        return max(last) > max(before) + min_gain * abs(max(before))
    return min(last) < min(before) - min_gain * abs(min(before))


def since_best_ce(points: Sequence[EvalPoint]) -> Sequence[EvalPoint]:
    """The evals from the one with the lowest CE on (all of them when CE is unknown),
    with the burn-in evals kept in front so that slicing them off still works."""
    ces = [(p.ce, i) for i, p in enumerate(points) if math.isfinite(p.ce)]
    if not ces:
        return points
    start = max(min(ces)[1], DRIFT_BURN_IN)
    return [*points[:DRIFT_BURN_IN], *points[start:]]


def drift_floor(tokens: float) -> float:
    """The smallest ECE rise that is more than sampling noise on `tokens` eval tokens.

    ECE = sum_b |S_b| / n with S_b = sum over bin b of (correct - confidence). For a
    calibrated model each correct is Bernoulli(confidence), so Var(S_b) <= n_b / 4 and
    Var|S_b| = (1 - 2/pi) Var(S_b): the ECE's standard deviation is at most
    sqrt(1 - 2/pi) * 0.5 / sqrt(n) = 0.30 / sqrt(n). The difference of two evals has
    sqrt(2) times that; a rise counts when it is over twice that standard deviation
    (0.85 / sqrt(n): 0.030 on 800 tokens, 0.0085 on 10,000) and at least DRIFT_FLOOR.
    Unknown `tokens` (an old run) gives 2 x DRIFT_FLOOR.
    """
    if not (tokens > 0):
        return 2 * DRIFT_FLOOR
    sd = math.sqrt(1.0 - 2.0 / math.pi) * 0.5 / math.sqrt(tokens)
    return max(DRIFT_FLOOR, 2.0 * math.sqrt(2.0) * sd)


def best_point(points: Sequence[EvalPoint], metric: str = "em") -> EvalPoint:
    """The best evaluation by `metric`, with the tie-breaks of the module docstring."""
    if metric not in HIGHER_IS_BETTER:
        raise TrainspectError(f"expected `metric` to be one of {tuple(HIGHER_IS_BETTER)}, "
                              f"got {metric!r}")
    if not points:
        raise TrainspectError("no evaluations to choose the best from")
    tie = "em" if metric == "ce" else "ce"

    def goodness(point: EvalPoint, name: str) -> float:
        value = getattr(point, name)
        if not math.isfinite(value):
            return -math.inf
        return value if HIGHER_IS_BETTER[name] else -value

    return max(points, key=lambda p: (goodness(p, metric), goodness(p, tie), -p.step))


def summarize(points: Sequence[EvalPoint], metric: str = "em",
              train: tuple[str, float] | None = None) -> dict[str, Any]:
    """Best checkpoint, trends, drift and gap of evaluations sorted by step (JSON-ready)."""
    if not points:
        return {"evals": 0}
    last = points[-1]
    best = best_point(points, metric)
    since = sum(1 for p in points if p.step > best.step)
    trends = {}
    for name in TREND_METRICS:
        trends[name] = trend([getattr(p, name) for p in points], [p.se(name) for p in points],
                             HIGHER_IS_BETTER[name])
    eces = [p.ece for p in since_best_ce(points)[DRIFT_BURN_IN:] if math.isfinite(p.ece)]
    ece_best = min(eces) if eces else math.nan
    drift = math.nan
    drifting = False
    if math.isfinite(last.ece) and math.isfinite(ece_best):
        drift = (last.ece - ece_best) / ece_best if ece_best > 0 else 0.0
        drifting = (last.ece > ece_best * (1 + DRIFT_RATIO)
                    and last.ece - ece_best > drift_floor(last.tokens))
    ce_improving = trends["ce"] == "improving" or gained([p.ce for p in points], False)
    plateau = trends["em"] == "plateau" and trends["acc"] != "improving" and not ce_improving
    drifting = drifting and not ce_improving
    gap = None
    if train is not None and math.isfinite(last.ce) and math.isfinite(train[1]):
        gap = last.ce - train[1]
    return {
        "evals": len(points),
        "step": last.step,
        "checkpoint": last.checkpoint,
        **{k: _finite(getattr(last, k)) for k in ("em", "ce", "acc", "ece", "n")},
        "best_by": metric,
        "best": {"step": best.step, "checkpoint": best.checkpoint or f"step {best.step}",
                 **{k: _finite(getattr(best, k)) for k in ("em", "ce", "acc", "ece")}},
        "evals_since_best": since,
        "trend": trends,
        "plateau": plateau,
        "ece_best": _finite(ece_best),
        "ece_drift": _finite(drift),
        "calibration_drift": drifting,
        "train_key": train[0] if train is not None else None,
        "train_gap": _finite(gap) if gap is not None else None,
    }


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


# ---- the read side: a run's store -------------------------------------------------------

def eval_points(view: Any, name: str = "eval") -> list[EvalPoint]:
    """The evaluations stored in a run, one per step (the newest write wins), by step."""
    series = {}
    for key in POINT_KEYS:
        steps, vals = view.arrays(f"{name}/{key}")
        series[key] = dict(zip(steps.tolist(), vals.tolist()))
    checkpoints = (view.meta.get(f"{name}/summary") or {}).get("checkpoints") or {}
    points = []
    for step in sorted(series["em"]):
        values = {k: series[k].get(step, math.nan) for k in POINT_KEYS}
        points.append(EvalPoint(step=step, checkpoint=checkpoints.get(str(step)), **values))
    return points


def train_loss(view: Any, step: int) -> tuple[str, float] | None:
    """(key, value) of the latest training CE at or before `step`, if the run logged one."""
    for key in TRAIN_KEYS:
        steps, vals = view.arrays(key)
        upto = np.nonzero(steps <= step)[0]
        if upto.size:
            return key, float(vals[upto[-1]])
    return None


def pattern_scores(view: Any, name: str = "eval", step: int | None = None
                   ) -> dict[str, dict[str, float]]:
    """{pattern: {"em", "n"}} from the pattern x length counts at `step` (default latest)."""
    seen = view.matrix(f"{name}/pattern_length_seen", step)
    correct = view.matrix(f"{name}/pattern_length_correct", step)
    if seen is None or correct is None:
        return {}
    out = {}
    for label, s_row, c_row in zip(seen["row_labels"], seen["values"], correct["values"]):
        n = float(sum(s_row))
        out[label] = {"n": n, "em": (float(sum(c_row)) / n) if n else None}
    return out


def weakest_pattern(scores: dict[str, dict[str, Any]], min_examples: int = 5) -> str | None:
    """The pattern with the lowest EM among those with at least `min_examples` (else any)."""
    rated = {k: v for k, v in scores.items() if v["em"] is not None}
    enough = {k: v for k, v in rated.items() if v["n"] >= min_examples} or rated
    if not enough:
        return None
    return min(enough, key=lambda k: (enough[k]["em"], -enough[k]["n"]))


def eval_summary(view: Any, name: str = "eval", metric: str = "em") -> dict[str, Any]:
    """Everything the doctor and the dashboard say about a run's fixed eval, from its store.

    Keys: evals, step, checkpoint, em, ce, acc, ece, n, best {step, checkpoint, em, ...},
    best_by, evals_since_best, trend {em, ce, acc}, plateau, ece_best, ece_drift,
    calibration_drift, train_key, train_gap, patterns {name: {em, n}}, weakest_pattern.
    `{"evals": 0}` when the run has no evaluation.
    """
    points = eval_points(view, name)
    if not points:
        return {"evals": 0}
    summary = summarize(points, metric, train_loss(view, points[-1].step))
    scores = pattern_scores(view, name)
    summary["patterns"] = scores
    summary["weakest_pattern"] = weakest_pattern(scores)
    return summary


def regressions(view: Any, name: str = "eval", since_step: int | None = None,
                step: int | None = None) -> list[dict[str, Any]]:
    """Examples exactly matched at `since_step` (default: the best eval) and not at `step`
    (default: the latest), with their prompt, reference and both outputs."""
    if not callable(getattr(view, "eval_examples", None)):
        raise TrainspectError("this store has no per-example eval results (it predates them)")
    points = eval_points(view, name)
    if not points:
        return []
    since_step = best_point(points).step if since_step is None else since_step
    step = points[-1].step if step is None else step
    before = {r["example_id"]: r for r in view.eval_examples(step=since_step, eval_name=name)}
    now = view.eval_examples(step=step, eval_name=name)
    out = []
    for row in now:
        then = before.get(row["example_id"])
        if then is not None and then["em"] and not row["em"]:
            out.append({**row, "output_then": then["output"], "since_step": since_step})
    return out


def headline(summary: dict[str, Any]) -> str:
    """One line: 'Fixed-eval EM 81.5% (plateau; best 82.0% at checkpoint-15200) ...'."""
    if not summary.get("evals") or summary.get("em") is None:
        return "no fixed-eval results yet"
    best = summary["best"]
    trend_em = summary["trend"]["em"]
    state = trend_em if trend_em != "insufficient" else "too few evals for a trend"
    since = summary["evals_since_best"]
    ago = f", {since} evals ago" if since else ""
    parts = [f"Fixed-eval EM {summary['em']:.1%} ({state}; best {best['em']:.1%} at "
             f"{best['checkpoint']}{ago})"]
    weakest = summary.get("weakest_pattern")
    if weakest and summary.get("patterns", {}).get(weakest, {}).get("em") is not None:
        parts.append(f"weakest pattern '{weakest}' at {summary['patterns'][weakest]['em']:.0%}")
    if summary.get("ece") is not None:
        drift = " (drifting)" if summary.get("calibration_drift") else ""
        parts.append(f"ECE {summary['ece']:.3f}{drift}")
    if summary.get("train_gap") is not None:
        parts.append(f"eval-train CE gap {summary['train_gap']:+.3f}")
    return "; ".join(parts)
