"""Read-only statements of `delta-actors status` and `inspect`, across the tables.

Ages come from the database's clock. Queue counts go through the partial indexes of each
state.
"""

from __future__ import annotations

from typing import LiteralString

SELECT_LEADER: LiteralString = """
SELECT host, pid, actor_id, term, elected_at, extract(epoch FROM expires_at - now())::float8
FROM delta_leader WHERE name = 'default'
"""

SELECT_ACTORS: LiteralString = """
SELECT id, host, pid, namespace, role, started_at,
       extract(epoch FROM now() - heartbeat_at)::float8, coalesce(health, '[]')
FROM delta_actor ORDER BY namespace, role, id
"""

# The one full read of delta_resource: a status that counts every resource. As in
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

SELECT_QUEUES: LiteralString = """
WITH available AS (
    SELECT namespace, count(*) AS n, min(scheduled_at) AS oldest
    FROM delta_job WHERE state = 'available' GROUP BY namespace
),
running AS (
    SELECT namespace, count(*) AS n FROM delta_job WHERE state = 'running' GROUP BY namespace
),
waiting AS (
    SELECT namespace, count(*) AS n
    FROM delta_job WHERE state IN ('scheduled', 'retryable') GROUP BY namespace
),
finished AS (
    SELECT namespace, count(*) AS n
    FROM delta_job
    WHERE state IN ('completed', 'cancelled', 'discarded')
      AND finalized_at > now() - make_interval(secs => %(window)s)
    GROUP BY namespace
),
queues AS (
    SELECT namespace FROM available UNION SELECT namespace FROM running
    UNION SELECT namespace FROM waiting UNION SELECT namespace FROM finished
)
SELECT q.namespace, coalesce(a.n, 0), coalesce(r.n, 0), coalesce(w.n, 0),
       greatest(extract(epoch FROM now() - a.oldest), 0)::float8, coalesce(f.n, 0)
FROM queues AS q
LEFT JOIN available AS a ON a.namespace = q.namespace
LEFT JOIN running AS r ON r.namespace = q.namespace
LEFT JOIN waiting AS w ON w.namespace = q.namespace
LEFT JOIN finished AS f ON f.namespace = q.namespace
ORDER BY q.namespace
"""

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

# The partial unique indexes on resource_id cover exactly these states.
SELECT_LIVE_WORKS_OF_RESOURCE: LiteralString = """
SELECT id, state::text, attempt, claimed_by, created_at, scheduled_at, attempted_at,
       finalized_at
FROM delta_job
WHERE resource_id = %s AND state IN ('available', 'scheduled', 'retryable', 'running')
ORDER BY id DESC
"""

SELECT_KIND_EXISTS: LiteralString = """
SELECT EXISTS (SELECT 1 FROM delta_resource WHERE kind = %s)
"""

SELECT_RESOURCE_KINDS: LiteralString = """
SELECT DISTINCT kind FROM delta_resource ORDER BY kind LIMIT 50
"""

# One row per informer, in the order of ops.status.InformerStatus's fields.
SELECT_INFORMERS_STATUS: LiteralString = """
SELECT kind, last_started_at, last_success_at, last_error_at, last_error, cursor,
       extract(epoch FROM next_run_at - now())::float8, requested_at IS NOT NULL,
       runs, failures
FROM delta_informer ORDER BY kind
"""
