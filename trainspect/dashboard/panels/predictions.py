"""Predictions panel: sampled rows, token by token, predicted against label.

At one sample step (a slider over `RunView.sample_steps()`), or following one
`sample_id` across every step it was sampled at. Positions are normalised here
so the view shows the same fields whatever the probe called them; a position is
"confident wrong" when it is wrong with predicted probability above 0.5.
"""

from __future__ import annotations

from typing import Any

from trainspect.dashboard.panels import reasons
from trainspect.dashboard.panels.base import (
    Data,
    Panel,
    Params,
    finite,
    int_param,
    str_param,
)
from trainspect.store.reader import RunView

NAME = "predictions"
TITLE = "Predictions"
MAX_FOLLOW_STEPS = 100  # the newest steps shown when following one sample
MAX_REPORT_STEPS = 20
CONFIDENT = 0.5

_FIELDS = {
    "pred": ("pred", "predicted", "prediction", "pred_token"),
    "label": ("label", "target", "label_token", "target_token"),
    "pred_prob": ("pred_prob", "pred_conf", "conf", "confidence"),
    "label_prob": ("label_prob", "target_conf", "target_prob"),
    "t": ("t", "index", "position", "pos"),
}


def _first(pos: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if pos.get(name) is not None:
            return pos[name]
    return None


def position(pos: Any, i: int) -> Data:
    """One position as {t, pred, label, pred_prob, label_prob, match, confident_wrong}."""
    if not isinstance(pos, dict):
        pos = {"pred": pos}
    pred, label = _first(pos, _FIELDS["pred"]), _first(pos, _FIELDS["label"])
    t = _first(pos, _FIELDS["t"])
    match = pos.get("match")
    if match is None and pred is not None and label is not None:
        match = pred == label
    pred_prob = _prob(_first(pos, _FIELDS["pred_prob"]))
    return {
        "t": t if isinstance(t, int) else i,
        "pred": None if pred is None else str(pred),
        "label": None if label is None else str(label),
        "pred_prob": pred_prob,
        "label_prob": _prob(_first(pos, _FIELDS["label_prob"])),
        "match": None if match is None else bool(match),
        "confident_wrong": match is not None and not match and (pred_prob or 0.0) > CONFIDENT,
    }


def _prob(value: Any) -> float | None:
    try:
        return finite(value)
    except (TypeError, ValueError):
        return None


def sample(row: dict[str, Any]) -> Data:
    positions = [position(p, i) for i, p in enumerate(row["positions"] or [])]
    judged = [p["match"] for p in positions if p["match"] is not None]
    return {
        "step": row["step"], "stream": row["stream"], "group": row["group"],
        "sample_id": str(row["sample_id"]), "context": str(row["context"]),
        "positions": positions,
        "acc": (sum(judged) / len(judged)) if judged else None,
    }


def _impl(view: RunView, step: int | None = None, stream: str = "",
          sample_id: str = "") -> Data:
    steps = view.sample_steps()
    if not steps:
        return {"empty": True, "steps": [], "rows": [], "streams": [], "sample_ids": [],
                "reason": reasons.predictions(view)}
    if sample_id:
        rows = [r for r in view.samples(stream=stream or None) if str(r["sample_id"]) == sample_id]
        rows = rows[-MAX_FOLLOW_STEPS:]
        shown_step = None
    else:
        shown_step = max([s for s in steps if step is None or s <= step], default=steps[0])
        rows = view.samples(step=shown_step)
    streams = sorted({r["stream"] for r in rows}, key=lambda s: (s != "text", s))
    if stream and not sample_id:
        rows = [r for r in rows if r["stream"] == stream]
    samples = [sample(r) for r in rows]
    ids = sorted({s["sample_id"] for s in samples}) if not sample_id else [sample_id]
    columns = ["step", "stream", "group", "sample_id", "t", "pred", "label", "pred_prob",
               "label_prob", "match"]
    table_rows = [[s["step"], s["stream"], s["group"], s["sample_id"], p["t"], p["pred"],
                   p["label"], p["pred_prob"], p["label_prob"], p["match"]]
                  for s in samples for p in s["positions"]]
    return {"empty": False, "steps": steps, "step": shown_step, "stream": stream,
            "streams": streams, "sample_id": sample_id, "sample_ids": ids, "rows": samples,
            "table": {"columns": columns, "rows": table_rows}}


def query(view: RunView, params: Params) -> Data:
    return _impl(view, int_param(params, "step", None), str_param(params, "stream"),
                 str_param(params, "sample_id"))


def variants(view: RunView) -> list[dict[str, str]]:
    steps = view.sample_steps()
    out: list[dict[str, str]] = [{}] + [{"step": str(s)} for s in steps[-MAX_REPORT_STEPS:]]
    if steps:
        ids = sorted({str(r["sample_id"]) for r in view.samples(step=steps[-1])})
        out += [{"sample_id": i} for i in ids]
    return out


PANEL = Panel(NAME, TITLE, query, variants=variants)
