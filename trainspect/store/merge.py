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

from trainspect.store.chunks import decode_steps, pack
from trainspect.store.rows import real

MERGE_FANOUT = 16  # merge a key's chunks once this many of one level have piled up
MAX_LEVEL = 4  # 16**4 writes per chunk at most: chunks stay a few MB

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
        """Called with the keys that got a level-0 chunk; raises sqlite3.Error on failure."""
        pending = [(key_id, 0) for key_id in key_ids]
        while pending:
            key_id, level = pending.pop()
            count = self._level_counts.get((key_id, level), 0) + 1
            if count < MERGE_FANOUT or level >= MAX_LEVEL:
                self._level_counts[(key_id, level)] = count
                continue
            self._level_counts[(key_id, level)] = 0
            with conn:
                merged = self._merge(conn, key_id, level)
            if merged:
                pending.append((key_id, level + 1))

    def _merge(self, conn: sqlite3.Connection, key_id: int, level: int) -> bool:
        parts = conn.execute(
            "SELECT seq, n, step_min, step_max, steps, vals, times FROM scalar_chunks "
            "WHERE key_id = ? AND level = ? AND attempt = ? ORDER BY seq",
            (key_id, level, self.attempt),
        ).fetchall()
        if len(parts) < 2:
            return False
        if any(b[2] <= a[3] for a, b in zip(parts, parts[1:])):
            return False  # steps went back somewhere: leave these chunks as written
        steps = np.concatenate([decode_steps(p[4], p[1], p[2], p[3]) for p in parts])
        vals = np.concatenate([np.frombuffer(p[5], "<f8") for p in parts])
        times = np.concatenate([np.frombuffer(p[6], "<f8") for p in parts])
        chunk = pack(steps, vals, times)
        conn.executemany("DELETE FROM scalar_chunks WHERE seq = ?", [(p[0],) for p in parts])
        conn.execute(INSERT_CHUNK, (
            parts[-1][0], key_id, self.attempt, level + 1, chunk.n, chunk.step_min,
            chunk.step_max, chunk.vmin, chunk.vmax, real(chunk.vlast), chunk.steps,
            chunk.vals, chunk.times,
        ))
        return True
