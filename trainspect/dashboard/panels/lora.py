"""LoRA layers panel: which layers adapt most, and since when.

The matrix `lora/layers` holds ||dW||_F per layer (rows) and block (columns: qkv,
o, mlp) at each step it was written. The panel shows a layers x steps heatmap of
each layer's total (sqrt of the blocks' sum of squares: the layer's Frobenius norm)
over time, the top-k layers at the chosen step as bars, and the per-block split.
Without the matrix it falls back to the latest `lora/<layer>/<block>` scalars. A
full fine-tune has no adapters: then the same views show `delta/layers`, each
layer's ‖W - W0‖_F since the watch began.
"""

from __future__ import annotations

import math
import re

from trainspect.dashboard.panels import reasons
from trainspect.dashboard.panels.base import Data, Panel, Params, finite, int_param
from trainspect.store.reader import RunView

NAME = "lora"
TITLE = "LoRA layers"
MATRIX = "lora/layers"
FULL = "delta"  # `delta/layers`, `delta/<layer>/<block>`: trainable weights that are not LoRA
MAX_TIMELINE_STEPS = 120  # heatmap columns; older steps are thinned evenly
_SCALAR = re.compile(r"^(lora|delta)/(.+)/([^/]+)$")


def claims(key: str) -> bool:
    return key.startswith(("lora/", "delta/"))


def layer_norm(blocks: list[float]) -> float:
    """A layer's ||dW||_F from its blocks' (disjoint weights): sqrt of the sum of squares."""
    return math.sqrt(sum(v * v for v in blocks))


def thin(steps: list[int], limit: int) -> list[int]:
    """At most `limit` steps, evenly spread, first and last kept."""
    if len(steps) <= limit:
        return steps
    picks = {round(i * (len(steps) - 1) / (limit - 1)) for i in range(limit)}
    return [steps[i] for i in sorted(picks)]


def _from_scalars(view: RunView, family: str) -> Data | None:
    cells: dict[tuple[str, str], float] = {}
    for key, value in view.latest_values().items():
        m = _SCALAR.match(key)
        if m and m.group(1) == family:
            cells[(m.group(2), m.group(3))] = value
    if not cells:
        return None
    layers = sorted({r for r, _ in cells}, key=_layer_order)
    blocks = sorted({b for _, b in cells})
    return {"step": None, "row_labels": layers, "col_labels": blocks,
            "values": [[cells.get((r, b), 0.0) for b in blocks] for r in layers]}


def _layer_order(label: str) -> tuple[int, str]:
    m = re.search(r"\d+", label)
    return (int(m.group(0)) if m else -1, label)


def _family(view: RunView) -> str:
    """"lora" when the run has adapters, else "delta" (a full fine-tune's weight change)."""
    if MATRIX in view.matrix_names() or any(k.startswith("lora/") for k in view.keys()):
        return "lora"
    return FULL


def _impl(view: RunView, step: int | None = None, top_k: int = 5) -> Data:
    family = _family(view)
    name = f"{family}/layers"
    matrix = view.matrix(name, step)
    source = name
    if matrix is None:
        matrix, source = _from_scalars(view, family), "scalars"
    if matrix is None:
        return {"empty": True, "steps": [], "top": [], "timeline": None,
                "reason": reasons.watched(view, "LoRA data", "lora/")}
    values = [[finite(v) or 0.0 for v in row] for row in matrix["values"]]
    layers = [str(r) for r in matrix["row_labels"]] or [str(i) for i in range(len(values))]
    blocks = [str(c) for c in matrix["col_labels"]] or [
        str(j) for j in range(len(values[0]) if values else 0)]
    totals = [layer_norm(row) for row in values]
    order = sorted(range(len(layers)), key=lambda i: -totals[i])
    top = [{"layer": layers[i], "total": totals[i], "blocks": dict(zip(blocks, values[i]))}
           for i in order[:top_k]]
    steps = view.matrix_steps(name)
    timeline = None
    if source == name and steps:
        shown = thin(steps, MAX_TIMELINE_STEPS)
        columns = []
        for s in shown:
            m = view.matrix(name, s)
            columns.append([layer_norm([finite(v) or 0.0 for v in row]) for row in m["values"]])
        n = max(len(c) for c in columns)
        timeline = {"steps": shown, "row_labels": layers[:n] + [str(i) for i in
                                                               range(len(layers), n)],
                    "values": [[c[i] if i < len(c) else None for c in columns]
                               for i in range(n)]}
    table = {"columns": ["layer", *blocks, "total"],
             "rows": [[layers[i], *values[i], totals[i]] for i in range(len(layers))]}
    note = "" if family == "lora" else "no LoRA adapters: ||W - W0|| of the trained weights"
    return {"empty": False, "source": source, "steps": steps, "step": matrix["step"],
            "layers": layers, "blocks": blocks, "values": values, "totals": totals,
            "top": top, "timeline": timeline, "table": table, "family": family, "note": note}


def query(view: RunView, params: Params) -> Data:
    return _impl(view, int_param(params, "step", None), int_param(params, "top_k", 5, 1, 100))


PANEL = Panel(NAME, TITLE, query, claims=claims)
