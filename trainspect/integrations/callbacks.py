"""What the trainer callbacks share: argument checks, the fixed eval, and Run methods that
another engineer may not have wired yet (`watch`, `evaluate`), reached either way."""

from __future__ import annotations

import os
from typing import Any

from trainspect.errors import TrainspectError


def positive_ints(**values: Any) -> None:
    """Raise a clear error for a value that is neither None nor a positive int."""
    for argument, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise TrainspectError(f"expected `{argument}` to be a positive int, got {value!r}")


def fixed_eval_of(value: Any) -> Any:
    """A FixedEval from a FixedEval or a JSONL path; None stays None."""
    if value is None:
        return None
    from trainspect.eval import FixedEval

    if isinstance(value, FixedEval):
        return value
    if isinstance(value, (str, os.PathLike)):
        return FixedEval(value)
    raise TrainspectError(f"expected `fixed_eval` to be a FixedEval or a JSONL path, got "
                          f"{type(value).__name__}")


def start_watching(callback: Any, model: Any) -> None:
    """Attach `watch` (when asked) and the logits capture to `model` for `callback`, or
    with `fused_loss` the loss without logits (integrations/fused_loss.py)."""
    from trainspect.integrations.capture import LogitsCapture

    if callback.watch:
        options = callback.watch if isinstance(callback.watch, dict) else {}
        callback._watch = callback.run.watch(model, **options)
    if getattr(callback, "fused_loss", False) and use_fused_loss_on(callback, model):
        return
    callback.capture = LogitsCapture(callback.run, model, callback._step, stream=callback.stream,
                                     shift=callback.shift_labels).attach()


def use_fused_loss_on(callback: Any, model: Any) -> bool:
    """Patch `model` with the fused loss for `callback`; False (and one alert) when the
    model is not of a supported family, so the logits capture is used instead."""
    from trainspect.integrations.fused_loss import use_fused_loss

    options = callback.fused_loss if isinstance(callback.fused_loss, dict) else {}
    try:
        callback._fused = use_fused_loss(model, callback.run, step_of=callback._step,
                                         stream=callback.stream, **options)
    except TrainspectError as err:
        callback.run.alert(f"fused_loss is off: {err}", level="warning",
                           action="Drop fused_loss=True for this model; its logits are "
                                  "observed from the forward instead.")
        return False
    return True


def fused_loss_option(value: Any) -> Any:
    """`fused_loss=` of the callbacks: a bool, or a dict of use_fused_loss's options."""
    if isinstance(value, bool) or (isinstance(value, dict) and set(value) <= {"max_chunk_bytes"}):
        return value
    raise TrainspectError(f"expected `fused_loss` to be True, False or a dict with "
                          f"'max_chunk_bytes', got {value!r}")


def stop_watching(callback: Any) -> None:
    """Detach what `start_watching` attached and finish the run."""
    if getattr(callback, "_fused", None) is not None:
        callback._fused.remove()
        callback._fused = None
    if callback.capture is not None:
        callback.capture.remove()
        callback.capture = None
    if callback._watch is not None:
        callback._watch.remove()
        callback._watch = None
    if callback.run is not None:
        callback.run.finish()


def hold_settings(callback: Any, project: str, name: str | None, config: Any, dir: Any, *,
                  fixed_eval: Any, fixed_eval_every: int | None, eval_batch_size: int,
                  watch: Any, stream: str, shift_labels: bool | None,
                  init_kwargs: dict[str, Any]) -> None:
    """Check and keep what both callbacks take: ts.init's arguments and their own."""
    positive_ints(fixed_eval_every=fixed_eval_every, eval_batch_size=eval_batch_size)
    callback.project, callback.name, callback.config, callback.dir = project, name, config, dir
    callback.init_kwargs = init_kwargs
    callback.fixed_eval = fixed_eval_of(fixed_eval)
    callback.fixed_eval_every = fixed_eval_every
    callback.eval_batch_size = eval_batch_size
    callback.watch = watch
    callback.stream = stream
    callback.shift_labels = shift_labels
    callback.run = None
    callback.capture = None
    callback._watch = None
