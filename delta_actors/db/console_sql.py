"""Read-only statements of the web console (delta_actors.web) that the status and the
operator's statements do not cover: each one index-backed or bounded, so that a page
costs the same with a million resources stored as with a hundred.
"""

from __future__ import annotations

from typing import LiteralString

# The planner's row count of the resource table (-1: never analyzed): the console counts
# exactly below a threshold and estimates above it.
SELECT_RESOURCE_ESTIMATE: LiteralString = """
SELECT reltuples::float8 FROM pg_class WHERE oid = 'delta_resource'::regclass
"""

# Each kind once, by a loose scan of the identity index (kind, object_id): one index
# descent per kind, however many resources each has.
SELECT_KINDS: LiteralString = """
WITH RECURSIVE kinds AS (
    (SELECT r.kind FROM delta_resource AS r ORDER BY r.kind LIMIT 1)
    UNION ALL
    SELECT (SELECT r.kind FROM delta_resource AS r WHERE r.kind > k.kind
            ORDER BY r.kind LIMIT 1)
    FROM kinds AS k WHERE k.kind IS NOT NULL
)
SELECT kind FROM kinds WHERE kind IS NOT NULL LIMIT %(limit)s
"""

# The planner's estimate of one kind in one state (EXPLAIN, never run): cheap, and, with
# the statistics of migration 16, the real share of the pair as of the last ANALYZE.
ESTIMATE_KIND_STATE: LiteralString = """
EXPLAIN (FORMAT JSON) SELECT 1 FROM delta_resource
WHERE kind = %(kind)s::text AND state = %(state)s::delta_resource_state
"""

# Resources whose work runs, exactly: running works are bounded by the worker slots.
COUNT_RUNNING_RESOURCES: LiteralString = """
SELECT r.kind, count(*) FROM delta_job AS j JOIN delta_resource AS r ON r.id = j.resource_id
WHERE j.state = 'running'
GROUP BY 1
"""

# Failed and degraded resources grouped by their newest error, from the troubled index,
# at most %(sample)s rows read (the caller says "at least" when the sample was full).
# `since` is the oldest last change in the group, `latest` the newest.
SELECT_ERROR_GROUPS: LiteralString = """
WITH troubled AS (
    SELECT r.kind, r.state::text AS state, r.updated_at,
           coalesce(r.errors[cardinality(r.errors)]->>'error', '') AS error
    FROM delta_resource AS r
    WHERE r.state IN ('failed', 'degraded')
      AND (%(kind)s::text IS NULL OR r.kind = %(kind)s::text)
      AND (%(namespace)s::text IS NULL OR r.namespace = %(namespace)s::text)
      AND (%(state)s::delta_resource_state IS NULL OR r.state = %(state)s::delta_resource_state)
      AND (%(tags)s::text[] IS NULL OR r.tags @> %(tags)s::text[])
      AND (%(error)s::text IS NULL OR strpos(
              lower(r.errors[cardinality(r.errors)]->>'error'), lower(%(error)s::text)) > 0)
    LIMIT %(sample)s
)
SELECT kind, state, error, count(*), min(updated_at), max(updated_at),
       (SELECT count(*) FROM troubled)
FROM troubled
GROUP BY 1, 2, 3
ORDER BY 4 DESC, 1, 2, 3
LIMIT %(limit)s
"""

# Works and jobs finished in the minute from %(minute)s (epoch seconds), by namespace,
# through delta_job_finalized_idx, at most %(cap)s + 1 of them: a million jobs discarded
# in one minute took 1.2 s to count, and the chart counts its last minutes on every view.
# One statement a minute, so that each stays small enough for the planner not to JIT it.
SELECT_FINISHED_IN_MINUTE: LiteralString = """
SELECT namespace, count(*)
FROM (
    SELECT namespace FROM delta_job
    WHERE state IN ('completed', 'cancelled', 'discarded')
      AND finalized_at >= to_timestamp(%(minute)s)
      AND finalized_at < to_timestamp(%(minute)s + 60)
    LIMIT %(cap)s + 1
) AS finished
GROUP BY 1
"""

# The database's clock, epoch seconds: minutes of the chart are the database's.
SELECT_NOW: LiteralString = "SELECT extract(epoch FROM now())::float8"

# The namespaces an operator may pause: those of worker actors and of stored pause rows.
SELECT_NAMESPACES: LiteralString = """
SELECT name, paused_at FROM delta_namespace
UNION
SELECT DISTINCT namespace, NULL::timestamptz FROM delta_actor
WHERE role = 'worker' AND namespace NOT IN (SELECT name FROM delta_namespace)
ORDER BY 1
"""
