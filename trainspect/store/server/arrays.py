"""Points between numpy and PostgreSQL arrays, and splitting a chunk into blocks.

PostgreSQL's binary array format is a small header then, per element, its length
(int32) and its big-endian bytes. numpy builds and reads that layout with one
structured dtype, so a block of points crosses the wire without a Python float
ever being made: `F8Array`/`I8Array` wrap prebuilt bytes for COPY, and the
loaders registered by `register_numpy` turn binary `float8[]`/`int8[]` results
into numpy arrays.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

FLOAT8_OID, FLOAT8_ARRAY_OID = 701, 1022
INT8_OID, INT8_ARRAY_OID = 20, 1016
_F8_ELEMENTS = np.dtype([("length", ">i4"), ("value", ">f8")])
_I8_ELEMENTS = np.dtype([("length", ">i4"), ("value", ">i8")])
_HEADER = struct.Struct(">iiiii")  # ndim, has-nulls flag, element oid, length, lower bound
_EMPTY_HEADER = struct.Struct(">iii")


class F8Array(bytes):
    """A float8[] already in PostgreSQL's binary array format."""


class I8Array(bytes):
    """An int8[] already in PostgreSQL's binary array format."""


def _elements(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    out = np.empty(values.size, dtype)
    out["length"] = 8
    out["value"] = values
    return out


def _pack(elements: np.ndarray, oid: int) -> bytes:
    if elements.size == 0:
        return _EMPTY_HEADER.pack(0, 0, oid)
    return _HEADER.pack(1, 0, oid, elements.size, 1) + elements.tobytes()


def f8_array(values: np.ndarray) -> F8Array:
    return F8Array(_pack(_elements(values, _F8_ELEMENTS), FLOAT8_OID))


def i8_array(values: np.ndarray) -> I8Array:
    return I8Array(_pack(_elements(values, _I8_ELEMENTS), INT8_OID))


def read_array(data: Any, dtype: np.dtype) -> np.ndarray:
    """A binary one-dimensional array without NULLs as a native-endian numpy array."""
    ndim = int.from_bytes(data[0:4], "big")
    if ndim == 0:
        return np.empty(0, dtype["value"].newbyteorder("="))
    count = int.from_bytes(data[12:16], "big")
    body = np.frombuffer(data, dtype, count=count, offset=20)
    return body["value"].astype(dtype["value"].newbyteorder("="))


def register_numpy(conn: Any) -> None:
    """Let `conn` send F8Array/I8Array and read binary float8[]/int8[] as numpy arrays."""
    from psycopg.adapt import Dumper, Loader
    from psycopg.pq import Format

    class F8Dumper(Dumper):
        format = Format.BINARY
        oid = FLOAT8_ARRAY_OID

        def dump(self, obj: bytes) -> bytes:
            return obj

    class I8Dumper(F8Dumper):
        oid = INT8_ARRAY_OID

    class F8Loader(Loader):
        format = Format.BINARY

        def load(self, data: Any) -> np.ndarray:
            return read_array(data, _F8_ELEMENTS)

    class I8Loader(Loader):
        format = Format.BINARY

        def load(self, data: Any) -> np.ndarray:
            return read_array(data, _I8_ELEMENTS)

    conn.adapters.register_dumper(F8Array, F8Dumper)
    conn.adapters.register_dumper(I8Array, I8Dumper)
    conn.adapters.register_loader(FLOAT8_ARRAY_OID, F8Loader)
    conn.adapters.register_loader(INT8_ARRAY_OID, I8Loader)


@dataclass(frozen=True)
class Blocks:
    """One chunk's points cut into blocks of at most `size` consecutive points."""

    n: np.ndarray  # points per block
    first: np.ndarray  # each block's first step (in write order)
    stride: np.ndarray  # >0: steps evenly spaced by it (not stored); 0: stored
    summary: tuple[I8Array, I8Array, F8Array, F8Array]  # first, last, min, max per block
    steps: list[I8Array | None]
    vals: list[F8Array]
    sub_min: list[F8Array]  # per block, the min and max of each sub-block
    sub_max: list[F8Array]


def min_max(vals: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of each run of `vals` beginning at `starts`, ignoring NaN (NaN if all are)."""
    nan = np.isnan(vals)
    mins = np.minimum.reduceat(np.where(nan, np.inf, vals), starts)
    maxs = np.maximum.reduceat(np.where(nan, -np.inf, vals), starts)
    all_nan = np.logical_and.reduceat(nan, starts)
    mins[all_nan] = np.nan
    maxs[all_nan] = np.nan
    return mins, maxs


def split_blocks(steps: np.ndarray, vals: np.ndarray, size: int, sub: int) -> Blocks:
    """Cut one chunk (in write order) into blocks of `size` points, each with its step
    range, min and max, and the min and max of its sub-blocks of `sub` points."""
    n = steps.size
    starts = np.arange(0, n, size)
    ends = np.minimum(starts + size, n)
    counts = ends - starts
    mins, maxs = min_max(vals, starts)
    sub_mins, sub_maxs = min_max(vals, np.arange(0, n, sub))
    sub_min_elems = _elements(sub_mins, _F8_ELEMENTS)
    sub_max_elems = _elements(sub_maxs, _F8_ELEMENTS)
    first, last = steps[starts], steps[ends - 1]
    even = _evenly_spaced(steps, starts, ends)
    stride = np.where(even, np.where(counts > 1, (last - first) // np.maximum(counts - 1, 1), 1),
                      0)
    # Each block's arrays are byte slices of four buffers built once (12 bytes an element).
    step_bytes = None if even.all() else _elements(steps, _I8_ELEMENTS).tobytes()
    val_bytes = _elements(vals, _F8_ELEMENTS).tobytes()
    sub_min_bytes, sub_max_bytes = sub_min_elems.tobytes(), sub_max_elems.tobytes()
    out_steps, out_vals, out_sub_min, out_sub_max = [], [], [], []
    for i0, i1, is_even in zip(starts.tolist(), ends.tolist(), even.tolist()):
        head = _HEADER.pack(1, 0, FLOAT8_OID, i1 - i0, 1)
        out_steps.append(None if is_even else I8Array(
            _HEADER.pack(1, 0, INT8_OID, i1 - i0, 1) + step_bytes[12 * i0:12 * i1]))
        out_vals.append(F8Array(head + val_bytes[12 * i0:12 * i1]))
        s0, s1 = i0 // sub, -(-i1 // sub)
        sub_head = _HEADER.pack(1, 0, FLOAT8_OID, s1 - s0, 1)
        out_sub_min.append(F8Array(sub_head + sub_min_bytes[12 * s0:12 * s1]))
        out_sub_max.append(F8Array(sub_head + sub_max_bytes[12 * s0:12 * s1]))
    summary = (i8_array(first), i8_array(last), f8_array(mins), f8_array(maxs))
    return Blocks(counts, first, stride, summary, out_steps, out_vals, out_sub_min, out_sub_max)


def _evenly_spaced(steps: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per block: are its steps rising by one fixed stride (so they need not be stored)?"""
    if steps.size < 2:
        return np.ones(starts.size, bool)
    diffs = np.diff(steps)
    # A block is even when every diff inside it equals its first diff and that is > 0.
    first_diff = np.where(ends - starts > 1, diffs[np.minimum(starts, diffs.size - 1)], 1)
    index = np.repeat(np.arange(starts.size), ends - starts)[1:]  # block of diff i: of point i+1
    inside = index == np.repeat(np.arange(starts.size), ends - starts)[:-1]
    bad = inside & (diffs != first_diff[index])
    uneven = np.zeros(starts.size, bool)
    np.logical_or.at(uneven, index[bad], True)
    return ~uneven & (first_diff > 0)
