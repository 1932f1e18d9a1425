"""Turning the team store's rows into what a run view returns: points, samples, alerts.

Pure functions over query results (and `PartialLatest`, a mapping of latest values
that reads the rest only when asked), used by `view.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


class PartialLatest(Mapping):
    """Latest values known for some keys (bulk-read headline keys), the rest on demand."""

    def __init__(self, known: dict[str, float], complete_for: frozenset[str],
                 load: Any) -> None:
        self._known = known
        self._complete_for = complete_for
        self._load = load
        self._all: dict[str, float] | None = None

    def _full(self) -> dict[str, float]:
        if self._all is None:
            self._all = self._load()
        return self._all

    def __contains__(self, key: object) -> bool:
        if self._all is None and key in self._complete_for:
            return key in self._known
        return key in self._full()

    def __getitem__(self, key: str) -> float:
        if self._all is None and key in self._known:
            return self._known[key]
        return self._full()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._full())

    def __len__(self) -> int:
        return len(self._full())

    def __repr__(self) -> str:
        return f"PartialLatest({self._all if self._all is not None else self._known!r})"


def one_block_steps(steps: np.ndarray | None, n: int, first: int, stride: int) -> np.ndarray:
    if steps is not None:
        return steps
    return np.arange(n, dtype=np.int64) * stride + first


def block_steps(stored: list, n: list[int], first: list[int], stride: list[int]) -> np.ndarray:
    """The steps of consecutive blocks: first + i * stride, or the block's stored steps."""
    counts = np.asarray(n, np.int64)
    starts = np.cumsum(counts) - counts
    index = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)
    steps = np.repeat(np.asarray(first, np.int64), counts) + index * np.repeat(
        np.asarray(stride, np.int64), counts)
    for i, given in enumerate(stored):
        if given is not None:
            steps[starts[i]:starts[i] + counts[i]] = given
    return steps


def newest_per_step(steps: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted by step, one value per step: the one written last (as `chunks.decode`)."""
    if steps.size < 2 or bool(np.all(steps[1:] > steps[:-1])):
        return steps, vals
    order = np.argsort(steps, kind="stable")  # ties keep write order
    steps, vals = steps[order], vals[order]
    last_of_step = np.append(steps[1:] != steps[:-1], True)
    return steps[last_of_step], vals[last_of_step]


def chunks_of(blocks: list[tuple]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Blocks in `ord` order regrouped into their chunks: (name, steps, values)."""
    i = 0
    while i < len(blocks):
        j = i + 1
        while j < len(blocks) and blocks[j][2:4] == blocks[i][2:4]:
            j += 1
        part = blocks[i:j]
        steps = np.concatenate([one_block_steps(b[4], b[6], b[7], b[8]) for b in part])
        vals = np.concatenate([b[5] for b in part])
        yield blocks[i][1], steps, vals
        i = j


def sample(r: tuple) -> dict:
    return {"seq": r[0], "step": r[1], "stream": r[2], "group": r[3], "sample_id": r[4],
            "context": r[5], "positions": json.loads(r[6]), "wall_time": r[7]}


def alert(r: tuple) -> dict:
    return {"seq": r[0], "step": r[1], "rule": r[2], "level": r[3], "message": r[4],
            "action": r[5], "state": r[6], "wall_time": r[7]}
