"""Pattern x length panel: fixed-eval exact match per prompt pattern and length bin.

From the matrix `eval/pattern_length` (rows: patterns, columns: length bins; a NaN
cell had no examples) at a chosen eval step, or, when the eval wrote no matrix,
from the latest `eval/<pattern>/<length bin>/em` scalars. The weakest cells are
listed: they say which data to add.
"""

from __future__ import annotations

import math
import re

from trainspect.dashboard.panels import reasons
from trainspect.dashboard.panels.base import Data, Panel, Params, finite, int_param
from trainspect.store.reader import RunView

NAME = "patterns"
TITLE = "Pattern x length"
MATRIX = "eval/pattern_length"
WEAKEST = 5
MAX_REPORT_STEPS = 20
_CELL_KEY = re.compile(r"^eval/([^/]+)/([^/]+)/em$")


def claims(key: str) -> bool:
    return _CELL_KEY.match(key) is not None


def from_scalars(view: RunView) -> Data | None:
    """The heatmap from the latest `eval/<pattern>/<bin>/em` values, rows and columns sorted."""
    cells = {}
    for key, value in view.latest_values().items():
        m = _CELL_KEY.match(key)
        if m:
            cells[(m.group(1), m.group(2))] = value
    if not cells:
        return None
    rows = sorted({p for p, _ in cells})
    cols = sorted({b for _, b in cells}, key=_bin_order)
    values = [[cells.get((r, c), math.nan) for c in cols] for r in rows]
    return {"values": values, "row_labels": rows, "col_labels": cols, "step": None}


def _bin_order(label: str) -> tuple[float, str]:
    """Length bins sort by their first number ("0-100" < "100-300" < "2000+")."""
    m = re.match(r"\D*(\d+)", label)
    return (float(m.group(1)) if m else math.inf, label)


def _impl(view: RunView, step: int | None = None) -> Data:
    matrix = view.matrix(MATRIX, step)
    steps = view.matrix_steps(MATRIX)
    source = MATRIX
    if matrix is None:
        matrix, source = from_scalars(view), "scalars"
    if matrix is None:
        return {"empty": True, "steps": [], "values": [], "row_labels": [], "col_labels": [],
                "reason": reasons.fixed_eval(view, "pattern x length results")}
    values = [[finite(v) for v in row] for row in matrix["values"]]
    rows = [str(r) for r in matrix["row_labels"]] or [str(i) for i in range(len(values))]
    cols = [str(c) for c in matrix["col_labels"]] or [str(j) for j in
                                                       range(len(values[0]) if values else 0)]
    cells = [(v, rows[i], cols[j]) for i, row in enumerate(values)
             for j, v in enumerate(row) if v is not None]
    weakest = [{"pattern": p, "length": c, "em": v} for v, p, c in sorted(cells)[:WEAKEST]]
    table = {"columns": ["pattern", *cols],
             "rows": [[rows[i], *row] for i, row in enumerate(values)]}
    return {"empty": False, "source": source, "steps": steps, "step": matrix["step"],
            "values": values, "row_labels": rows, "col_labels": cols, "weakest": weakest,
            "table": table}


def query(view: RunView, params: Params) -> Data:
    return _impl(view, int_param(params, "step", None))


def variants(view: RunView) -> list[dict[str, str]]:
    return [{}] + [{"step": str(s)} for s in view.matrix_steps(MATRIX)[-MAX_REPORT_STEPS:]]


PANEL = Panel(NAME, TITLE, query, variants=variants, claims=claims)
