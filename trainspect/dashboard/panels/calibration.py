"""Calibration panel: a reliability diagram from the binned matrix, and ECE over time.

The matrix `<stream>/calibration` has one row per confidence bin and the columns
count, sum_conf, sum_correct. A bin's mean confidence is sum_conf / count and its
accuracy sum_correct / count; the expected calibration error is the count-weighted
mean gap, sum_b count_b / N * |acc_b - conf_b|. A well-calibrated model's bins lie
on the diagonal.
"""

from __future__ import annotations

from trainspect.dashboard.panels import reasons
from trainspect.dashboard.panels.base import (
    ClientError,
    Data,
    Panel,
    Params,
    buckets_param,
    chart,
    int_param,
    str_param,
)
from trainspect.store.reader import RunView

NAME = "calibration"
TITLE = "Calibration"
SUFFIX = "/calibration"
MAX_REPORT_STEPS = 20


def claims(key: str) -> bool:
    return key.endswith("/ece")


def reliability(values: list[list[float]]) -> tuple[list[Data], float | None, int]:
    """Per-bin (index, count, conf, acc) and the ECE, from rows [count, sum_conf, sum_correct]."""
    bins, total, gap = [], 0.0, 0.0
    for i, row in enumerate(values):
        count, sum_conf, sum_correct = (float(x) for x in row[:3])
        if count > 0:
            conf, acc = sum_conf / count, sum_correct / count
            total += count
            gap += count * abs(acc - conf)
        else:
            conf = acc = None
        bins.append({"bin": i, "count": count, "conf": conf, "acc": acc,
                     "lo": i / len(values), "hi": (i + 1) / len(values)})
    return bins, (gap / total if total > 0 else None), int(total)


def _streams(view: RunView) -> list[str]:
    names = [n[: -len(SUFFIX)] for n in view.matrix_names() if n.endswith(SUFFIX)]
    return sorted(names, key=lambda s: (s != "text", s))


def _impl(view: RunView, stream: str = "", step: int | None = None,
          buckets: int | None = 1000) -> Data:
    names = _streams(view)
    ece_keys = [k for k in view.keys() if k.endswith("/ece")]
    ece_chart = chart("ece", "Expected calibration error over time", view, ece_keys, buckets)
    if not names:
        return {"empty": ece_chart is None, "streams": [], "stream": "", "steps": [],
                "bins": [], "charts": [ece_chart] if ece_chart else [],
                "reason": None if ece_chart else reasons.calibration(view)}
    stream = stream or names[0]
    if stream not in names:
        raise ClientError(f"no calibration matrix for stream {stream!r}; streams: {names}", 404)
    matrix = view.matrix(stream + SUFFIX, step)
    steps = view.matrix_steps(stream + SUFFIX)
    bins, ece, tokens = reliability(matrix["values"]) if matrix else ([], None, 0)
    table = {"columns": ["bin", "lo", "hi", "count", "conf", "acc"],
             "rows": [[b["bin"], b["lo"], b["hi"], b["count"], b["conf"], b["acc"]]
                      for b in bins]}
    return {"empty": False, "streams": names, "stream": stream, "steps": steps,
            "step": matrix["step"] if matrix else None, "bins": bins, "ece": ece,
            "tokens": tokens, "charts": [ece_chart] if ece_chart else [], "table": table}


def query(view: RunView, params: Params) -> Data:
    return _impl(view, str_param(params, "stream"), int_param(params, "step", None),
                 buckets_param(params))


def variants(view: RunView) -> list[dict[str, str]]:
    out: list[dict[str, str]] = [{}]
    for s in _streams(view):
        steps = view.matrix_steps(s + SUFFIX)[-MAX_REPORT_STEPS:]
        out += [{"stream": s, "step": str(step)} for step in steps]
    return out


PANEL = Panel(NAME, TITLE, query, overlay=False, variants=variants, claims=claims)
