"""The metric-name contract of docs/architecture.md, parsed: token streams, groups, fixed families.

`<stream>/<metric>` and `<stream>/<group><i>/<metric>` are token metrics when the
metric is one the token probe writes and the first segment is not one of the
fixed families (loss, lora, grad, hidden, speed, mem, eval, sys).
"""

from __future__ import annotations

import re
from typing import NamedTuple

TOKEN_METRICS = (
    "acc", "cond_acc", "conf", "target_conf", "conf_gap", "entropy", "ce", "ce_ema", "ece",
    "confident_wrong", "supervised_tokens", "empty_mask_batches", "teacher_agree", "kl",
    "alpha", "accept_len",
)
FAMILIES = frozenset({"loss", "lora", "grad", "hidden", "speed", "mem", "eval", "train", "lr",
                      "sys"})

_STREAM_KEY = re.compile(r"^([^/]+)/([^/]+)$")
_GROUP_KEY = re.compile(r"^([^/]+)/([A-Za-z_]+?)(\d+)/([^/]+)$")


class TokenKey(NamedTuple):
    stream: str
    group: str  # "" for the stream as a whole
    index: int  # -1 for the stream as a whole
    metric: str


def token_key(key: str) -> TokenKey | None:
    """The parts of a token metric name, or None when `key` is not one."""
    m = _GROUP_KEY.match(key)
    if m and m.group(4) in TOKEN_METRICS and m.group(1) not in FAMILIES:
        return TokenKey(m.group(1), m.group(2), int(m.group(3)), m.group(4))
    m = _STREAM_KEY.match(key)
    if m and m.group(2) in TOKEN_METRICS and m.group(1) not in FAMILIES:
        return TokenKey(m.group(1), "", -1, m.group(2))
    return None


def streams(keys: list[str]) -> list[str]:
    """Token streams present in `keys`, "text" first, then by name."""
    found = {t.stream for t in map(token_key, keys) if t is not None}
    return sorted(found, key=lambda s: (s != "text", s))
