"""An evaluation as store records: scalars, matrices and per-example rows.

Scalars (`<name>` is the FixedEval's name, "eval" by default):

    <name>/em, ce, acc, entropy, conf, target_conf, ece   headline metrics (rates in [0, 1])
    <name>/n, tokens                                       examples and supervised tokens
    <name>/em_se, ce_se, acc_se                            their standard errors (trends.py)
    <name>/<pattern>/em, <name>/<pattern>/<bin>/em         per pattern, per non-empty cell
    <name>/best_step, evals_since_best                     the best eval so far
    <name>/trend/em, trend/ce, trend/acc                   +1 improving, 0 plateau, -1 regressing
    <name>/ece_drift, train_gap                            relative ECE rise; eval CE - train CE

Matrices: <name>/pattern_length (EM, NaN where empty), <name>/pattern_length_seen and
<name>/pattern_length_correct (counts), rows = patterns, columns = length bins; and
<name>/calibration (10 confidence bins x count, sum_conf, sum_correct), as the token
probe's `text/calibration`.

Per-example rows go to the store's `eval_examples` table as `EvalExample` records
(one per example per evaluation, keyed by the example's stable id), so the examples
that regressed since the best checkpoint can be listed (`trends.regressions`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from trainspect.eval.dataset import FixedEval
from trainspect.eval.results import EvalResult
from trainspect.eval.sums import N_BINS
from trainspect.eval.trends import TREND_VALUE
from trainspect.records import Matrix, Scalar

log = logging.getLogger("trainspect.eval")

HEADLINE = ("em", "ce", "acc", "entropy", "conf", "target_conf", "ece", "n", "tokens",
            "em_se", "ce_se", "acc_se")
CALIBRATION_COLUMNS = ["count", "sum_conf", "sum_correct"]


def metric_records(name: str, result: EvalResult, wall_time: float) -> list[Any]:
    step = result.step
    records: list[Any] = [
        Scalar(f"{name}/{key}", step, float(result.metrics[key]), wall_time)
        for key in HEADLINE if key in result.metrics
    ]
    for p, pattern in enumerate(result.patterns):
        seen = sum(result.seen[p])
        if seen:
            records.append(Scalar(f"{name}/{pattern}/em", step, sum(result.correct[p]) / seen,
                                  wall_time))
        for b, label in enumerate(result.length_bins):
            if result.seen[p][b]:
                records.append(Scalar(f"{name}/{pattern}/{label}/em", step,
                                      result.cell_em[p][b], wall_time))
    labels = {"row_labels": list(result.patterns), "col_labels": list(result.length_bins),
              "wall_time": wall_time}
    records += [
        Matrix(f"{name}/pattern_length", step, result.cell_em, **labels),
        Matrix(f"{name}/pattern_length_seen", step, result.seen, **labels),
        Matrix(f"{name}/pattern_length_correct", step, result.correct, **labels),
        Matrix(f"{name}/calibration", step, result.calibration,
               row_labels=[f"{b / N_BINS:.1f}-{(b + 1) / N_BINS:.1f}" for b in range(N_BINS)],
               col_labels=CALIBRATION_COLUMNS, wall_time=wall_time),
    ]
    return records


def trend_records(name: str, step: int, summary: dict[str, Any], wall_time: float
                  ) -> list[Scalar]:
    values: dict[str, float | None] = {
        "best_step": summary["best"]["step"],
        "evals_since_best": summary["evals_since_best"],
        "ece_drift": summary.get("ece_drift"),
        "train_gap": summary.get("train_gap"),
    }
    for metric, word in summary["trend"].items():
        values[f"trend/{metric}"] = TREND_VALUE.get(word)  # None while there are too few evals
    return [Scalar(f"{name}/{key}", step, float(value), wall_time)
            for key, value in values.items() if value is not None and math.isfinite(value)]


def example_records(ev: FixedEval, result: EvalResult, wall_time: float) -> list[Any]:
    """One EvalExample per example, when this trainspect's store has the table for them."""
    try:
        from trainspect.records import EvalExample  # type: ignore[attr-defined]
    except ImportError:
        log.debug("trainspect: the store has no eval_examples table yet; per-example eval "
                  "results are returned, not stored")
        return []
    return [
        EvalExample(
            step=result.step, eval_name=ev.name, example_id=ex.id, pattern=ex.pattern,
            length_bin=ex.length_bin, ref_tokens=ex.ref_tokens, tokens=ex.tokens,
            correct_tokens=ex.correct_tokens, ce=ex.ce, em=ex.em, output=ex.output,
            prompt=ev.rows[ex.index].prompt, reference=ev.rows[ex.index].response,
            checkpoint=result.checkpoint, wall_time=wall_time,
        )
        for ex in result.examples
    ]
