"""Trends, best checkpoint, drift and gap: planted series, through the store and evaluate."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

import trainspect as ts
from tests.eval.helpers import EOS, CharTokenizer, TableModel, make_table, tid
from trainspect.eval import EvalPoint, FixedEval, best_point, eval_summary, headline, trend
from trainspect.eval.evaluate import evaluate
from trainspect.eval.trends import slope, summarize
from trainspect.records import Scalar


def em_trend(values: list[float], n: int) -> str:
    points = [EvalPoint(step=i, em=v, ce=1.0, acc=0.5, ece=0.1, n=n) for i, v in enumerate(values)]
    return trend([p.em for p in points], [p.se("em") for p in points], higher_is_better=True)


def test_slope_is_least_squares():
    assert slope([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert slope([0.0, 1.0, 0.0, 1.0]) == pytest.approx(0.2)  # hand: sum dx*dy / sum dx^2


@pytest.mark.parametrize(("values", "expected"), [
    ([0.50, 0.60, 0.70, 0.80], "improving"),
    ([0.80, 0.81, 0.79, 0.80], "plateau"),
    ([0.80, 0.75, 0.70, 0.65], "regressing"),
    ([0.20, 0.40, 0.80, 0.80, 0.81, 0.80], "plateau"),  # only the last 4 evals count
    ([0.5, 0.6], "insufficient"),
])
def test_planted_em_series(values, expected):
    assert em_trend(values, n=200) == expected


def test_the_trend_test_accounts_for_eval_noise():
    """+1 point of EM per eval: noise on 100 examples, a real trend on 100,000."""
    series = [0.50, 0.51, 0.52, 0.53]
    # n=100: se ~0.05, slope se ~0.022, 2 se ~0.045 > 0.01
    assert em_trend(series, n=100) == "plateau"
    # n=100000: se ~0.0016, 2 slope se ~0.0014 < 0.01
    assert em_trend(series, n=100_000) == "improving"


def test_ce_falls_means_improving():
    assert trend([2.0, 1.8, 1.6, 1.4], [0.01] * 4, higher_is_better=False) == "improving"
    assert trend([1.4, 1.6, 1.8, 2.0], [0.01] * 4, higher_is_better=False) == "regressing"
    assert trend([1.4, 1.6, 1.8, 2.0], [1.0] * 4, higher_is_better=False) == "plateau"


def test_best_checkpoint_by_em_then_ce_then_earliest():
    points = [EvalPoint(10, em=0.80, ce=1.0, acc=0.5, ece=0.1, n=100, checkpoint="a"),
              EvalPoint(20, em=0.82, ce=0.9, acc=0.5, ece=0.1, n=100, checkpoint="b"),
              EvalPoint(30, em=0.82, ce=0.8, acc=0.5, ece=0.1, n=100, checkpoint="c"),
              EvalPoint(40, em=0.82, ce=0.8, acc=0.5, ece=0.1, n=100, checkpoint="d"),
              EvalPoint(50, em=math.nan, ce=0.1, acc=0.5, ece=0.1, n=100, checkpoint="e")]
    assert best_point(points).checkpoint == "c"
    assert best_point(points, "ce").checkpoint == "e"
    assert best_point(points[:4], "ce").checkpoint == "c"  # ce tie: higher em, then earliest


def test_summary_drift_and_gap():
    points = [EvalPoint(5, em=0.4, ce=1.1, acc=0.5, ece=0.02, n=100, ce_se=0.05),  # burn-in:
              EvalPoint(8, em=0.45, ce=1.1, acc=0.55, ece=0.03, n=100, ce_se=0.05),  # no base
              EvalPoint(10, em=0.5, ce=1.2, acc=0.6, ece=0.10, n=100, ce_se=0.05),
              EvalPoint(20, em=0.6, ce=1.1, acc=0.6, ece=0.08, n=100, ce_se=0.05),
              EvalPoint(30, em=0.6, ce=1.15, acc=0.6, ece=0.11, n=100, ce_se=0.05,
                        checkpoint="ck30")]
    summary = summarize(points, train=("text/ce", 0.7))
    assert summary["ece_best"] == 0.08  # not 0.02: the first two evals are the burn-in
    assert summary["ece_drift"] == pytest.approx(0.375)
    assert summary["calibration_drift"] is True  # 37.5% > 20% and 0.03 > 0.02 (noise)
    assert summary["train_gap"] == pytest.approx(0.45) and summary["train_key"] == "text/ce"
    assert summary["best"] == {"step": 20, "checkpoint": "step 20", "em": 0.6, "ce": 1.1,
                               "acc": 0.6, "ece": 0.08}
    assert summary["evals_since_best"] == 1 and summary["checkpoint"] == "ck30"
    tiny = [EvalPoint(i, em=0.5, ce=1, acc=0.5, ece=e, n=100)
            for i, e in enumerate((0.001, 0.001, 0.001, 0.002))]
    assert summarize(tiny)["calibration_drift"] is False  # +100%, but 0.001 absolute: noise


def test_a_near_zero_best_ece_does_not_make_noise_drift():
    """The demo's case: ECE 0.012 against a best of 0.007 (+71%) on ~800 eval tokens."""
    points = [EvalPoint(s, em=0.0, ce=1.7, acc=0.3, ece=e, n=80, tokens=800, ce_se=0.1)
              for s, e in ((5, 0.1), (8, 0.05), (10, 0.02), (20, 0.007), (30, 0.012))]
    assert summarize(points)["calibration_drift"] is False
    risen = [*points[:4], EvalPoint(30, em=0.0, ce=1.7, acc=0.38, ece=0.05, n=80, tokens=800,
                                    ce_se=0.1)]
    assert summarize(risen)["calibration_drift"] is True  # +0.043: beyond the noise
    # the same rise while CE keeps falling: the model sharpens as it learns, no drift
    falling = [EvalPoint(p.step, em=0.0, ce=ce, acc=p.acc, ece=p.ece, n=80, tokens=800,
                         ce_se=0.01) for p, ce in zip(risen, (2.4, 2.2, 2.0, 1.8, 1.6))]
    assert summarize(falling)["calibration_drift"] is False
    # and never on the second eval, against an untrained model's ECE
    assert summarize(risen[:2])["calibration_drift"] is False


def test_ece_lost_while_ce_improved_is_not_drift_once_the_model_freezes():
    """A run whose learning rate fell to ~0: ECE rose while CE fell, then nothing moved."""
    rows = [(5.2, 0.10), (4.0, 0.12), (3.4, 0.094), (2.98, 0.129), (2.98, 0.129),
            (2.98, 0.129), (2.98, 0.129)]
    points = [EvalPoint(20 * i, em=0.0, ce=ce, acc=0.3, ece=ece, n=50, tokens=700,
                        ce_se=0.1) for i, (ce, ece) in enumerate(rows)]
    summary = summarize(points)
    assert summary["plateau"] is True and summary["calibration_drift"] is False
    assert summary["ece_best"] == 0.129  # the baseline starts at the best CE (step 60)
    worse = [*points, EvalPoint(140, em=0.0, ce=3.1, acc=0.3, ece=0.2, n=50, tokens=700,
                                ce_se=0.1)]
    assert summarize(worse)["calibration_drift"] is True  # after it: drift


def test_drift_floor_is_twice_the_noise_of_a_calibrated_models_ece_difference():
    """Reference: Monte Carlo ECE of a perfectly calibrated model, in float64 numpy."""
    from trainspect.eval.trends import DRIFT_FLOOR, drift_floor

    rng = np.random.default_rng(0)
    for n in (400, 800, 3000):
        conf = rng.uniform(0.1, 1.0, size=(4000, n))
        correct = rng.random((4000, n)) < conf  # calibrated: P(correct) = confidence
        bins = np.minimum((conf * 10).astype(int), 9)
        ece = np.zeros(4000)
        for b in range(10):
            inside = bins == b
            ece += np.abs(((correct - conf) * inside).sum(axis=1))
        ece /= n
        sd_diff = np.std(ece[::2] - ece[1::2])
        floor = drift_floor(n)
        assert floor >= max(DRIFT_FLOOR, 2 * sd_diff)  # a bound, never below the noise
        assert floor <= max(DRIFT_FLOOR, 2.5 * sd_diff)  # and not far above it
        assert np.mean(ece[::2] - ece[1::2] > floor) < 0.05  # two evals rarely differ more
    assert drift_floor(math.nan) == 2 * DRIFT_FLOOR


def test_em_stuck_at_zero_while_ce_and_accuracy_improve_is_not_a_plateau():
    points = [EvalPoint(s, em=0.0, ce=ce, acc=acc, ece=0.05, n=80, ce_se=0.02, acc_se=0.01)
              for s, ce, acc in [(10, 2.4, 0.20), (20, 2.1, 0.26), (30, 1.9, 0.31),
                                 (40, 1.7, 0.35)]]
    summary = summarize(points)
    assert summary["trend"]["em"] == "plateau" and summary["trend"]["ce"] == "improving"
    assert summary["plateau"] is False
    flat = [EvalPoint(s, em=0.0, ce=1.7, acc=0.35, ece=0.05, n=80, ce_se=0.02, acc_se=0.01)
            for s in (10, 20, 30, 40)]
    assert summarize(flat)["plateau"] is True  # nothing moves: that is a plateau


def plant(run, steps, ems, ces, eces, n=100.0):
    now = time.time()
    for step, em, ce, ece in zip(steps, ems, ces, eces):
        run.emit(*(Scalar(f"eval/{k}", step, v, now) for k, v in
                   {"em": em, "ce": ce, "acc": 0.5, "ece": ece, "n": n,
                    "tokens": 100 * n}.items()))


def test_eval_summary_reads_a_planted_run_from_the_store(runs):
    with ts.init(project="tr") as run:
        run.log({"text/ce": 0.9}, step=100)
        run.log({"text/ce": 0.6}, step=400)
        plant(run, [100, 200, 300, 400], [0.50, 0.80, 0.81, 0.80], [0.95, 1.0, 0.96, 0.97],
              [0.05, 0.04, 0.04, 0.06])
    view = ts.open().run(run.id)
    summary = eval_summary(view)
    assert summary["evals"] == 4 and summary["step"] == 400
    assert summary["best"]["step"] == 300 and summary["evals_since_best"] == 1
    assert summary["trend"]["em"] == "improving"  # the window still holds the jump 0.5 -> 0.8
    assert summary["train_gap"] == pytest.approx(0.97 - 0.6)
    assert summary["calibration_drift"] is True
    assert eval_summary(ts.open().run(run.id), name="other") == {"evals": 0}
    line = headline(summary)
    assert "Fixed-eval EM 80.0%" in line and "best 81.0% at step 300" in line


def flip_model(known: int) -> TableModel:
    """Prompt letter i in a..j -> answer letter k+i, then eos; right for the first `known`."""
    nxt = {tid(c): EOS for c in "klmnopqrst"}
    for i, c in enumerate("abcdefghij"):
        nxt[tid(c)] = tid("klmnopqrst"[i]) if i < known else tid("u")
    return TableModel(make_table(nxt))


def flip_eval() -> FixedEval:
    rows = [{"prompt": c, "response": "klmnopqrst"[i]} for i, c in enumerate("abcdefghij")]
    return FixedEval(rows, tokenizer=CharTokenizer())


def test_evaluate_records_trends_best_checkpoint_and_alerts_on_change(runs):
    ev = flip_eval()
    with ts.init(project="tr") as run:
        for step, known in [(100, 1), (200, 4), (300, 7), (400, 7), (500, 7), (600, 7),
                            (700, 7)]:
            result = evaluate(run, flip_model(known), ev, step, checkpoint=f"checkpoint-{step}")
            assert result.em == pytest.approx(known / 10)
    view = ts.open().run(run.id)
    trend_em = dict(view.series("eval/trend/em"))
    # n=10: at 300, +30 points per eval beats 2 slope s.e. (~0.21); at 500 the last four
    # evals (40, 70, 70, 70%) rise 9 points per eval, within 2 s.e. (~0.135): EM is flat
    assert trend_em == {300: 1.0, 400: 1.0, 500: 0.0, 600: 0.0, 700: 0.0}
    assert dict(view.series("eval/best_step"))[700] == 300.0  # same EM and CE: the earliest
    summary = view.meta["eval/summary"]
    assert summary["best"]["checkpoint"] == "checkpoint-300"
    assert summary["checkpoints"]["700"] == "checkpoint-700"
    plateau = [a for a in view.alerts() if a["rule"] == "eval_plateau"]
    # fired once, at the third eval after the last gain (300): at 500 CE was still 1%
    # or more below its best before the last 3 evals
    assert len(plateau) == 1 and plateau[0]["step"] == 600
    assert "checkpoint-300" in plateau[0]["action"]
    assert eval_summary(view)["best"]["checkpoint"] == "checkpoint-300"  # read side agrees


def test_a_resumed_run_continues_its_eval_history(runs):
    ev = flip_eval()
    with ts.init(project="tr") as run:
        evaluate(run, flip_model(9), ev, 100, checkpoint="checkpoint-100")
        evaluate(run, flip_model(5), ev, 200)
    with ts.init(project="tr", resume=run.id) as resumed:
        result = evaluate(resumed, flip_model(3), ev, 300)
    assert result.summary["evals"] == 3
    assert result.summary["best"]["checkpoint"] == "checkpoint-100"


def test_alerts_fire_when_a_condition_starts_and_clear_when_it_ends():
    from trainspect.eval.state import EvalHistory, transition_alerts

    def summary(trend_em: str, drift: bool) -> dict:
        return {"em": 0.5, "ce": 1.0, "ece": 0.2, "ece_best": 0.1, "ece_drift": 1.0,
                "calibration_drift": drift, "evals_since_best": 2,
                "plateau": trend_em == "plateau",
                "trend": {"em": trend_em},
                "best": {"em": 0.6, "checkpoint": "checkpoint-9"}}

    history = EvalHistory()
    fired = transition_alerts(history, summary("regressing", True), "eval", 5,
                              ("reasoning", 0.25), 0.0)
    assert sorted(a.rule for a in fired) == ["eval_calibration_drift", "eval_regressing"]
    assert all(a.state == "fired" and a.level == "warning" for a in fired)
    regress = next(a for a in fired if a.rule == "eval_regressing")
    assert "50.0% now against 60.0% at checkpoint-9" in regress.message
    assert transition_alerts(history, summary("regressing", True), "eval", 6, None, 0.0) == []
    changed = transition_alerts(history, summary("plateau", False), "eval", 7,
                                ("reasoning", 0.25), 0.0)
    assert {(a.rule, a.state) for a in changed} == {
        ("eval_regressing", "cleared"), ("eval_calibration_drift", "cleared"),
        ("eval_plateau", "fired")}
    plateau = next(a for a in changed if a.rule == "eval_plateau")
    assert "'reasoning' prompts (25% EM)" in plateau.action
    assert plateau.level == "info"  # a decision point, not a fault


def test_the_read_side_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, trainspect.eval, trainspect.eval.trends; "
            "from trainspect.eval import FixedEval, eval_summary, regressions; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
