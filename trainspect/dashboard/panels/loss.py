"""Loss panel: the training loss, each stream's cross-entropy with its EMA, and entropy.

The EMA (`<stream>/ce_ema`) is drawn over the raw CE so the trend shows through the
noise; entropy (nats) says how unsure the model is in what it predicts.
"""

from __future__ import annotations

from trainspect.dashboard.panels.base import (
    Data,
    Panel,
    Params,
    buckets_param,
    chart,
    charts_data,
)
from trainspect.dashboard.panels.names import streams, token_key
from trainspect.store.reader import RunView

NAME = "loss"
TITLE = "Loss, CE EMA and entropy"
LOSS_KEYS = ("loss", "train/loss", "loss/total", "eval/ce")
LR_KEYS = ("lr", "train/lr", "learning_rate", "train/learning_rate")


def claims(key: str) -> bool:
    t = token_key(key)
    return key in LOSS_KEYS or key in LR_KEYS or (
        t is not None and t.group == "" and t.metric in ("ce", "ce_ema", "entropy"))


def _impl(view: RunView, buckets: int | None = 1000) -> Data:
    have = set(view.keys())
    names = streams(sorted(have))
    ce_keys = [k for s in names for k in (f"{s}/ce", f"{s}/ce_ema")]
    entropy_keys = [f"{s}/entropy" for s in names]
    return charts_data([
        chart("loss", "Loss", view, LOSS_KEYS, buckets, have=have),
        chart("ce", "Cross-entropy and its EMA (nats)", view, ce_keys, buckets, have=have),
        chart("entropy", "Prediction entropy (nats)", view, entropy_keys, buckets, have=have),
        chart("lr", "Learning rate", view, LR_KEYS, buckets, have=have),
    ])


def query(view: RunView, params: Params) -> Data:
    return _impl(view, buckets_param(params))


PANEL = Panel(NAME, TITLE, query, overlay=True, claims=claims)
