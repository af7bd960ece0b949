"""Read-only statements of `delta-actors status` and `inspect`, across the tables.

Ages come from the database's clock. Queue counts go through the partial indexes of each
state. Resource counts are exact on small tables and estimated from the planner's
statistics on large ones (ops/status.py decides).
"""

from __future__ import annotations

from typing import Any, LiteralString

SELECT_LEADER: LiteralString = """
SELECT host, pid, actor_id, term, elected_at, extract(epoch FROM expires_at - now())::float8
FROM delta_leader WHERE name = 'default'
"""

SELECT_ACTORS: LiteralString = """
SELECT id, host, pid, namespace, role, started_at,
       extract(epoch FROM now() - heartbeat_at)::float8, coalesce(health, '[]')
FROM delta_actor ORDER BY namespace, role, id
"""

# The one full read of delta_resource: a status that counts every resource (of a table
# small enough; ops/status.py estimates the counts of a larger one). As in
# RESOURCE_COLUMNS, a resource whose work runs counts as `running`, not as its stored
# state; running works are few (bounded by the slots), so that correction is cheap.
COUNT_RESOURCES_BY_STATE: LiteralString = """
WITH stored AS (
    SELECT kind, state::text AS state, count(*) AS n FROM delta_resource GROUP BY 1, 2
),
running AS (
    SELECT r.kind, r.state::text AS state, count(*) AS n
    FROM delta_job AS j JOIN delta_resource AS r ON r.id = j.resource_id
    WHERE j.state = 'running'
    GROUP BY 1, 2
)
SELECT kind, state, sum(n)::bigint
FROM (
    SELECT kind, state, n FROM stored
    UNION ALL SELECT kind, state, -n FROM running
    UNION ALL SELECT kind, 'running', n FROM running
) AS counts
GROUP BY kind, state
HAVING sum(n) > 0
ORDER BY kind, state
"""

# How many rows delta_resource holds, as the planner reckons it: the row density of its
# last VACUUM or ANALYZE times the pages it has now (-1 before the first ANALYZE).
ESTIMATE_RESOURCE_ROWS: LiteralString = """
SELECT CASE WHEN c.reltuples < 0 OR c.relpages = 0 THEN c.reltuples
            ELSE c.reltuples / c.relpages
                 * (pg_relation_size(c.oid) / current_setting('block_size')::float8) END
FROM pg_class AS c WHERE c.oid = 'delta_resource'::regclass
"""

# The share of each (kind, state) pair among the rows ANALYZE sampled: the most common
# combinations of migration 16's statistics object. Readable by the table's owner only
# (PostgreSQL hides other roles' extended statistics); others get no rows.
SELECT_RESOURCE_SHARES: LiteralString = """
SELECT s.most_common_vals[i][1], s.most_common_vals[i][2], s.most_common_freqs[i]
FROM pg_stats_ext AS s, generate_subscripts(s.most_common_freqs, 1) AS i
WHERE s.tablename = 'delta_resource' AND s.statistics_name = 'delta_resource_kind_state_stats'
  AND s.schemaname = current_schema()
"""

# The same from the two columns' own statistics (readable with SELECT on the table),
# taking kind and state as independent: coarser, for roles that do not own the table.
SELECT_RESOURCE_SHARES_BY_COLUMN: LiteralString = """
WITH columns AS (
    SELECT s.attname, v.value, v.freq
    FROM pg_stats AS s,
         unnest(s.most_common_vals::text::text[], s.most_common_freqs) AS v(value, freq)
    WHERE s.tablename = 'delta_resource' AND s.attname IN ('kind', 'state')
      AND s.schemaname = current_schema() AND NOT s.inherited
)
SELECT k.value, t.value, k.freq * t.freq
FROM columns AS k, columns AS t WHERE k.attname = 'kind' AND t.attname = 'state'
"""

# What an estimate must not miss, counted exactly: the failed and degraded resources
# (delta_resource_troubled_idx) and those whose work runs (bounded by the slots), as in
# COUNT_RESOURCES_BY_STATE.
COUNT_TROUBLED_AND_RUNNING: LiteralString = """
SELECT kind, state::text, count(*) FROM delta_resource
WHERE state IN ('failed', 'degraded') GROUP BY 1, 2
UNION ALL
SELECT r.kind, 'running:' || r.state::text, count(*)
FROM delta_job AS j JOIN delta_resource AS r ON r.id = j.resource_id
WHERE j.state = 'running'
GROUP BY 1, 2
"""

# Each namespace's queue. Available jobs are counted up to QUEUE_COUNT_CAP per namespace
# (a column says the count stopped there, and the caller then asks the planner for an
# estimate): an exact count of a million queued jobs read them all (0.3-0.8 s). The
# namespaces with available jobs are found by a skip scan of the claim index, one probe
# per namespace (two names of one hashtext are both found only if the sample reaches the
# second), and their oldest due time by one probe per priority. Jobs due later
# (scheduled, retryable) are counted the same way through delta_job_waiting_idx: counted
# to the end, a million plain jobs a third of them retryable took 0.7 s. Running is
# bounded by the slots. Jobs finished in the window are counted up to FINISHED_COUNT_CAP
# in all (a last column says the count stopped: each namespace's is then a lower bound),
# as a million jobs discarded or cancelled at once would be. Run it WITHOUT_JIT: the planner reckons
# with a hundred namespaces, and the capped counts' estimated cost made PostgreSQL compile
# the statement with JIT on every run (130-340 ms with a million jobs queued, 1 s with a
# cap of 10,000), for a statement that takes 7 ms.
QUEUE_COUNT_CAP = 1_000
FINISHED_COUNT_CAP = 10_000  # jobs finished in the window, all namespaces together
RATE_WINDOW = 60.0  # seconds over which a namespace's finished jobs per second are averaged
# SELECT_QUEUES's parameters, the same for `status` (ops/status.py) and the console.
QUEUE_PARAMS = {"window": RATE_WINDOW, "cap": QUEUE_COUNT_CAP, "finished_cap": FINISHED_COUNT_CAP}
SELECT_QUEUES: LiteralString = """
WITH RECURSIVE hashes AS (
    (SELECT hashtext(namespace) AS h FROM delta_job
     WHERE state = 'available' ORDER BY hashtext(namespace) LIMIT 1)
    UNION ALL
    SELECT (SELECT hashtext(j.namespace) FROM delta_job AS j
            WHERE j.state = 'available' AND hashtext(j.namespace) > hashes.h
            ORDER BY hashtext(j.namespace) LIMIT 1)
    FROM hashes WHERE hashes.h IS NOT NULL
),
sampled AS (
    SELECT h.h, x.namespace, count(*) AS n, max(x.rows) > %(cap)s AS capped
    FROM hashes AS h
    CROSS JOIN LATERAL (
        SELECT j.namespace, count(*) OVER () AS rows FROM (
            SELECT j.namespace FROM delta_job AS j
            WHERE j.state = 'available' AND hashtext(j.namespace) = h.h
            LIMIT %(cap)s + 1) AS j
    ) AS x
    WHERE h.h IS NOT NULL
    GROUP BY h.h, x.namespace
),
available AS (
    SELECT a.namespace, a.n, a.capped, (
        SELECT min(o.scheduled_at) FROM unnest('{1,2,3,4}'::smallint[]) AS p(priority)
        CROSS JOIN LATERAL (
            SELECT j.scheduled_at FROM delta_job AS j
            WHERE j.state = 'available' AND hashtext(j.namespace) = a.h
              AND j.namespace = a.namespace AND j.priority = p.priority
            ORDER BY j.scheduled_at LIMIT 1) AS o
    ) AS oldest
    FROM sampled AS a
),
running AS (
    SELECT namespace, count(*) AS n FROM delta_job WHERE state = 'running' GROUP BY namespace
),
waiting_names AS (
    (SELECT namespace FROM delta_job
     WHERE state IN ('scheduled', 'retryable') ORDER BY namespace LIMIT 1)
    UNION ALL
    SELECT (SELECT j.namespace FROM delta_job AS j
            WHERE j.state IN ('scheduled', 'retryable') AND j.namespace > w.namespace
            ORDER BY j.namespace LIMIT 1)
    FROM waiting_names AS w WHERE w.namespace IS NOT NULL
),
waiting AS (
    SELECT w.namespace, x.n, x.n > %(cap)s AS capped
    FROM waiting_names AS w
    CROSS JOIN LATERAL (
        SELECT count(*) AS n FROM (
            SELECT 1 FROM delta_job AS j
            WHERE j.state IN ('scheduled', 'retryable') AND j.namespace = w.namespace
            LIMIT %(cap)s + 1) AS j
    ) AS x
    WHERE w.namespace IS NOT NULL
),
finished_sample AS (
    SELECT namespace FROM delta_job
    WHERE state IN ('completed', 'cancelled', 'discarded')
      AND finalized_at > now() - make_interval(secs => %(window)s)
    LIMIT %(finished_cap)s + 1
),
finished AS (
    SELECT namespace, count(*) AS n,
           (SELECT count(*) FROM finished_sample) > %(finished_cap)s AS capped
    FROM finished_sample GROUP BY namespace
),
queues AS (
    SELECT namespace FROM available UNION SELECT namespace FROM running
    UNION SELECT namespace FROM waiting UNION SELECT namespace FROM finished
)
SELECT q.namespace, coalesce(a.n, 0), coalesce(r.n, 0), coalesce(w.n, 0),
       greatest(extract(epoch FROM now() - a.oldest), 0)::float8, coalesce(f.n, 0),
       coalesce(a.capped, false), coalesce(w.capped, false), coalesce(f.capped, false)
FROM queues AS q
LEFT JOIN available AS a ON a.namespace = q.namespace
LEFT JOIN running AS r ON r.namespace = q.namespace
LEFT JOIN waiting AS w ON w.namespace = q.namespace
LEFT JOIN finished AS f ON f.namespace = q.namespace
ORDER BY q.namespace
"""

# The planner's estimate of a namespace's available jobs, for a count that stopped at
# QUEUE_COUNT_CAP (from the table's statistics on state and namespace).
ESTIMATE_AVAILABLE: LiteralString = """
EXPLAIN (FORMAT JSON) SELECT 1 FROM delta_job WHERE state = 'available' AND namespace = %s
"""

# The same for its jobs due later.
ESTIMATE_WAITING: LiteralString = """
EXPLAIN (FORMAT JSON) SELECT 1 FROM delta_job
WHERE state IN ('scheduled', 'retryable') AND namespace = %s
"""

# For the transaction of a statement whose cost the planner overestimates (SELECT_QUEUES):
# JIT compilation would take longer than the statement. LOCAL, so that behind a
# transaction pooler the setting ends with our transaction.
WITHOUT_JIT: LiteralString = "SET LOCAL jit = off"


def planned_rows(plan: Any, cap: int = QUEUE_COUNT_CAP) -> int:
    """The rows an `EXPLAIN (FORMAT JSON)` plan expects (ESTIMATE_AVAILABLE's, or a bulk
    action's matches), never fewer than the `cap` rows a count already went past."""
    try:
        rows = int(plan[0]["Plan"]["Plan Rows"])
    except (TypeError, KeyError, IndexError, ValueError):
        rows = 0
    return max(rows, cap + 1)


# Resources that failed or degraded, and plain jobs waiting to retry or discarded in
# the last day (a work's own job row is left out: its resource says it), newest first.
SELECT_RECENT_FAILURES: LiteralString = """
(SELECT 'resource', r.kind, r.object_id, r.namespace, r.state::text, r.attempt::int,
        r.updated_at AS at, r.errors[array_upper(r.errors, 1)]::text
 FROM delta_resource AS r
 WHERE r.state IN ('failed', 'degraded')
 ORDER BY r.updated_at DESC LIMIT %(limit)s)
UNION ALL
(SELECT 'job', j.kind, j.id::text, j.namespace, j.state::text, j.attempt::int,
        coalesce(j.finalized_at, j.attempted_at, j.created_at) AS at,
        j.errors[array_upper(j.errors, 1)]::text
 FROM delta_job AS j
 WHERE j.resource_id IS NULL
   AND (j.state = 'retryable'
        OR (j.state = 'discarded' AND j.finalized_at > now() - interval '1 day'))
 ORDER BY at DESC LIMIT %(limit)s)
ORDER BY at DESC LIMIT %(limit)s
"""

# The partial unique indexes on resource_id cover exactly these states, one each: a
# condition on all four states implies neither predicate, and was a sequential scan of
# delta_job (0.9 s with a million queued works).
SELECT_LIVE_WORKS_OF_RESOURCE: LiteralString = """
(SELECT id, state::text, attempt, claimed_by, created_at, scheduled_at, attempted_at,
        finalized_at
 FROM delta_job
 WHERE resource_id = %(id)s AND state IN ('available', 'scheduled', 'retryable'))
UNION ALL
(SELECT id, state::text, attempt, claimed_by, created_at, scheduled_at, attempted_at,
        finalized_at
 FROM delta_job
 WHERE resource_id = %(id)s AND state = 'running')
ORDER BY id DESC
"""

SELECT_KIND_EXISTS: LiteralString = """
SELECT EXISTS (SELECT 1 FROM delta_resource WHERE kind = %s)
"""

# A skip scan of the identity index (one descent per kind), not a read of every entry.
SELECT_RESOURCE_KINDS: LiteralString = """
WITH RECURSIVE kinds AS (
    (SELECT kind FROM delta_resource ORDER BY kind LIMIT 1)
    UNION ALL
    SELECT (SELECT r.kind FROM delta_resource AS r WHERE r.kind > k.kind ORDER BY r.kind LIMIT 1)
    FROM kinds AS k WHERE k.kind IS NOT NULL
)
SELECT kind FROM kinds WHERE kind IS NOT NULL LIMIT 50
"""

# One row per informer, in the order of ops.status.InformerStatus's fields.
SELECT_INFORMERS_STATUS: LiteralString = """
SELECT kind, last_started_at, last_success_at, last_error_at, last_error, cursor,
       extract(epoch FROM next_run_at - now())::float8, requested_at IS NOT NULL,
       runs, failures
FROM delta_informer ORDER BY kind
"""
