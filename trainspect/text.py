"""Numbers as people read them in messages, tables and the terminal."""

from __future__ import annotations

import math


def number(value: float | None) -> str:
    """4 significant digits (scientific outside 1e-3..1e5); NaN and inf stay visible."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.3e}"
