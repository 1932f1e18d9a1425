"""`evaluate`: run a FixedEval on the model and record what the run should know.

    result = run.evaluate(model, ev, step=step, checkpoint="checkpoint-15200")

The model is put in eval mode (every submodule's own mode is restored afterwards)
and run without gradients. Teacher-forced CE, token accuracy, entropy and 10-bin ECE
on the response tokens come from the fused token-statistics pass, batch by batch;
exact match from greedy decoding (or, with `em="teacher_forced"`, from the argmax
being right at every response token). Under torch.distributed every rank calls this
with the same arguments: the set is sharded and the sums pooled (distributed.py).

What goes to the store is listed in emit.py; trends and alerts in trends.py and
state.py. The best checkpoint and trend summary is also kept in the run's metadata
under `<name>/summary` (with the checkpoint names by step).

Bad arguments raise TrainspectError before the model is touched. A failure inside
the evaluation (out of memory, a model error) is reported as an alert and logged,
and `evaluate` returns None: an eval never stops training.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from trainspect.errors import TrainspectError
from trainspect.eval.dataset import FixedEval
from trainspect.eval.emit import example_records, metric_records, trend_records
from trainspect.eval.results import EvalResult
from trainspect.eval.state import history_for, latest_train_loss, transition_alerts
from trainspect.eval.trends import HIGHER_IS_BETTER, EvalPoint, summarize, weakest_pattern
from trainspect.records import Alert

log = logging.getLogger("trainspect.eval")

EM_MODES = ("greedy", "teacher_forced")


def evaluate(
    run: Any,
    model: Any,
    ev: FixedEval,
    step: int,
    checkpoint: str | os.PathLike | None = None,
    batch_size: int = 8,
    em: str = "greedy",
    progress: Any = None,
    *,
    best_by: str = "em",
) -> EvalResult | None:
    """Evaluate `model` on `ev` at `step` and record it in `run`; returns the EvalResult.

    Args:
        run: the Run to record into.
        model: a causal LM called as model(input_ids=..., attention_mask=...) (HF or not).
        ev: the FixedEval.
        step: the training step the evaluation belongs to.
        checkpoint: the checkpoint name of these weights (shown as the best checkpoint).
        batch_size: examples per forward.
        em: "greedy" (decode and compare) or "teacher_forced" (argmax right everywhere).
        progress: optional callable(done, total), called after every batch with the
            examples done on this rank.
        best_by: the metric that picks the best checkpoint: em (default), acc, ce or ece.
    """
    _check_arguments(run, model, ev, step, checkpoint, batch_size, em, progress, best_by)
    checkpoint = None if checkpoint is None else os.fspath(checkpoint)
    tokenizer = ev.tokenizer if ev.tokenizer is not None else getattr(run, "tokenizer", None)
    if tokenizer is None:
        raise TrainspectError("evaluate needs a tokenizer: pass `tokenizer=` to FixedEval or "
                              "to ts.init")
    encoded = ev.encode(tokenizer)
    try:
        import torch

        from trainspect.eval.loop import run_pass

        with _eval_mode(model), torch.no_grad():
            pooled, examples = run_pass(model, ev, encoded, tokenizer, batch_size, em, progress)
    except TrainspectError:
        raise
    except Exception as err:
        log.debug("trainspect: fixed eval failed", exc_info=err)
        run.emit(Alert(
            step=step, rule=f"{ev.name}_failed", level="warning",
            message=f"the fixed eval '{ev.name}' failed at step {step} "
                    f"({type(err).__name__}: {err}); training goes on",
            action="Lower `batch_size` if it ran out of memory; otherwise report this with "
                   "the debug log (logging.getLogger('trainspect').setLevel('DEBUG')).",
            wall_time=time.time(),
        ))
        return None

    now = time.time()
    metrics = pooled.metrics()
    result = EvalResult(
        step=step, checkpoint=checkpoint, em_mode=em, metrics=metrics,
        patterns=list(ev.patterns), length_bins=ev.length_bins.labels,
        seen=pooled.seen.tolist(), correct=pooled.correct.tolist(),
        cell_em=pooled.cell_em().tolist(), calibration=pooled.calibration.tolist(),
        examples=examples,
    )
    history = history_for(run, ev.name)
    history.add(EvalPoint(
        step=step, checkpoint=checkpoint,
        **{k: float(metrics.get(k, float("nan")))
           for k in ("em", "ce", "acc", "ece", "n", "em_se", "ce_se", "acc_se", "tokens")},
    ))
    summary = summarize(history.points, best_by, latest_train_loss(run, step))
    scores = {p: {"em": v, "n": sum(row)} for (p, v), row
              in zip(result.pattern_em().items(), result.seen)}
    weakest = weakest_pattern(scores)
    summary.update(patterns=scores, weakest_pattern=weakest,
                   checkpoints=history.checkpoints())
    result = _with_summary(result, summary)
    records = metric_records(ev.name, result, now)
    records += trend_records(ev.name, step, summary, now)
    records += example_records(ev, result, now)
    records += transition_alerts(
        history, summary, ev.name, step,
        (weakest, scores[weakest]["em"]) if weakest else None, now)
    run.emit(*records)
    _set_meta(run, {f"{ev.name}/summary": summary})
    return result


def _with_summary(result: EvalResult, summary: dict[str, Any]) -> EvalResult:
    import dataclasses

    return dataclasses.replace(result, summary=summary)


def _set_meta(run: Any, values: dict[str, Any]) -> None:
    run.set_meta(**values)


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """model.eval() for the block; then each submodule's own training flag comes back."""
    modules = list(model.modules()) if callable(getattr(model, "modules", None)) else []
    modes = [(m, m.training) for m in modules]
    if modules:
        model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _check_arguments(run: Any, model: Any, ev: Any, step: Any, checkpoint: Any,
                     batch_size: Any, em: Any, progress: Any, best_by: Any) -> None:
    if not callable(getattr(run, "emit", None)):
        raise TrainspectError(f"expected `run` to be a trainspect Run, got {type(run).__name__}")
    if not callable(model):
        raise TrainspectError(f"expected `model` to be a callable module, got "
                              f"{type(model).__name__}")
    if not isinstance(ev, FixedEval):
        raise TrainspectError(f"expected `ev` to be a FixedEval, got {type(ev).__name__} "
                              "(build one with ts.FixedEval(path_or_rows, tokenizer=...))")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise TrainspectError(f"expected `step` to be a non-negative int, got {step!r}")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TrainspectError(f"expected `checkpoint` to be a name or path, got {checkpoint!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TrainspectError(f"expected `batch_size` to be a positive int, got {batch_size!r}")
    if em not in EM_MODES:
        raise TrainspectError(f"expected `em` to be one of {EM_MODES}, got {em!r}")
    if progress is not None and not callable(progress):
        raise TrainspectError(f"expected `progress` to be a callable (done, total), "
                              f"got {type(progress).__name__}")
    if best_by not in HIGHER_IS_BETTER:
        raise TrainspectError(f"expected `best_by` to be one of {tuple(HIGHER_IS_BETTER)}, "
                              f"got {best_by!r}")
