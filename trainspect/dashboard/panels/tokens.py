"""Token metrics panel: one stream's accuracy, confidence, calibration... per position or codebook.

For the chosen stream, one chart per metric overlays the stream as a whole with
each group member (`draft/pos<i>/acc`, `audio/cb<i>/acc`), and a table holds the
latest value of every metric per group member: the position or codebook that
holds the rest back stands out there.
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
    charts_data,
    finite,
    str_param,
)
from trainspect.dashboard.panels.names import TOKEN_METRICS, streams, token_key
from trainspect.store.reader import RunView

NAME = "tokens"
TITLE = "Token metrics"
MAX_GROUP_SERIES = 32  # members drawn per chart; the table lists them all


def claims(key: str) -> bool:
    return token_key(key) is not None


def _impl(view: RunView, stream: str = "", buckets: int | None = 1000) -> Data:
    keys = view.keys()
    names = streams(keys)
    if not names:
        return charts_data([], streams=[], stream="", groups=[], table=None,
                           reason=reasons.tokens(view))
    stream = stream or names[0]
    if stream not in names:
        raise ClientError(f"no token stream {stream!r} in this run; it has {names}", 404)
    parsed = [(k, t) for k in keys if (t := token_key(k)) is not None and t.stream == stream]
    metrics = [m for m in TOKEN_METRICS if any(t.metric == m for _, t in parsed)]
    members = sorted({(t.group, t.index) for _, t in parsed if t.index >= 0})
    have = set(keys)
    charts = []
    for metric in metrics:
        chosen = [f"{stream}/{metric}"] + [f"{stream}/{g}{i}/{metric}"
                                           for g, i in members[:MAX_GROUP_SERIES]]
        labels = {f"{stream}/{g}{i}/{metric}": f"{g}{i}" for g, i in members}
        labels[f"{stream}/{metric}"] = "all"
        charts.append(chart(f"{stream}/{metric}", f"{stream} {metric}", view, chosen, buckets,
                            labels=labels, have=have))
    latest = view.latest_values()
    columns = ["metric", "all"] + [f"{g}{i}" for g, i in members]
    rows = []
    for metric in metrics:
        row = [metric, finite(latest.get(f"{stream}/{metric}"))]
        row += [finite(latest.get(f"{stream}/{g}{i}/{metric}")) for g, i in members]
        rows.append(row)
    fused = stream in reasons.fused_streams(keys)
    return charts_data(charts, streams=names, stream=stream,
                       groups=[f"{g}{i}" for g, i in members],
                       table={"columns": columns, "rows": rows},
                       note="from per-token log-probabilities: the model gave no logits, so "
                            "no confidence, calibration or samples" if fused else "")


def query(view: RunView, params: Params) -> Data:
    return _impl(view, str_param(params, "stream"), buckets_param(params))


def variants(view: RunView) -> list[dict[str, str]]:
    return [{"stream": s} for s in streams(view.keys())] or [{}]


PANEL = Panel(NAME, TITLE, query, overlay=True, variants=variants, claims=claims)
