"""The read side's SQL: series, the server-side min/max downsampling, live rows.

Downsampling follows `trainspect.store.chunks.downsample` exactly: bucket b holds
the steps s with (s - first) * buckets // (last - first) == b (the last step in
the last bucket), each bucket gives (its first step, min, max) with NaN ignored
unless the bucket holds nothing else, and with no more points than buckets every
point comes back as (step, v, v).

It runs as one statement. A metric whose steps simply rise in write order (the
usual case, `keys.overlapping` false) needs no deduplication: the block
summaries kept with each chunk give every block's bucket range; a block inside
one bucket contributes its stored min and max, and only the blocks that
straddle a bucket edge are read from `blocks` and unpacked into points. A metric with steps written
twice (a resumed run that went back) unpacks every point and keeps the newest
write per step, as the local reader does.
"""

from __future__ import annotations

# Every point of a block `b` as u(s, v, i); its step is the stored one or first + i * stride.
_UNPACK = "unnest(b.steps, b.vals) WITH ORDINALITY AS u(s, v, i)"
_STEP = "COALESCE(u.s, b.step_first + (u.i - 1) * b.stride)"


def _bucket(step: str, lo: str, hi: str) -> str:
    return (f"least(({step} - {lo}) * %(buckets)s::int8 / greatest({hi} - {lo}, 1), "
            "%(buckets)s::int8 - 1)")


DOWNSAMPLE = f"""
WITH k AS MATERIALIZED (
    SELECT key_uid, overlapping FROM trainspect.keys WHERE run_uid = %(run)s AND name = %(key)s
),
span AS MATERIALIZED (
    SELECT min(step_min) AS lo, max(step_max) AS hi, sum(n) AS total
    FROM trainspect.chunks WHERE key_uid = (SELECT key_uid FROM k)
),
summary AS MATERIALIZED (  -- every block of a metric whose steps simply rise: its buckets
    SELECT c.attempt, c.spool_uid, c.seq, (u.i - 1)::int AS block, u.first, u.lo_v, u.hi_v,
           {_bucket("u.first", "s.lo", "s.hi")} AS b0, {_bucket("u.last", "s.lo", "s.hi")} AS b1
    FROM trainspect.chunks c CROSS JOIN span s
    CROSS JOIN LATERAL unnest(c.block_first, c.block_last, c.block_min, c.block_max)
        WITH ORDINALITY AS u(first, last, lo_v, hi_v, i)
    WHERE c.key_uid = (SELECT key_uid FROM k) AND NOT (SELECT overlapping FROM k)
),
edges AS MATERIALIZED (  -- blocks across a bucket edge (all, when no more points than buckets)
    SELECT m.attempt, m.spool_uid, m.seq, m.block FROM summary m CROSS JOIN span s
    WHERE s.total <= %(buckets)s OR m.b0 <> m.b1
),
fast AS (
    SELECT m.b0 AS g, m.first AS step, NULLIF(m.lo_v, 'NaN') AS lo_v,
           NULLIF(m.hi_v, 'NaN') AS hi_v
    FROM summary m CROSS JOIN span s WHERE s.total > %(buckets)s AND m.b0 = m.b1
    UNION ALL
    SELECT CASE WHEN s.total <= %(buckets)s THEN {_STEP} ELSE {_bucket(_STEP, "s.lo", "s.hi")}
           END, {_STEP}, NULLIF(u.v, 'NaN'), NULLIF(u.v, 'NaN')
    FROM edges m CROSS JOIN span s
    JOIN trainspect.blocks b ON b.key_uid = (SELECT key_uid FROM k) AND b.attempt = m.attempt
        AND b.spool_uid = m.spool_uid AND b.seq = m.seq AND b.block = m.block
    CROSS JOIN LATERAL {_UNPACK}
),
newest AS MATERIALIZED (  -- steps written twice: the newest write of each step
    SELECT DISTINCT ON (1) {_STEP} AS step, u.v
    FROM trainspect.blocks b CROSS JOIN LATERAL {_UNPACK}
    WHERE b.key_uid = (SELECT key_uid FROM k) AND (SELECT overlapping FROM k)
    ORDER BY 1, b.attempt DESC, b.spool_uid DESC, b.seq DESC, b.block DESC, u.i DESC
),
nspan AS (SELECT min(step) AS lo, max(step) AS hi, count(*) AS total FROM newest),
slow AS (
    SELECT CASE WHEN s.total <= %(buckets)s THEN n.step
                ELSE {_bucket("n.step", "s.lo", "s.hi")} END AS g,
           n.step, NULLIF(n.v, 'NaN') AS lo_v, NULLIF(n.v, 'NaN') AS hi_v
    FROM newest n CROSS JOIN nspan s
)
SELECT min(step), COALESCE(min(lo_v), 'NaN'::float8), COALESCE(max(hi_v), 'NaN'::float8)
FROM (SELECT * FROM fast UNION ALL SELECT * FROM slow) items
GROUP BY g ORDER BY 1
"""

# Every block of one metric in write order: (attempt, spool, seq, block).
BLOCKS = """
SELECT b.attempt, b.steps, b.vals, b.n, b.step_first, b.stride, k.overlapping
FROM trainspect.keys k JOIN trainspect.blocks b ON b.key_uid = k.key_uid
WHERE k.run_uid = %s AND k.name = %s
ORDER BY b.attempt, b.spool_uid, b.seq, b.block
"""

BLOCKS_AFTER = """
SELECT b.ord, k.name, b.spool_uid, b.seq, b.steps, b.vals, b.n, b.step_first, b.stride
FROM trainspect.blocks b JOIN trainspect.keys k ON k.key_uid = b.key_uid
WHERE b.run_uid = %s AND b.ord > %s ORDER BY b.ord
"""

NEWEST_ORD = """
SELECT GREATEST(
    (SELECT max(ord) FROM trainspect.blocks WHERE run_uid = %(run)s),
    (SELECT max(ord) FROM trainspect.samples WHERE run_uid = %(run)s),
    (SELECT max(ord) FROM trainspect.matrices WHERE run_uid = %(run)s),
    (SELECT max(ord) FROM trainspect.alerts WHERE run_uid = %(run)s),
    (SELECT max(ord) FROM trainspect.eval_examples WHERE run_uid = %(run)s))
"""

# Rows of the record tables in write order: spools by their first attempt, then seq.
SPOOL_ORDER = "sp.first_attempt, t.spool_uid, t.seq"

SAMPLE_COLUMNS = ("t.ord, t.step, t.stream, t.grp, t.sample_id, t.context, t.positions, "
                  "t.wall_time")
ALERT_COLUMNS = "t.ord, t.step, t.rule, t.level, t.message, t.action, t.state, t.wall_time"

RUN_COLUMNS = ("run_uid, project, run_id, name, status, started_at, ended_at, heartbeat_at, "
               "attempt, host, pid, last_step, alert_count, tags, config_text AS config")
