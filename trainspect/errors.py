"""The one error type trainspect raises, so callers can catch ours and only ours, and
the helper that puts any value into a message."""

from __future__ import annotations

from typing import Any


class TrainspectError(Exception):
    """Bad input or an unusable store: the message names the argument, file or line."""


def safe_repr(value: Any, limit: int = 10_000) -> str:
    """repr(value), shortened; a __repr__ that raises is named instead of raising."""
    try:
        return repr(value)[:limit]
    except Exception as err:
        return f"<unrepresentable {type(value).__name__}: {type(err).__name__}>"
