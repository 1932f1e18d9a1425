"""What the trainer callbacks share: argument checks, the fixed eval, and Run methods that
another engineer may not have wired yet (`watch`, `evaluate`), reached either way."""

from __future__ import annotations

import functools
import importlib
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


def method_or_function(run: Any, name: str, module: str) -> Any:
    """`run.<name>` if Run has it, else the module-level function behind it."""
    method = getattr(run, name, None)
    if callable(method):
        return method
    return functools.partial(getattr(importlib.import_module(module), name), run)


