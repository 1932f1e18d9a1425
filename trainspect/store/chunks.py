"""Packing scalar points into chunks and reading series back out of them.

A chunk is one key's points from one write: int64 steps, float64 values and float64
wall times, each packed little-endian. Evenly spaced steps (the usual case) are not
stored at all: they are rebuilt from the count and the first and last step.
Decoding is `numpy.frombuffer`, so reading a series costs about as much as copying
its bytes.
"""

from __future__ import annotations

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
    steps: bytes  # empty when the steps are evenly spaced and rising
    vals: bytes
    times: bytes


def pack(steps: np.ndarray, vals: np.ndarray, times: np.ndarray) -> PackedChunk:
    """Pack one key's points (int64 steps, float64 values and times), in logged order."""
    finite = vals[np.isfinite(vals)]
    return PackedChunk(
        n=int(steps.size),
        step_min=int(steps.min()),
        step_max=int(steps.max()),
        vmin=float(finite.min()) if finite.size else None,
        vmax=float(finite.max()) if finite.size else None,
        vlast=float(vals[-1]),
        ordered=bool(np.all(steps[1:] > steps[:-1])),
        steps=encode_steps(steps),
        vals=vals.astype(_FLOAT, copy=False).tobytes(),
        times=times.astype(_FLOAT, copy=False).tobytes(),
    )


def encode_steps(steps: np.ndarray) -> bytes:
    """Steps as packed int64, or nothing when they are evenly spaced and rising."""
    n = steps.size
    if n >= 2:
        stride = int(steps[1]) - int(steps[0])
        if stride > 0 and int(steps[-1]) - int(steps[0]) == stride * (n - 1) and bool(
                np.all(np.diff(steps) == stride)):
            return b""
    return steps.astype(_STEP, copy=False).tobytes()


def decode_steps(blob: bytes, n: int, step_min: int, step_max: int) -> np.ndarray:
    if blob or n == 0:
        return np.frombuffer(blob, _STEP)
    if n == 1:
        return np.array([step_min], _STEP)
    return np.arange(n, dtype=_STEP) * ((step_max - step_min) // (n - 1)) + step_min


ChunkRow = tuple[bytes, bytes, int, int, int]  # steps, vals, n, step_min, step_max


def decode(rows: list[ChunkRow]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate chunks given in write (`seq`) order; the newest write wins per step.

    The common case (every chunk's steps above the last one's) is a plain
    concatenation; otherwise a stable sort by step keeps, for each step, the value
    written last, so a resumed run that went back in steps shows its newer attempt
    where the two overlap.
    """
    if not rows:
        return np.empty(0, _STEP), np.empty(0, _FLOAT)
    step_parts = [decode_steps(s, n, lo, hi) for s, _, n, lo, hi in rows]
    val_parts = [np.frombuffer(v, _FLOAT) for _, v, _, _, _ in rows]
    steps = step_parts[0] if len(rows) == 1 else np.concatenate(step_parts)
    vals = val_parts[0] if len(rows) == 1 else np.concatenate(val_parts)
    ranges_rise = all(b[3] > a[4] for a, b in zip(rows, rows[1:]))
    if steps.size < 2 or (ranges_rise and all(
            not s or bool(np.all(p[1:] > p[:-1])) for (s, *_), p in zip(rows, step_parts))):
        return steps, vals
    order = np.argsort(steps, kind="stable")  # ties keep write order
    steps, vals = steps[order], vals[order]
    last_of_step = np.append(steps[1:] != steps[:-1], True)
    return steps[last_of_step], vals[last_of_step]


def downsample(
    steps: np.ndarray, vals: np.ndarray, buckets: int
) -> list[tuple[int, float, float]]:
    """Min and max per bucket of equal step width, so spikes survive the zoom-out.

    Bucket b holds the steps s with (s - first) * buckets // (last - first) == b (the
    last step joins the last bucket). Returns `(first_step_in_bucket, min, max)` per
    non-empty bucket; NaN is ignored unless a bucket holds nothing else, and inf
    counts as the spike it is. With no more points than buckets, every point comes
    back as `(step, v, v)`.
    """
    n = steps.size
    if n == 0:
        return []
    if n <= buckets:
        return [(s, v, v) for s, v in zip(steps.tolist(), vals.tolist())]
    lo, hi = int(steps[0]), int(steps[-1])
    index = np.minimum((steps - lo) * buckets // max(hi - lo, 1), buckets - 1)
    starts = np.flatnonzero(np.append(True, index[1:] != index[:-1]))  # steps are sorted
    mins = np.fmin.reduceat(vals, starts)
    maxs = np.fmax.reduceat(vals, starts)
    return list(zip(steps[starts].tolist(), mins.tolist(), maxs.tolist()))
