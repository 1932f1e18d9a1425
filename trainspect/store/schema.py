"""The contract between the writer and every reader: tables, their meaning, migrations.

One SQLite file per run, in WAL mode, so a reader in another process never blocks
the writer and a crash loses at most what was not yet committed.

Scalars are stored as narrow per-key chunks, not one row per point: each row of
`scalar_chunks` holds one metric's points for a run of steps as three packed
little-endian columns (int64 steps, float64 values, float64 wall times). Reading a
series is then a handful of rows decoded at memory speed, writing a batch is one
row per key, and NaN and inf survive exactly (SQLite turns a NaN REAL into NULL).
`seq` is one counter shared by every table: a live reader asks for rows with
`seq > cursor` and gets everything new, in write order. The writer merges a key's
small chunks into larger ones (`level` counts the merges); a merged chunk keeps
the largest `seq` of its parts, so write order and newest-wins stay intact.

Resuming may go back in steps: chunks are never overwritten; where two chunks of a
key hold the same step, the one with the larger `seq` (the newer write) wins.
"""

from __future__ import annotations

import sqlite3

from trainspect.errors import TrainspectError

# Each entry upgrades a file from version i to i + 1; files only ever move forward.
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS keys (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
        """CREATE TABLE IF NOT EXISTS scalar_chunks (
            seq INTEGER PRIMARY KEY,
            key_id INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            level INTEGER NOT NULL DEFAULT 0,
            n INTEGER NOT NULL,
            step_min INTEGER NOT NULL,
            step_max INTEGER NOT NULL,
            vmin REAL, vmax REAL, vlast REAL,
            steps BLOB NOT NULL,
            vals BLOB NOT NULL,
            times BLOB NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS scalar_chunks_key ON scalar_chunks (key_id, seq)",
        """CREATE TABLE IF NOT EXISTS samples (
            seq INTEGER PRIMARY KEY,
            step INTEGER NOT NULL,
            stream TEXT NOT NULL,
            grp INTEGER NOT NULL,
            sample_id TEXT NOT NULL,
            context TEXT NOT NULL,
            positions TEXT NOT NULL,
            wall_time REAL NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS samples_step ON samples (step)",
        """CREATE TABLE IF NOT EXISTS matrices (
            seq INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            step INTEGER NOT NULL,
            n_rows INTEGER NOT NULL,
            n_cols INTEGER NOT NULL,
            vals BLOB NOT NULL,
            row_labels TEXT NOT NULL,
            col_labels TEXT NOT NULL,
            wall_time REAL NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS matrices_name ON matrices (name, step)",
        """CREATE TABLE IF NOT EXISTS alerts (
            seq INTEGER PRIMARY KEY,
            step INTEGER NOT NULL,
            rule TEXT NOT NULL,
            level TEXT NOT NULL,
            message TEXT NOT NULL,
            action TEXT NOT NULL,
            state TEXT NOT NULL,
            wall_time REAL NOT NULL)""",
    ],
    [  # 2: per-example fixed-eval results; the examples' text once per eval set and id
        """CREATE TABLE IF NOT EXISTS eval_set (
            eval_name TEXT NOT NULL,
            example_id TEXT NOT NULL,
            prompt TEXT NOT NULL,
            reference TEXT NOT NULL,
            pattern TEXT NOT NULL,
            length_bin TEXT NOT NULL,
            ref_tokens INTEGER NOT NULL,
            PRIMARY KEY (eval_name, example_id))""",
        """CREATE TABLE IF NOT EXISTS eval_examples (
            seq INTEGER PRIMARY KEY,
            step INTEGER NOT NULL,
            eval_name TEXT NOT NULL,
            example_id TEXT NOT NULL,
            em INTEGER NOT NULL,
            ce REAL,
            tokens INTEGER NOT NULL,
            correct_tokens INTEGER NOT NULL,
            output TEXT NOT NULL,
            checkpoint TEXT,
            wall_time REAL NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS eval_examples_step ON eval_examples (eval_name, step)",
        "CREATE INDEX IF NOT EXISTS eval_examples_id ON eval_examples (eval_name, example_id)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

SEQ_TABLES = ("scalar_chunks", "samples", "matrices", "alerts", "eval_examples")
CORE_TABLES = ("meta", "keys", "scalar_chunks", "samples", "matrices", "alerts")  # since v1


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_readable(conn: sqlite3.Connection, path: object) -> int:
    """The file's schema version, or an error if a newer trainspect wrote it."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise TrainspectError(
            f"{path} was written with store schema {version}, newer than this trainspect "
            f"understands ({SCHEMA_VERSION}): upgrade trainspect to read it"
        )
    return version


def migrate(conn: sqlite3.Connection, path: object) -> None:
    """Bring a writable file up to SCHEMA_VERSION, one version per transaction."""
    version = check_readable(conn, path)
    for target in range(version + 1, SCHEMA_VERSION + 1):
        with conn:
            for statement in MIGRATIONS[target - 1]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")


def max_seq(conn: sqlite3.Connection) -> int:
    """The largest seq in any table (0 for an empty file)."""
    return max(
        int(conn.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {table}").fetchone()[0])
        for table in SEQ_TABLES
    )
