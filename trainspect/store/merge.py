"""Folding a key's small chunks into larger ones, so a long run reads as a few blobs.

Each write adds one level-0 chunk per key. Every MERGE_FANOUT writes the key's
chunks of one level become one chunk of the next level. Only chunks whose steps run
strictly upward one after another are merged; the merged chunk keeps the largest
seq of its parts, so live readers that already saw them are not sent them again
and newest-wins is unchanged.
"""

from __future__ import annotations

import sqlite3

import numpy as np

from trainspect.store.chunks import pack_many, pairs_hold

MERGE_FANOUT = 16  # merge a key's chunks once this many of one level have piled up
MAX_LEVEL = 4  # 16**4 writes per chunk at most: chunks stay a few MB
_IN_LIMIT = 500  # key ids per SELECT (SQLite allows 999 variables in old builds)

INSERT_CHUNK = (
    "INSERT INTO scalar_chunks (seq, key_id, attempt, level, n, step_min, step_max,"
    " vmin, vmax, vlast, steps, vals, times) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


class ChunkMerger:
    """Counts each key's writes per level and merges once a level is full."""

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self._level_counts: dict[tuple[int, int], int] = {}

    def forget(self) -> None:
        """The file was replaced: its chunks are not the ones counted."""
        self._level_counts.clear()

    def after_write(self, conn: sqlite3.Connection, key_ids: list[int]) -> None:
        """Called with the keys that got a level-0 chunk; raises sqlite3.Error on failure.

        Keys written together fill their levels together (a flush writes every key
        of the watched model): each level's merges run as one batch, in one
        transaction."""
        due, level = key_ids, 0
        while due:
            ready = []
            for key_id in due:
                count = self._level_counts.get((key_id, level), 0) + 1
                if count < MERGE_FANOUT or level >= MAX_LEVEL:
                    self._level_counts[(key_id, level)] = count
                else:
                    self._level_counts[(key_id, level)] = 0
                    ready.append(key_id)
            if not ready:
                return
            with conn:
                due = self._merge(conn, ready, level)
            level += 1

    def _merge(self, conn: sqlite3.Connection, key_ids: list[int], level: int) -> list[int]:
        """Fold each key's chunks of `level` into one of the next; the keys merged."""
        parts: list[tuple] = []
        for first in range(0, len(key_ids), _IN_LIMIT):
            some = key_ids[first:first + _IN_LIMIT]
            parts += conn.execute(
                "SELECT key_id, seq, n, step_min, step_max, steps, vals, times FROM "
                f"scalar_chunks WHERE key_id IN ({','.join('?' * len(some))}) AND level = ? "
                "AND attempt = ? ORDER BY key_id, seq", (*some, level, self.attempt)).fetchall()
        if not parts:
            return []
        keys = np.array([p[0] for p in parts], np.int64)
        lows = np.array([p[3] for p in parts], np.int64)
        highs = np.array([p[4] for p in parts], np.int64)
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
        ends = np.append(starts[1:], len(parts))
        # merge only chunks whose steps run strictly upward one after another
        rising = pairs_hold(lows[1:] > highs[:-1], starts, ends)
        merge = (rising & (ends - starts >= 2)).tolist()
        chosen = [(start, end) for start, end, ok in zip(starts.tolist(), ends.tolist(), merge)
                  if ok]
        if not chosen:
            return []
        steps, vals, times = _decode_parts(parts)
        offsets = np.concatenate(([0], np.cumsum([p[2] for p in parts])))
        points = [(steps[offsets[s]:offsets[e]], vals[offsets[s]:offsets[e]],
                   times[offsets[s]:offsets[e]]) for s, e in chosen]
        conn.executemany("DELETE FROM scalar_chunks WHERE seq = ?",
                         [(parts[i][1],) for s, e in chosen for i in range(s, e)])
        p = pack_many(points)
        conn.executemany(INSERT_CHUNK, [
            (parts[e - 1][1], parts[s][0], self.attempt, level + 1, *row)
            for (s, e), *row in zip(chosen, p.n, p.step_min, p.step_max, p.vmin, p.vmax,
                                    p.vlast, p.steps, p.vals, p.times)])
        return [parts[s][0] for s, _ in chosen]


def _decode_parts(parts: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every part's points laid end to end, as `decode_steps` reads each one."""
    counts = np.array([p[2] for p in parts], np.int64)
    vals = np.frombuffer(b"".join(p[6] for p in parts), "<f8")
    times = np.frombuffer(b"".join(p[7] for p in parts), "<f8")
    lows = np.array([p[3] for p in parts], np.int64)
    spans = np.array([p[4] for p in parts], np.int64).view(np.uint64) - lows.view(np.uint64)
    strides = (spans // np.maximum(counts - 1, 1).astype(np.uint64)).view(np.int64)
    starts = np.cumsum(counts) - counts
    within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)
    steps = np.repeat(lows, counts) + within * np.repeat(strides, counts)
    for start, part in zip(starts.tolist(), parts):
        if part[5]:  # steps stored as they were (not evenly spaced)
            steps[start:start + part[2]] = np.frombuffer(part[5], "<i8")
    return steps, vals, times
