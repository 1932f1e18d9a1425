"""The fixed eval: exact match, CE and calibration on held-out prompts, by pattern and length,
with the best checkpoint and whether the run is still improving.

    ev = ts.FixedEval("fixed_eval.jsonl", tokenizer=tok, max_samples=2000)
    run.evaluate(model, ev, step=step, checkpoint="checkpoint-15200")

    from trainspect.eval import eval_summary            # the read side: no torch
    eval_summary(ts.open().run(run_id))["best"]["checkpoint"]

Importing this package does not import torch, so the doctor and the dashboard can
use `eval_summary`. The evaluation itself (which needs torch) is
`trainspect.eval.evaluate.evaluate`, behind `Run.evaluate`; it is not re-exported
here, because the submodule of the same name would shadow it.
"""

from __future__ import annotations

from trainspect.eval.dataset import EvalRow, FixedEval, as_fixed_eval
from trainspect.eval.patterns import DEFAULT_PATTERNS, DEFAULT_RULES, LengthBins
from trainspect.eval.results import EvalResult, ExampleResult
from trainspect.eval.trends import (
    EvalPoint,
    best_point,
    eval_summary,
    headline,
    regressions,
    summarize,
    trend,
)

__all__ = [
    "DEFAULT_PATTERNS",
    "DEFAULT_RULES",
    "EvalPoint",
    "EvalResult",
    "EvalRow",
    "ExampleResult",
    "FixedEval",
    "LengthBins",
    "as_fixed_eval",
    "best_point",
    "eval_summary",
    "headline",
    "regressions",
    "summarize",
    "trend",
]

