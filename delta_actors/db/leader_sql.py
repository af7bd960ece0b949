"""Statements of the lease (`delta_leader`) and the informer state (`delta_informer`).

`fence` in the informer statements: the write happens only while the given term holds an
unexpired lease, so a leader that lost its lease (paused, partitioned) cannot act.
"""

from __future__ import annotations

from typing import Final, LiteralString

LEADER_CHANNEL: Final = "delta_leader"

# Wins only a lease that has expired (or never existed), or this actor's own: a leader
# whose election connection broke stopped trusting its term at once, and takes its
# lease back under a new term as soon as it reconnects instead of leaving the cluster
# without a leader for up to a TTL. The term grows with each win.
ATTEMPT_ELECTION: LiteralString = """
INSERT INTO delta_leader AS l (name, actor_id, host, pid, term, elected_at, expires_at)
VALUES ('default', %(actor)s, %(host)s, %(pid)s, 1, now(), now() + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO UPDATE
    SET actor_id = excluded.actor_id, host = excluded.host, pid = excluded.pid,
        term = l.term + 1, elected_at = now(), expires_at = excluded.expires_at
    WHERE l.expires_at < now() OR l.actor_id = excluded.actor_id
RETURNING term
"""

RENEW_LEASE: LiteralString = """
UPDATE delta_leader SET expires_at = now() + make_interval(secs => %(ttl)s)
WHERE name = 'default' AND term = %(term)s AND actor_id = %(actor)s
RETURNING term
"""

# Frees the lease at once and wakes the candidates.
RESIGN_LEASE: LiteralString = """
WITH resigned AS (
    UPDATE delta_leader SET expires_at = now() - interval '1 second'
    WHERE name = 'default' AND term = %(term)s AND actor_id = %(actor)s
    RETURNING term
)
SELECT count(pg_notify('delta_leader', 'resigned')) FROM resigned
"""

SELECT_INFORMERS: LiteralString = """
SELECT kind, cursor, next_run_at <= now() OR requested_at IS NOT NULL,
       extract(epoch FROM last_success_at)::float8
FROM delta_informer WHERE kind = ANY(%s)
"""

ADD_INFORMERS: LiteralString = """
INSERT INTO delta_informer (kind) SELECT unnest(%s::text[]) ON CONFLICT (kind) DO NOTHING
"""

# Starts a due (or requested) run: clears the request and records the run. Fenced. The
# run's kind of listing is known once the caller decided it: FINISH/FAIL record it.
START_INFORMER: LiteralString = """
WITH before AS (
    SELECT requested_at, requested_full FROM delta_informer WHERE kind = %(kind)s FOR UPDATE
),
started AS (
    UPDATE delta_informer AS i
    SET last_started_at = now(), requested_at = NULL, requested_full = false
    FROM before
    WHERE i.kind = %(kind)s AND (i.next_run_at <= now() OR i.requested_at IS NOT NULL)
      AND EXISTS (SELECT 1 FROM delta_leader WHERE name = 'default' AND term = %(term)s
                  AND actor_id = %(actor)s AND expires_at > now())
    RETURNING i.cursor, now() AS started_at, i.last_full_at,
              before.requested_at IS NOT NULL AS requested, before.requested_full
),
run AS (
    INSERT INTO delta_informer_run (kind, full_listing, requested)
    SELECT %(kind)s, false, s.requested FROM started AS s
    RETURNING id
)
SELECT s.cursor, s.started_at, s.last_full_at, s.requested, s.requested_full,
       (SELECT id FROM run)
FROM started AS s
"""

FINISH_INFORMER: LiteralString = """
WITH finished AS (
    UPDATE delta_informer
    SET cursor = coalesce(%(cursor)s, cursor), last_finished_at = now(), last_error = NULL,
        last_success_at = now(),
        last_full_at = CASE WHEN %(full)s THEN last_started_at ELSE last_full_at END,
        runs = runs + 1, objects = objects + %(objects)s,
        next_run_at = now() + make_interval(secs => %(next_in)s)
    WHERE kind = %(kind)s
      AND EXISTS (SELECT 1 FROM delta_leader WHERE name = 'default' AND term = %(term)s
                  AND actor_id = %(actor)s AND expires_at > now())
    RETURNING kind
),
recorded AS (
    UPDATE delta_informer_run
    SET finished_at = now(), objects = %(objects)s, full_listing = %(full)s
    WHERE id = %(run)s AND EXISTS (SELECT 1 FROM finished)  -- a fenced-off run stays open
)
SELECT kind FROM finished
"""

FAIL_INFORMER: LiteralString = """
WITH failed AS (
    UPDATE delta_informer
    SET last_error = %(error)s, last_error_at = now(), failures = failures + 1,
        last_finished_at = now(), objects = objects + %(objects)s,
        next_run_at = now() + make_interval(secs => %(next_in)s)
    WHERE kind = %(kind)s
)
UPDATE delta_informer_run
SET finished_at = now(), objects = %(objects)s, error = %(error)s, full_listing = %(full)s
WHERE id = %(run)s
"""

# client.run_informer: ask the leader to run it at its next check (about a second).
REQUEST_INFORMER: LiteralString = """
UPDATE delta_informer
SET requested_at = coalesce(requested_at, now()), requested_full = requested_full OR %(full)s
WHERE kind = %(kind)s
RETURNING kind
"""

SELECT_INFORMER_KINDS: LiteralString = "SELECT kind FROM delta_informer ORDER BY kind"

# The Cleaner: informer runs older than a week, a batch at a time (oldest first).
DELETE_OLD_INFORMER_RUNS: LiteralString = """
DELETE FROM delta_informer_run WHERE id = ANY(ARRAY(
    SELECT id FROM delta_informer_run
    WHERE started_at < now() - interval '7 days'
    ORDER BY started_at
    LIMIT %(limit)s
))
"""

# Periodic jobs (leader/periodic.py). The database's clock, and the stored schedules of
# the periodics an app declares.
SELECT_PERIODIC: LiteralString = """
SELECT now(), p.name, p.next_run_at FROM (SELECT now()) AS clock
LEFT JOIN delta_periodic AS p ON p.name = ANY(%(names)s::text[])
"""

# A periodic seen for the first time. A concurrent leader's insert wins (DO NOTHING).
REGISTER_PERIODIC: LiteralString = """
INSERT INTO delta_periodic (name, kind, namespace, schedule, next_run_at)
SELECT %(name)s, %(kind)s, %(namespace)s, %(schedule)s, %(next_run_at)s
WHERE EXISTS (SELECT 1 FROM delta_leader WHERE name = 'default' AND term = %(term)s
              AND actor_id = %(actor)s AND expires_at > now())
ON CONFLICT (name) DO NOTHING
"""

# Take one due run: fenced on the term and on the due time read (a run taken meanwhile
# matches nothing). The same transaction then enqueues the job and records its id.
TAKE_PERIODIC_RUN: LiteralString = """
UPDATE delta_periodic
SET next_run_at = %(next_run_at)s, last_run_at = next_run_at, runs = runs + 1,
    kind = %(kind)s, namespace = %(namespace)s, schedule = %(schedule)s
WHERE name = %(name)s AND next_run_at = %(due)s
  AND EXISTS (SELECT 1 FROM delta_leader WHERE name = 'default' AND term = %(term)s
              AND actor_id = %(actor)s AND expires_at > now())
"""

RECORD_PERIODIC_JOB: LiteralString = """
UPDATE delta_periodic SET last_job_id = %(job)s WHERE name = %(name)s
"""

# For status: every stored periodic, declared by the running app or not.
SELECT_PERIODICS: LiteralString = """
SELECT name, kind, namespace, schedule, last_run_at, next_run_at, runs, last_job_id
FROM delta_periodic ORDER BY name
"""

# Gauges (leader/gauges.py): resources by kind and stored state, the whole table...
COUNT_RESOURCES_BY_KIND: LiteralString = """
SELECT kind, state::text, count(*) FROM delta_resource GROUP BY 1, 2
"""

# ...or only the failed and degraded ones, through delta_resource_troubled_idx.
COUNT_TROUBLED_RESOURCES: LiteralString = """
SELECT kind, state::text, count(*) FROM delta_resource
WHERE state IN ('failed', 'degraded') GROUP BY 1, 2
"""

# Works and jobs available now of the given (limited) kinds, at most %(cap)s read.
COUNT_WAITING_OF_KINDS: LiteralString = """
SELECT kind, count(*) FROM (
    SELECT kind FROM delta_job
    WHERE state = 'available' AND kind = ANY(%(kinds)s::text[]) LIMIT %(cap)s
) AS waiting GROUP BY kind
"""
