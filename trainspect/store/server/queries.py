"""The read side's SQL: series, the server-side min/max downsampling, live rows.

Downsampling follows `trainspect.store.chunks.downsample` exactly: bucket b holds
the steps s with (s - first) * buckets // (last - first) == b (the last step in
the last bucket), each bucket gives (its first step, min, max) with NaN ignored
unless the bucket holds nothing else, and with no more points than buckets every
point comes back as (step, v, v).

It runs as one statement. A metric whose steps simply rise in write order (the
usual case, `keys.overlapping` false) needs no deduplication: the block
summaries kept with each chunk give every block's bucket range; a block inside
one bucket contributes its stored min and max; a block across a bucket edge is
read from `blocks` and contributes its sub-blocks' min and max, and only the
sub-blocks across the edge are unpacked into points. A metric with steps written
twice (a resumed run that went back) unpacks every point and keeps the newest
write per step, as the local reader does.
"""

from __future__ import annotations

from trainspect.store.server.schema import BLOCK_POINTS, SUB_POINTS

# Every point of a block `b` as u(s, v, i); its step is the stored one or first + i * stride.
_UNPACK = "unnest(b.steps, b.vals) WITH ORDINALITY AS u(s, v, i)"
_STEP = "COALESCE(u.s, b.step_first + (u.i - 1) * b.stride)"


BLOCK, SUB = BLOCK_POINTS, SUB_POINTS
# Block `b` is the one `m` names (m: a row of `summary`).
_SAME_BLOCK = ("b.key_uid = (SELECT key_uid FROM k) AND b.attempt = m.attempt "
               "AND b.spool_uid = m.spool_uid AND b.seq = m.seq AND b.block = m.block")


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
blocks_of AS (  -- every block of a metric whose steps simply rise: step range, min, max
    SELECT c.attempt, c.spool_uid, c.seq, (u.i - 1)::int AS block, u.first, u.last, u.lo_v,
           u.hi_v
    FROM trainspect.chunks c
    CROSS JOIN LATERAL unnest(c.block_first, c.block_last, c.block_min, c.block_max)
        WITH ORDINALITY AS u(first, last, lo_v, hi_v, i)
    WHERE c.key_uid = (SELECT key_uid FROM k) AND NOT (SELECT overlapping FROM k)
        AND c.stride = 0
    UNION ALL  -- evenly spaced chunks: block steps by arithmetic, two arrays fewer to unnest
    SELECT c.attempt, c.spool_uid, c.seq, (u.i - 1)::int,
           c.step_min + (u.i - 1) * {BLOCK} * c.stride,
           least(c.step_min + ((u.i - 1) * {BLOCK} + {BLOCK} - 1) * c.stride, c.step_max),
           u.lo_v, u.hi_v
    FROM trainspect.chunks c
    CROSS JOIN LATERAL unnest(c.block_min, c.block_max) WITH ORDINALITY AS u(lo_v, hi_v, i)
    WHERE c.key_uid = (SELECT key_uid FROM k) AND NOT (SELECT overlapping FROM k)
        AND c.stride > 0
),
summary AS MATERIALIZED (  -- ... and the buckets of its first and last step
    SELECT m.attempt, m.spool_uid, m.seq, m.block, m.first, m.lo_v, m.hi_v, e.b0,
           s.total <= %(buckets)s OR e.b0 <> e.b1 AS edge
    FROM blocks_of m CROSS JOIN span s
    CROSS JOIN LATERAL (SELECT {_bucket("m.first", "s.lo", "s.hi")} AS b0,
                               {_bucket("m.last", "s.lo", "s.hi")} AS b1) e
),
fast AS (
    SELECT b0 AS g, first AS step, NULLIF(lo_v, 'NaN') AS lo_v, NULLIF(hi_v, 'NaN') AS hi_v
    FROM summary WHERE NOT edge
    UNION ALL  -- a block across an edge: its sub-blocks, and the points of those across one
    SELECT it.g, it.step, it.lo_v, it.hi_v
    FROM (SELECT * FROM summary WHERE edge) m CROSS JOIN span s
    JOIN trainspect.blocks b ON {_SAME_BLOCK}
    CROSS JOIN LATERAL unnest(b.sub_min, b.sub_max) WITH ORDINALITY AS sb(lo_v, hi_v, j)
    CROSS JOIN LATERAL (SELECT
        COALESCE(b.steps[(sb.j - 1) * {SUB} + 1], b.step_first + (sb.j - 1) * {SUB} * b.stride)
            AS first,
        COALESCE(b.steps[least(sb.j * {SUB}, b.n)],
                 b.step_first + (least(sb.j * {SUB}, b.n) - 1) * b.stride) AS last) st
    CROSS JOIN LATERAL (SELECT c0, s.total <= %(buckets)s OR c0 <> c1 AS edge FROM (SELECT
        {_bucket("st.first", "s.lo", "s.hi")} AS c0,
        {_bucket("st.last", "s.lo", "s.hi")} AS c1) c) e
    CROSS JOIN LATERAL (
        SELECT e.c0 AS g, st.first AS step, NULLIF(sb.lo_v, 'NaN') AS lo_v,
               NULLIF(sb.hi_v, 'NaN') AS hi_v
        WHERE NOT e.edge
        UNION ALL
        SELECT CASE WHEN s.total <= %(buckets)s THEN p.step
                    ELSE {_bucket("p.step", "s.lo", "s.hi")} END,
               p.step, NULLIF(p.v, 'NaN'), NULLIF(p.v, 'NaN')
        FROM (SELECT COALESCE(x.s, b.step_first + ((sb.j - 1) * {SUB} + x.i - 1) * b.stride)
                  AS step, x.v
              FROM unnest(b.steps[(sb.j - 1) * {SUB} + 1:sb.j * {SUB}],
                          b.vals[(sb.j - 1) * {SUB} + 1:sb.j * {SUB}])
                  WITH ORDINALITY AS x(s, v, i)) p
        WHERE e.edge
    ) it
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

# Rows of the record tables in write order: spools by their first attempt, then seq.
SPOOL_ORDER = "sp.first_attempt, t.spool_uid, t.seq"

SAMPLE_COLUMNS = ("t.ord, t.step, t.stream, t.grp, t.sample_id, t.context, t.positions, "
                  "t.wall_time")
ALERT_COLUMNS = "t.ord, t.step, t.rule, t.level, t.message, t.action, t.state, t.wall_time"

RUN_COLUMNS = ("run_uid, project, run_id, name, status, started_at, ended_at, heartbeat_at, "
               "attempt, host, pid, last_step, alert_count, tags, config_text AS config")
