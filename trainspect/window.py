"""What a window's flush hands the flusher: each probe's state, and the 0-d device tensors
`Run.log` kept, as `flush.Part`s whose consumers turn host values into records.

A consumer runs later, on the writer thread: a probe that fails there is switched
off through `on_failure` (`Run.probe_failed`), never raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from trainspect.console import log_alert
from trainspect.flush import Part
from trainspect.probes.base import Probe
from trainspect.records import Alert, Scalar

OnFailure = Callable[[str, str, BaseException], None]  # (probe name, where, error)
PendingTensor = tuple[int, float, str, Any]  # (step, wall time, key, 0-d device tensor)


def probe_part(probe: Probe, step: int, on_failure: OnFailure) -> Part | None:
    """The probe's state tensors, and what makes its records at `step` from their values."""
    try:
        tensors = list(probe.state())
    except Exception as err:
        on_failure(probe.name, "state", err)
        return None

    def consume(arrays: list) -> list:
        try:
            records = probe.compute(arrays, step, time.time())
        except Exception as err:
            on_failure(probe.name, "compute", err)
            return []
        for record in records:
            if isinstance(record, Alert):
                log_alert(record)
        return records

    return Part(tensors, consume)


def tensor_parts(pending: list[PendingTensor]) -> list[Part]:
    """Logged device tensors, stacked per device and dtype: one copy each."""
    groups: dict[tuple, list[PendingTensor]] = {}
    for entry in pending:
        groups.setdefault((entry[3].device, entry[3].dtype), []).append(entry)
    parts = []
    for entries in groups.values():
        import torch

        def consume(arrays: list, entries: list = entries) -> list:
            return [Scalar(key, step, float(v), wall_time)
                    for (step, wall_time, key, _), v in zip(entries, arrays[0].tolist())]

        parts.append(Part([torch.stack([e[3] for e in entries])], consume, reduce=False))
    return parts
