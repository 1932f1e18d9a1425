"""The team store's tables in PostgreSQL, as versioned migrations.

Everything lives in the schema `trainspect`, so a database can hold other things
(an MLflow, an application) and roles can be granted the schema as a whole.

The layout follows the local run file (see `trainspect.store.schema`) with three
changes that a shared server needs:

- A run may have several *spools*: the local SQLite files that wrote it (one per
  machine it ran on; a run resumed elsewhere gets a second one). A spool's rows
  keep their local `seq`; `(spool_uid, seq)` identifies a row, so a row is never
  stored twice, and `spools.synced_seq` is the sync's cursor, moved in the same
  transaction as the rows it covers.
- Scalar chunks are mirrored in `chunks` (one row per local chunk: what the sync
  has pushed, its wall times, and per block of BLOCK_POINTS points its first and
  last step and NaN-ignoring min and max); the points themselves are in `blocks`,
  each with the min and max of its sub-blocks of SUB_POINTS points. Downsampling
  a long series reads the chunks' block summaries, uses a block's min and max
  where it lies inside one bucket, opens a block across a bucket edge into its
  sub-blocks' summaries and unpacks only the sub-blocks across the edge, all in
  one SQL query.
- `ord`, one sequence shared by every table, is the live readers' cursor (a
  server-wide `seq`): rows of one run are committed in `ord` order because every
  sync of a run holds the run's row lock while it writes.
"""

from __future__ import annotations

from typing import Any

from trainspect.errors import TrainspectError

SCHEMA = "trainspect"
# Downsampling reads a block inside one bucket as one summary; a block across a bucket
# edge as its sub-blocks' summaries, and only a sub-block across the edge point by point.
BLOCK_POINTS = 64
SUB_POINTS = 8  # BLOCK_POINTS is a multiple of it
_MIGRATION_LOCK = 0x7472_6173_7063  # pg_advisory_lock key: one migrator at a time

# Each entry upgrades the store from version i to i + 1, in one transaction.
MIGRATIONS: list[list[str]] = [
    [
        "CREATE SCHEMA IF NOT EXISTS trainspect",
        """CREATE TABLE trainspect.schema_version (
            version int PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now())""",
        "CREATE SEQUENCE trainspect.ord",
        """CREATE TABLE trainspect.runs (
            run_uid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            project text NOT NULL,
            run_id text NOT NULL,
            name text NOT NULL,
            status text NOT NULL DEFAULT 'running',
            started_at float8,
            ended_at float8,
            heartbeat_at float8,
            attempt int NOT NULL DEFAULT 1,
            host text,
            pid int,
            tags text[] NOT NULL DEFAULT '{}',
            config jsonb NOT NULL DEFAULT '{}',
            config_text text NOT NULL DEFAULT '{}',
            meta text NOT NULL DEFAULT '{}',
            last_step bigint,
            alert_count int NOT NULL DEFAULT 0,
            last_ord bigint NOT NULL DEFAULT 0,
            updated_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (project, run_id))""",
        # The run list (newest first, all or one project) and the searches.
        "CREATE INDEX runs_started ON trainspect.runs (started_at DESC NULLS LAST, run_id DESC)",
        "CREATE INDEX runs_project ON trainspect.runs "
        "(project, started_at DESC NULLS LAST, run_id DESC)",
        "CREATE INDEX runs_id_prefix ON trainspect.runs (run_id text_pattern_ops)",
        "CREATE INDEX runs_name ON trainspect.runs (lower(name) text_pattern_ops)",
        "CREATE INDEX runs_status ON trainspect.runs (status, started_at DESC NULLS LAST)",
        "CREATE INDEX runs_tags ON trainspect.runs USING gin (tags)",
        "CREATE INDEX runs_config ON trainspect.runs USING gin (config jsonb_path_ops)",
        """CREATE TABLE trainspect.spools (
            spool_uid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_uid bigint NOT NULL REFERENCES trainspect.runs ON DELETE CASCADE,
            token text NOT NULL,
            first_attempt int NOT NULL,
            host text,
            path text,
            synced_seq bigint NOT NULL DEFAULT 0,
            synced_at timestamptz,
            UNIQUE (run_uid, token))""",
        """CREATE TABLE trainspect.keys (
            key_uid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_uid bigint NOT NULL REFERENCES trainspect.runs ON DELETE CASCADE,
            name text NOT NULL,
            vlast float8,
            last_order bigint[],
            step_max bigint,
            overlapping boolean NOT NULL DEFAULT false,
            UNIQUE (run_uid, name))""",
        "CREATE INDEX keys_name ON trainspect.keys (name)",
        """CREATE TABLE trainspect.chunks (
            spool_uid bigint NOT NULL REFERENCES trainspect.spools ON DELETE CASCADE,
            seq bigint NOT NULL,
            key_uid bigint NOT NULL REFERENCES trainspect.keys ON DELETE CASCADE,
            attempt int NOT NULL,
            level int NOT NULL,
            n int NOT NULL,
            step_min bigint NOT NULL,
            step_max bigint NOT NULL,
            stride bigint NOT NULL,
            block_first bigint[] NOT NULL,
            block_last bigint[] NOT NULL,
            block_min float8[] NOT NULL,
            block_max float8[] NOT NULL,
            times bytea NOT NULL,
            PRIMARY KEY (spool_uid, seq))""",
        "CREATE INDEX chunks_key ON trainspect.chunks (key_uid, spool_uid, seq)",
        """CREATE TABLE trainspect.blocks (
            key_uid bigint NOT NULL,
            attempt int NOT NULL,
            spool_uid bigint NOT NULL,
            seq bigint NOT NULL,
            block int NOT NULL,
            run_uid bigint NOT NULL,
            ord bigint NOT NULL DEFAULT nextval('trainspect.ord'),
            n int NOT NULL,
            step_first bigint NOT NULL,
            stride bigint NOT NULL,
            steps bigint[],
            vals float8[] NOT NULL,
            sub_min float8[] NOT NULL,
            sub_max float8[] NOT NULL,
            PRIMARY KEY (key_uid, attempt, spool_uid, seq, block))""",
        "CREATE INDEX blocks_ord ON trainspect.blocks (run_uid, ord)",
        """CREATE TABLE trainspect.samples (
            spool_uid bigint NOT NULL,
            seq bigint NOT NULL,
            run_uid bigint NOT NULL,
            ord bigint NOT NULL DEFAULT nextval('trainspect.ord'),
            step bigint NOT NULL,
            stream text NOT NULL,
            grp int NOT NULL,
            sample_id text NOT NULL,
            context text NOT NULL,
            positions text NOT NULL,
            wall_time float8 NOT NULL,
            PRIMARY KEY (spool_uid, seq))""",
        "CREATE INDEX samples_step ON trainspect.samples (run_uid, step)",
        "CREATE INDEX samples_ord ON trainspect.samples (run_uid, ord)",
        """CREATE TABLE trainspect.matrices (
            spool_uid bigint NOT NULL,
            seq bigint NOT NULL,
            run_uid bigint NOT NULL,
            ord bigint NOT NULL DEFAULT nextval('trainspect.ord'),
            name text NOT NULL,
            step bigint NOT NULL,
            n_rows int NOT NULL,
            n_cols int NOT NULL,
            vals bytea NOT NULL,
            row_labels text NOT NULL,
            col_labels text NOT NULL,
            wall_time float8 NOT NULL,
            PRIMARY KEY (spool_uid, seq))""",
        "CREATE INDEX matrices_name ON trainspect.matrices (run_uid, name, step)",
        "CREATE INDEX matrices_ord ON trainspect.matrices (run_uid, ord)",
        """CREATE TABLE trainspect.alerts (
            spool_uid bigint NOT NULL,
            seq bigint NOT NULL,
            run_uid bigint NOT NULL,
            ord bigint NOT NULL DEFAULT nextval('trainspect.ord'),
            step bigint NOT NULL,
            rule text NOT NULL,
            level text NOT NULL,
            message text NOT NULL,
            action text NOT NULL,
            state text NOT NULL,
            wall_time float8 NOT NULL,
            PRIMARY KEY (spool_uid, seq))""",
        "CREATE INDEX alerts_run ON trainspect.alerts (run_uid, ord)",
        """CREATE TABLE trainspect.eval_set (
            run_uid bigint NOT NULL REFERENCES trainspect.runs ON DELETE CASCADE,
            eval_name text NOT NULL,
            example_id text NOT NULL,
            prompt text NOT NULL,
            reference text NOT NULL,
            pattern text NOT NULL,
            length_bin text NOT NULL,
            ref_tokens int NOT NULL,
            PRIMARY KEY (run_uid, eval_name, example_id))""",
        """CREATE TABLE trainspect.eval_examples (
            spool_uid bigint NOT NULL,
            seq bigint NOT NULL,
            run_uid bigint NOT NULL,
            ord bigint NOT NULL DEFAULT nextval('trainspect.ord'),
            step bigint NOT NULL,
            eval_name text NOT NULL,
            example_id text NOT NULL,
            em boolean NOT NULL,
            ce float8,
            tokens int NOT NULL,
            correct_tokens int NOT NULL,
            output text NOT NULL,
            checkpoint text,
            wall_time float8 NOT NULL,
            PRIMARY KEY (spool_uid, seq))""",
        "CREATE INDEX eval_examples_step ON trainspect.eval_examples (run_uid, eval_name, step)",
        "CREATE INDEX eval_examples_ord ON trainspect.eval_examples (run_uid, ord)",
        # Point arrays are incompressible floats: keep them out of pglz's way.
        "ALTER TABLE trainspect.blocks ALTER COLUMN vals SET STORAGE MAIN",
        "ALTER TABLE trainspect.blocks ALTER COLUMN steps SET STORAGE MAIN",
        "ALTER TABLE trainspect.chunks ALTER COLUMN times SET STORAGE EXTERNAL",
        # Deleting a run: the tables without foreign keys (kept off the hot insert path).
        """CREATE FUNCTION trainspect.delete_run(p_project text, p_run_id text)
            RETURNS boolean LANGUAGE plpgsql AS $$
            DECLARE uid bigint;
            BEGIN
                SELECT run_uid INTO uid FROM trainspect.runs
                    WHERE project = p_project AND run_id = p_run_id FOR UPDATE;
                IF uid IS NULL THEN RETURN false; END IF;
                DELETE FROM trainspect.blocks WHERE run_uid = uid;
                DELETE FROM trainspect.samples WHERE run_uid = uid;
                DELETE FROM trainspect.matrices WHERE run_uid = uid;
                DELETE FROM trainspect.alerts WHERE run_uid = uid;
                DELETE FROM trainspect.eval_examples WHERE run_uid = uid;
                DELETE FROM trainspect.runs WHERE run_uid = uid;
                RETURN true;
            END $$""",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


def current_version(conn: Any) -> int:
    """The store's schema version: 0 when the database has no trainspect schema yet."""
    exists = conn.execute(
        "SELECT to_regclass('trainspect.schema_version') IS NOT NULL").fetchone()[0]
    if not exists:
        return 0
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM trainspect.schema_version"
                       ).fetchone()
    return int(row[0])


def check_readable(conn: Any, where: str) -> int:
    """The version, or a clear error for an empty database or a newer schema."""
    version = current_version(conn)
    if version == 0:
        raise TrainspectError(
            f"{where} holds no trainspect store yet: a run with `store=` or "
            f"`trainspect sync DIR --to URL` creates it")
    if version > SCHEMA_VERSION:
        raise TrainspectError(
            f"{where} holds a trainspect store of schema {version}, newer than this "
            f"trainspect understands ({SCHEMA_VERSION}): upgrade trainspect to read it")
    if version < SCHEMA_VERSION:
        raise TrainspectError(
            f"{where} holds a trainspect store of schema {version}, older than this "
            f"trainspect ({SCHEMA_VERSION}): run `trainspect sync` (or any run with "
            "`store=`) once with a role that may create tables, to migrate it")
    return version


def migrate(conn: Any, where: str) -> int:
    """Bring the store up to SCHEMA_VERSION, one transaction per version.

    A session advisory lock makes concurrent first syncs (many jobs starting at
    once) take turns: the first creates the tables, the others find them made.
    """
    if conn.autocommit is False:
        conn.commit()
    conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
        version = current_version(conn)
        if version > SCHEMA_VERSION:
            check_readable(conn, where)  # raises: newer than we know
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with conn.transaction():
                for statement in MIGRATIONS[target - 1]:
                    conn.execute(statement)
                conn.execute("INSERT INTO trainspect.schema_version (version) VALUES (%s)",
                             (target,))
        return SCHEMA_VERSION
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
