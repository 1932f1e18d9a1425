"""Packing scalar points into chunks and reading series back out of them.

A chunk is one key's points from one write: int64 steps, float64 values and float64
wall times, each packed little-endian. Decoding is `numpy.frombuffer`, so reading a
series costs about as much as copying its bytes.
"""

from __future__ import annotations

import math
import sys
from array import array
from dataclasses import dataclass

import numpy as np

_STEP = np.dtype("<i8")
_FLOAT = np.dtype("<f8")


@dataclass(frozen=True)
class PackedChunk:
    """One key's points ready for a `scalar_chunks` row."""

    n: int
    step_min: int
    step_max: int
    vmin: float | None
    vmax: float | None
    vlast: float
    ordered: bool  # steps strictly increasing within the chunk
    steps: bytes
    vals: bytes
    times: bytes


def _le_bytes(typecode: str, values: list) -> bytes:
    packed = array(typecode, values)
    if sys.byteorder == "big":  # the file format is little-endian everywhere
        packed.byteswap()
    return packed.tobytes()


def pack(steps: list[int], vals: list[float], times: list[float]) -> PackedChunk:
    """Pack one key's points, in the order they were logged."""
    finite = [v for v in vals if math.isfinite(v)]
    return PackedChunk(
        n=len(steps),
        step_min=min(steps),
        step_max=max(steps),
        vmin=min(finite) if finite else None,
        vmax=max(finite) if finite else None,
        vlast=vals[-1],
        ordered=all(a < b for a, b in zip(steps, steps[1:])),
        steps=_le_bytes("q", steps),
        vals=_le_bytes("d", vals),
        times=_le_bytes("d", times),
    )


def decode(rows: list[tuple[bytes, bytes]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (steps, vals) blobs given in write order; newest write wins per step.

    Rows must come in `seq` order. The common case (every step newer than the last)
    is a plain concatenation; otherwise a stable sort by step keeps, for each step,
    the value written last, so a resumed run that went back in steps shows its
    newer attempt where the two overlap.
    """
    if not rows:
        return np.empty(0, _STEP), np.empty(0, _FLOAT)
    steps = np.concatenate([np.frombuffer(s, _STEP) for s, _ in rows])
    vals = np.concatenate([np.frombuffer(v, _FLOAT) for _, v in rows])
    if steps.size < 2 or bool(np.all(steps[1:] > steps[:-1])):
        return steps, vals
    order = np.argsort(steps, kind="stable")  # ties keep write order
    steps, vals = steps[order], vals[order]
    last_of_step = np.append(steps[1:] != steps[:-1], True)
    return steps[last_of_step], vals[last_of_step]


def downsample(
    steps: np.ndarray, vals: np.ndarray, buckets: int
) -> list[tuple[int, float, float]]:
    """Min and max per bucket of equal step width, so spikes survive the zoom-out.

    Returns `(first_step_in_bucket, min, max)` per non-empty bucket; NaN is ignored
    unless a bucket holds nothing else, and inf counts as the spike it is. With no
    more points than buckets every point comes back as `(step, v, v)`.
    """
    n = steps.size
    if n == 0:
        return []
    if n <= buckets:
        return [(int(s), float(v), float(v)) for s, v in zip(steps.tolist(), vals.tolist())]
    lo, hi = int(steps[0]), int(steps[-1])
    width = (hi - lo) / buckets or 1.0
    index = np.minimum(((steps - lo) / width).astype(np.int64), buckets - 1)
    starts = np.flatnonzero(np.append(True, index[1:] != index[:-1]))  # steps are sorted
    mins = np.fmin.reduceat(vals, starts)
    maxs = np.fmax.reduceat(vals, starts)
    return list(zip(steps[starts].tolist(), mins.tolist(), maxs.tolist()))
