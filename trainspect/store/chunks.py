"""Packing scalar points into chunks and reading series back out of them.

A chunk is one key's points from one write: int64 steps, float64 values and float64
wall times, each packed little-endian. Evenly spaced steps (the usual case) are not
stored at all: they are rebuilt from the count and the first and last step.
Decoding is `numpy.frombuffer`, so reading a series costs about as much as copying
its bytes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

_STEP = np.dtype("<i8")
_FLOAT = np.dtype("<f8")


Points = tuple[np.ndarray, np.ndarray, np.ndarray]  # int64 steps, float64 values, times


class Packed(NamedTuple):
    """Keys' points packed for `scalar_chunks` rows: one list per column, one item per key
    (`vmin`/`vmax` None when a key has no finite value, `vlast` None for NaN: SQLite
    would store a NaN REAL as NULL anyway)."""

    n: list[int]
    step_min: list[int]
    step_max: list[int]
    vmin: list[float | None]
    vmax: list[float | None]
    vlast: list[float | None]
    ordered: list[bool]  # steps strictly increasing within the chunk
    steps: list[bytes]  # empty when the steps are evenly spaced and rising
    vals: list[bytes]
    times: list[bytes]


def pack_many(keys: list[Points]) -> Packed:
    """Pack many keys' points, each key's in logged order, in one vectorised pass.

    A flush of a watched model brings a few hundred keys of one point each: numpy
    calls per key would hold the writer thread (and the GIL) for milliseconds. Here
    the points are laid end to end; each chunk's statistics come from `reduceat` and
    cumulative sums over the key boundaries, its bytes from slices of one buffer.
    Steps that are evenly spaced and rising are not stored (`decode_steps`).
    """
    if not keys:
        return Packed([], [], [], [], [], [], [], [], [], [])
    counts = np.fromiter((k[0].size for k in keys), np.int64, len(keys))
    if not counts.all():
        raise ValueError("cannot pack a key with no points")
    steps = np.concatenate([k[0] for k in keys]).astype(_STEP, copy=False)
    vals = np.concatenate([k[1] for k in keys]).astype(_FLOAT, copy=False)
    times = np.concatenate([k[2] for k in keys]).astype(_FLOAT, copy=False)
    ends = np.cumsum(counts)
    starts = ends - counts
    finite = np.isfinite(vals)
    none = ~np.logical_or.reduceat(finite, starts)
    vmin = np.minimum.reduceat(np.where(finite, vals, np.inf), starts).astype(object)
    vmax = np.maximum.reduceat(np.where(finite, vals, -np.inf), starts).astype(object)
    vmin[none] = vmax[none] = None
    vlast = vals[ends - 1].astype(object)
    vlast[np.isnan(vals[ends - 1])] = None
    even = _evenly_spaced(steps, counts, starts, ends)
    bounds = np.column_stack([8 * starts, 8 * ends]).tolist()
    step_bytes, val_bytes, time_bytes = steps.tobytes(), vals.tobytes(), times.tobytes()
    return Packed(
        n=counts.tolist(), step_min=np.minimum.reduceat(steps, starts).tolist(),
        step_max=np.maximum.reduceat(steps, starts).tolist(), vmin=vmin.tolist(),
        vmax=vmax.tolist(), vlast=vlast.tolist(),
        ordered=pairs_hold(steps[1:] > steps[:-1], starts, ends).tolist(),
        steps=[b"" if e else step_bytes[a:b] for e, (a, b) in zip(even, bounds)],
        vals=[val_bytes[a:b] for a, b in bounds], times=[time_bytes[a:b] for a, b in bounds])


def _evenly_spaced(steps: np.ndarray, counts: np.ndarray, starts: np.ndarray,
                   ends: np.ndarray) -> list[bool]:
    """Per key: at least two steps, rising by one stride that int64 holds."""
    multi = counts >= 2
    if not multi.any():
        return [False] * len(counts)
    stride = np.zeros(len(counts), np.int64)
    stride[multi] = steps[starts[multi] + 1] - steps[starts[multi]]
    even = multi & (stride > 0) & pairs_hold(
        np.diff(steps) == np.repeat(stride, counts)[:-1], starts, ends)
    out = even.tolist()
    for i in np.flatnonzero(even).tolist():  # once more in Python ints: int64 may wrap
        first, last = steps[starts[i]].item(), steps[ends[i] - 1].item()
        out[i] = last - first == stride[i].item() * (counts[i].item() - 1)
    return out


def pairs_hold(ok: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per key, whether `ok` holds for every pair of neighbouring points inside it
    (`ok[j]` is about laid-out points j and j + 1; pairs across keys are skipped)."""
    failed = np.concatenate(([0], np.cumsum(~ok)))
    return failed[ends - 1] == failed[starts]


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
