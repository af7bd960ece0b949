"""Statements of the job table (`delta_job`): insert, claim, complete, promote, hand back,
read, cancel and clean up. A work's completion also writes its resource: see resource_sql.
"""

from __future__ import annotations

from typing import Final, LiteralString

import msgspec

from delta_actors.db.resource_sql import (
    BY_ID,
    BY_ROW_VERSION,
    CLAIM_FENCE,
    CLAIMS_OF_ACTORS_FENCE,
    resource_columns,
)


class InsertedJob(msgspec.Struct, frozen=True):
    """A row of INSERT_JOBS, INSERT_ONE_JOB or SELECT_LIVE_UNIQUE_JOBS, in their order."""

    id: int
    kind: str
    namespace: str
    state: str
    unique_key: str | None
    notified: object = None  # INSERT_ONE_JOB's NOTIFY (void)


# The one LISTEN/NOTIFY channel; the payload is the queue (namespace) that has work.
JOB_CHANNEL: Final = "delta_jobs"

# The last parameter is the batch's metadata (the enqueue's trace context: tracing.py), one
# for every row, or NULL.
_INSERTED_JOBS: LiteralString = """
INSERT INTO delta_job
    (kind, namespace, args, priority, max_attempts, unique_key, state, scheduled_at, metadata)
SELECT u.kind, u.namespace, u.args, u.priority, u.max_attempts, u.unique_key,
       CASE WHEN u.scheduled_at IS NULL OR u.scheduled_at <= now()
            THEN 'available' ELSE 'scheduled' END::delta_job_state,
       coalesce(u.scheduled_at, now()), %s::jsonb
FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::smallint[], %s::smallint[],
            %s::text[], %s::timestamptz[])
     AS u(kind, namespace, args, priority, max_attempts, unique_key, scheduled_at)
ON CONFLICT (kind, unique_key)
    WHERE unique_key IS NOT NULL
      AND state IN ('available', 'scheduled', 'running', 'retryable')
    DO NOTHING
RETURNING id, kind, namespace, state, unique_key
"""

# Rows come back in insertion order (ids ascend with it). Postgres delivers identical
# notifications of one transaction once, so this is one NOTIFY per queue per commit.
INSERT_JOBS: LiteralString = (
    "WITH inserted AS ("
    + _INSERTED_JOBS
    + """),
notified AS (
    SELECT count(pg_notify('delta_jobs', q.namespace)) AS n
    FROM (SELECT DISTINCT namespace FROM inserted WHERE state = 'available') AS q
)
SELECT i.id, i.kind, i.namespace, i.state::text, i.unique_key
FROM inserted AS i, notified
ORDER BY i.id
"""
)

# One job without a unique key, the common `enqueue`: the same row and wake-up as
# INSERT_JOBS, but a plain VALUES insert plans in a third of the time (0.2 against
# 0.5 ms a call, half of it planning), which is enqueue-to-start latency.
INSERT_ONE_JOB: LiteralString = """
INSERT INTO delta_job
    (kind, namespace, args, priority, max_attempts, state, scheduled_at, metadata)
VALUES (%(kind)s, %(namespace)s, %(args)s, %(priority)s, %(max_attempts)s,
        CASE WHEN %(scheduled_at)s::timestamptz IS NULL
                  OR %(scheduled_at)s::timestamptz <= now()
             THEN 'available' ELSE 'scheduled' END::delta_job_state,
        coalesce(%(scheduled_at)s::timestamptz, now()), %(metadata)s::jsonb)
RETURNING id, kind, namespace, state::text, unique_key,
          CASE WHEN state = 'available' THEN pg_notify('delta_jobs', namespace) END
"""

# Bulk path (no unique keys): reserve ids and read the transaction's clock, COPY the
# rows in (binary), then wake each queue once. A batch of jobs all due now leaves state
# and scheduled_at to their defaults.
RESERVE_JOB_IDS: LiteralString = """
SELECT now(), array(SELECT nextval('delta_job_id_seq') FROM generate_series(1, %s))
"""

COPY_JOBS: LiteralString = """
COPY delta_job (id, kind, namespace, args, priority, max_attempts, state, scheduled_at)
FROM STDIN (FORMAT BINARY)
"""

COPY_DUE_JOBS: LiteralString = """
COPY delta_job (id, kind, namespace, args, priority, max_attempts) FROM STDIN (FORMAT BINARY)
"""

# The same with the batch's metadata (a traced enqueue) in every row.
COPY_TRACED_JOBS: LiteralString = """
COPY delta_job (id, kind, namespace, args, priority, max_attempts, state, scheduled_at, metadata)
FROM STDIN (FORMAT BINARY)
"""

NOTIFY_QUEUES: LiteralString = """
SELECT count(pg_notify('delta_jobs', q)) FROM unnest(%s::text[]) AS q
"""

SELECT_LIVE_UNIQUE_JOBS: LiteralString = """
SELECT id, kind, namespace, state::text, unique_key
FROM delta_job
WHERE (kind, unique_key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
  AND state IN ('available', 'scheduled', 'running', 'retryable')
"""

# The available jobs of namespace %(namespace)s, as `j`, through the claim index (it leads
# with hashtext of the namespace; the namespace test on the row settles a collision).
_AVAILABLE_IN_QUEUE: LiteralString = (
    "j.state = 'available' AND hashtext(j.namespace) = hashtext(%(namespace)s) "
    "AND j.namespace = %(namespace)s"
)


# Not the queued work of a resource whose previous work still runs (coalescing: runs of
# one resource never overlap), as `j`: what the claim takes and the sweep looks for.
# `OFFSET 0` keeps it a probe of the resource's own running work (the partial index on
# resource_id) for each row looked at: without it PostgreSQL may turn the EXISTS into a
# hash of every running job's resource, read through the running index, which while a
# transaction holds an old snapshot keeps an entry for every claim since (112 ms a
# claim after three minutes of 1,500 works/s, and the queue fell behind).
_NOT_BUSY: LiteralString = (
    "(j.resource_id IS NULL OR NOT EXISTS (SELECT 1 FROM delta_job AS busy"
    " WHERE busy.resource_id = j.resource_id AND busy.state = 'running' OFFSET 0))"
)


# The claim reads each priority from its floor up (queue/floors.py: why, and what keeps
# it from skipping a job), one index descent per priority, priority 1 first, until it
# has its rows: the outer LIMIT stops pulling, so no priority is read (or locked) past
# what is taken. No ORDER BY outside: it would read and lock every priority in full.
_FLOORS: LiteralString = (
    "unnest('{1,2,3,4}'::smallint[], %(floors)s::timestamptz[]) AS f(priority, floor_at)"
)


# Never more rows than free slots (LIMIT), skipping rows other claimers hold, and skipping
# the queued work of a resource whose previous work still runs (coalescing: runs of one
# resource never overlap). Nothing while the namespace is paused (one probe of a tiny
# table, evaluated once per claim). The update finds the locked rows by their row
# versions (`ctid = ANY(ARRAY(...))`, a TID scan), not by id: no index descent per row
# (a claim of 100 rows executed in 2.28 against 2.44 ms, of 10 in 0.55 against 0.57);
# a join let the planner hash the whole table. A locked row cannot move before the
# update. A row another transaction updated after this statement's snapshot, and left
# available, is locked at its newer version, which this snapshot does not see: the
# update skips it, and it stays available for the next claim, or below the floors for
# the sweep (queue/floors.py). A resource work comes back with its resource as stored
# now, read without a lock (claims never wait on informs). Each row carries its
# scheduled_at, for the floors only (queue/floors.py reads columns 6 and 7, the priority
# and this), as seconds since the epoch (a float is cheaper to write and to read than a
# timestamp), and not its namespace, which is the claim's own; the claimer reads the
# rows in binary.
def _claim(
    kinds: LiteralString,
    limit: LiteralString,
    then: LiteralString,
    clock: LiteralString = "now()",
    first: LiteralString = "",
) -> LiteralString:
    return (
        """
WITH """
        + first
        + """locked AS (
    SELECT l.tid FROM """
        + _FLOORS
        + """
    CROSS JOIN LATERAL (
        SELECT j.ctid AS tid FROM delta_job AS j
        WHERE """
        + _AVAILABLE_IN_QUEUE
        + """
          AND j.priority = f.priority AND j.scheduled_at >= f.floor_at"""
        + kinds
        + """
          AND NOT EXISTS (SELECT 1 FROM delta_namespace AS n
                          WHERE n.name = %(namespace)s AND n.paused_at IS NOT NULL)
          AND """
        + _NOT_BUSY
        + """
        ORDER BY j.scheduled_at, j.id
        LIMIT """
        + limit
        + """
        FOR UPDATE OF j SKIP LOCKED
    ) AS l
    LIMIT """
        + limit
        + """
),
claimed AS (
    UPDATE delta_job AS j
    SET state = 'running', attempt = j.attempt + 1, attempted_at = """
        + clock
        + """, claimed_by = %(actor)s
    WHERE j.ctid = ANY(ARRAY(SELECT tid FROM locked))
    RETURNING j.id, j.kind, j.args, j.attempt, j.max_attempts, j.resource_id,
              j.priority, j.scheduled_at, j.metadata::text AS metadata, j.ctid::text AS tid
),"""
        + then
        + """
resources AS MATERIALIZED (
    SELECT """
        + resource_columns("'running'")
        + """, r.object FROM delta_resource AS r
    WHERE r.id = ANY(ARRAY(SELECT resource_id FROM claimed WHERE resource_id IS NOT NULL))
)
SELECT c.id, c.kind, c.args, c.attempt, c.max_attempts, c.resource_id, c.priority,
       date_part('epoch', c.scheduled_at), c.metadata, c.tid, res.*
FROM claimed AS c LEFT JOIN resources AS res ON res.id = c.resource_id
"""
    )


CLAIM_JOBS: LiteralString = _claim("", "%(limit)s", "")

# Limits (`concurrency`, `rate` of a kind; queue/claimer.py has the protocol). A namespace
# with limited kinds claims the rest with this, so that a kind at its limit never holds
# up the others, and each limited kind with CLAIM_LIMITED_JOBS.
CLAIM_UNLIMITED_JOBS: LiteralString = _claim(
    "\n          AND j.kind <> ALL(%(limited)s::text[])", "%(limit)s", ""
)

# First, in the claim's transaction: lock the kind's limit row (made on first use, its
# settings the claimer's), serializing claims of the kind across the cluster, so that
# the counts below see every claim committed before this one.
LOCK_LIMIT: LiteralString = """
INSERT INTO delta_limit (kind, concurrency, rate_count, rate_window)
VALUES (%(kind)s, %(concurrency)s, %(rate_count)s, %(rate_window)s)
ON CONFLICT (kind) DO UPDATE
SET concurrency = excluded.concurrency, rate_count = excluded.rate_count,
    rate_window = excluded.rate_window
-- The row is locked either way; rewritten only when the settings change, so that claims
-- leave no dead row versions behind.
WHERE (delta_limit.concurrency, delta_limit.rate_count, delta_limit.rate_window)
      IS DISTINCT FROM (excluded.concurrency, excluded.rate_count, excluded.rate_window)
"""

# Then: at most the free slots, the concurrency left (running works of the kind, on any
# host, in any namespace) and the starts left in the rate's sliding window; each start
# recorded, and the starts that left the window deleted. Its clock is this statement's
# start, after the lock was won (the transaction's may be from before the wait), and the
# works' attempted_at are the same instant as their recorded starts.
CLAIM_LIMITED_JOBS: LiteralString = _claim(
    "\n          AND j.kind = %(kind)s",
    "(SELECT n FROM quota)",
    """
started AS (
    INSERT INTO delta_limit_start (kind, at)
    SELECT %(kind)s, statement_timestamp() FROM claimed
    WHERE %(rate_count)s::bigint IS NOT NULL
),
forgotten AS (
    DELETE FROM delta_limit_start AS s
    WHERE s.kind = %(kind)s
      AND s.at <= statement_timestamp() - make_interval(secs => %(rate_window)s)
),""",
    "statement_timestamp()",
    """quota AS MATERIALIZED (
    SELECT greatest(0, least(
        %(limit)s::bigint,
        %(concurrency)s::bigint - (SELECT count(*) FROM delta_job AS r
                                   WHERE r.state = 'running' AND r.kind = %(kind)s),
        %(rate_count)s::bigint - (SELECT count(*) FROM delta_limit_start AS s
                                  WHERE s.kind = %(kind)s AND s.at > statement_timestamp()
                                      - make_interval(secs => %(rate_window)s)))) AS n
),
""",
)

# The sweep (queue/floors.py): per priority, the oldest claimable row of one claim shape
# (a limited kind: `kind`; the other kinds: those not in `limited`), and the time. It
# reads what the claims skip, dead row versions included: it runs off the claim's path.
FIND_OLDEST_CLAIMABLE_JOBS: LiteralString = (
    """
SELECT f.priority, (
    SELECT j.scheduled_at FROM delta_job AS j
    WHERE """
    + _AVAILABLE_IN_QUEUE
    + """
      AND j.priority = f.priority
      AND (%(kind)s::text IS NULL OR j.kind = %(kind)s)
      AND j.kind <> ALL(%(limited)s::text[])
      AND """
    + _NOT_BUSY
    + """
    ORDER BY j.scheduled_at, j.id
    LIMIT 1
), statement_timestamp()
FROM unnest('{1,2,3,4}'::smallint[]) AS f(priority)
"""
)

# The claim connection's settings (queue/claimer.py): the claim runs a generic plan made
# once, and every row it touches is found through an index. Made on empty tables, a
# generic plan would otherwise scan delta_resource sequentially, and keep doing so as it
# grows. REPLAN_CLAIM drops the plan so that the next claim makes it anew.
CLAIM_CONNECTION_SETTINGS: LiteralString = (
    "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off"
)
REPLAN_CLAIM: LiteralString = "DISCARD PLANS"

# The completer's own connection (queue/completer.py): plain jobs' results by row
# version, a plan made once; its by-id statement is sent unprepared, planned each time.
RESULTS_CONNECTION_SETTINGS: LiteralString = "SET plan_cache_mode = force_generic_plan"


# Fenced on the claim (resource_sql.CLAIM_FENCE, which says why it reads as it does), the
# rows found by `found`: COMPLETE_JOBS by id, COMPLETE_CLAIMED_JOBS by the row versions
# the claims wrote (resource_sql.BY_ROW_VERSION). Arrays of numbers and labels come as
# literals (completer.array_literal); errors, when a batch has any, as a binary array,
# else NULL (unnest pads it with NULLs).
def _complete_jobs(found: LiteralString, fence: LiteralString = CLAIM_FENCE) -> LiteralString:
    return (
        """
UPDATE delta_job AS j
SET state = u.state,
    attempt = j.attempt - (NOT u.counts_attempt)::integer,
    claimed_by = NULL,
    scheduled_at = CASE WHEN u.delay IS NULL THEN j.scheduled_at
                        ELSE now() + make_interval(secs => u.delay) END,
    finalized_at = CASE WHEN u.state IN ('completed', 'cancelled', 'discarded')
                        THEN now() END,
    errors = CASE WHEN u.error IS NULL THEN j.errors
                  ELSE (j.errors || u.error)[greatest(1, cardinality(j.errors) - 8):] END
FROM unnest(%(ids)s::bigint[], %(attempts)s::smallint[], %(states)s::delta_job_state[],
            %(delays)s::float8[], %(errors)b::jsonb[], %(counts_attempts)s::boolean[])
     AS u(id, attempt, state, delay, error, counts_attempt)
WHERE """
        + found
        + """ AND j.id = u.id AND """
        + fence
        + """
RETURNING j.id
"""
    )


COMPLETE_JOBS: LiteralString = _complete_jobs(BY_ID)
COMPLETE_CLAIMED_JOBS: LiteralString = _complete_jobs(BY_ROW_VERSION)
COMPLETE_JOBS_OF_ACTORS: LiteralString = _complete_jobs(BY_ID, CLAIMS_OF_ACTORS_FENCE)


# A stopping worker returns what it could not finish: no attempt counted, and other
# workers of the queue are woken to take it.
def _hand_back_jobs(fence: LiteralString) -> LiteralString:
    return (
        """
WITH returned AS (
    UPDATE delta_job AS j
    SET state = 'available', attempt = j.attempt - 1, claimed_by = NULL
    FROM unnest(%(ids)s::bigint[], %(attempts)s::smallint[]) AS u(id, attempt)
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.id = u.id AND """
        + fence
        + """
    RETURNING j.id, j.namespace
)
SELECT r.id, pg_notify('delta_jobs', r.namespace) FROM returned AS r
"""
    )


HAND_BACK_JOBS: LiteralString = _hand_back_jobs(CLAIM_FENCE)
HAND_BACK_JOBS_OF_ACTORS: LiteralString = _hand_back_jobs(CLAIMS_OF_ACTORS_FENCE)

PROMOTE_DUE_JOBS: LiteralString = """
WITH due AS (
    SELECT id FROM delta_job
    WHERE state IN ('scheduled', 'retryable') AND scheduled_at <= now()
    ORDER BY scheduled_at
    LIMIT %s
    FOR UPDATE SKIP LOCKED
),
promoted AS (
    UPDATE delta_job AS j SET state = 'available'
    FROM due WHERE j.id = due.id
    RETURNING j.namespace
)
SELECT p.namespace, count(*), pg_notify('delta_jobs', p.namespace)
FROM promoted AS p GROUP BY p.namespace
"""

SELECT_NEXT_DUE_IN: LiteralString = """
SELECT extract(epoch FROM min(scheduled_at) - now())::float8
FROM delta_job WHERE state IN ('scheduled', 'retryable')
"""

# Capped: an exact count of a deep queue costs more than a heartbeat is worth. Both read
# from the worker's claim floors (queue/floors.py), as the claims do, so that dead row
# versions below them cost nothing here either; what lies below a floor the sweep finds.
# The lag takes the oldest due time per priority (one index descent each, 1..4), since
# the index orders by priority first.
COUNT_AVAILABLE_JOBS: LiteralString = (
    """
SELECT
    (SELECT count(*) FROM (
        SELECT 1 FROM """
    + _FLOORS
    + """
        CROSS JOIN LATERAL (
            SELECT 1 FROM delta_job AS j
            WHERE """
    + _AVAILABLE_IN_QUEUE
    + """ AND j.priority = f.priority AND j.scheduled_at >= f.floor_at
            LIMIT 100000
        ) AS x
        LIMIT 100000
    ) AS available),
    extract(epoch FROM now() - (
        SELECT min((
            SELECT j.scheduled_at FROM delta_job AS j
            WHERE """
    + _AVAILABLE_IN_QUEUE
    + """ AND j.priority = f.priority AND j.scheduled_at >= f.floor_at
            ORDER BY j.scheduled_at LIMIT 1
        )) FROM """
    + _FLOORS
    + """
    ))::float8
"""
)

# In the order of the fields of queue.rows.JobRow.
JOB_COLUMNS: LiteralString = """
id, kind, namespace, state::text, args, priority, attempt, max_attempts,
array_to_json(errors), unique_key, claimed_by,
created_at, scheduled_at, attempted_at, finalized_at
"""

GET_JOB: LiteralString = "SELECT " + JOB_COLUMNS + " FROM delta_job WHERE id = %s"

CANCEL_JOB: LiteralString = (
    """
UPDATE delta_job SET state = 'cancelled', finalized_at = now()
WHERE id = %s AND state IN ('available', 'scheduled', 'retryable')
RETURNING """
    + JOB_COLUMNS
)


# Cleanup of finished rows, one batch per statement, by category, each with its own
# retention (Namespace): finished works of resources, completed plain jobs, and cancelled
# or discarded plain jobs. Each walks delta_job_finalized_idx from `after` (where the
# previous batch of the run ended: the index entries of the rows it deleted stay until
# vacuum, and a walk from the oldest would read them again, batch after batch) up to its
# own cutoff; rows of another category on the way are skipped by the filter (the
# shorter-lived ones are gone by then, so those are the few failures kept longer).
def _delete_finalized(category: LiteralString) -> LiteralString:
    return (
        """
WITH old AS (
    SELECT id FROM delta_job
    WHERE state IN ('completed', 'cancelled', 'discarded')
      AND finalized_at >= %(after)s::timestamptz
      AND finalized_at < now() - make_interval(secs => %(retention)s)
      AND namespace = %(namespace)s AND """
        + category
        + """
    ORDER BY finalized_at
    LIMIT %(limit)s
)
DELETE FROM delta_job AS j USING old WHERE j.id = old.id
RETURNING j.finalized_at
"""
    )


DELETE_FINISHED_WORKS: LiteralString = _delete_finalized("resource_id IS NOT NULL")
DELETE_COMPLETED_JOBS: LiteralString = _delete_finalized(
    "resource_id IS NULL AND state = 'completed'"
)
DELETE_FAILED_JOBS: LiteralString = _delete_finalized(
    "resource_id IS NULL AND state IN ('cancelled', 'discarded')"
)

# The filters of `client.list_jobs`, `retry_jobs` and `cancel_jobs` (and their CLI), on
# plain jobs `j` (resource works are the resources' business): each parameter NULL
# matches everything; unprepared, as in resource_sql's filters. Retryable, discarded and
# cancelled jobs of a kind read delta_job_troubled_idx, in the id order pages go in.
_JOB_FILTER: LiteralString = """
j.resource_id IS NULL
AND (%(kind)s::text IS NULL OR j.kind = %(kind)s::text)
AND (%(namespace)s::text IS NULL OR j.namespace = %(namespace)s::text)
AND (%(state)s::delta_job_state IS NULL OR j.state = %(state)s::delta_job_state)
AND (%(error)s::text IS NULL OR strpos(
        lower(j.errors[cardinality(j.errors)]->>'error'), lower(%(error)s::text)) > 0)
AND (%(ids)s::bigint[] IS NULL OR j.id = ANY(%(ids)s::bigint[]))
AND (%(after)s::bigint IS NULL OR j.id > %(after)s::bigint)
"""

LIST_JOBS: LiteralString = (
    "SELECT " + JOB_COLUMNS + " FROM delta_job AS j WHERE " + _JOB_FILTER
    + "ORDER BY j.id LIMIT %(limit)s"
)  # fmt: skip

COUNT_JOBS: LiteralString = "SELECT count(*) FROM delta_job AS j WHERE " + _JOB_FILTER

# As COUNT_RESOURCES_UP_TO and ESTIMATE_MATCHING_RESOURCES, for plain jobs.
COUNT_JOBS_UP_TO: LiteralString = (
    "SELECT count(*) FROM (SELECT FROM delta_job AS j WHERE " + _JOB_FILTER
    + "LIMIT %(cap)s + 1) AS m"
)  # fmt: skip
ESTIMATE_MATCHING_JOBS: LiteralString = (
    "EXPLAIN (FORMAT JSON) SELECT FROM delta_job AS j WHERE " + _JOB_FILTER
)

# The next %(limit)s matches of a filter after the cursor: the first CTE of the batched
# statements below.
_PICKED_JOBS: LiteralString = (
    """
WITH picked AS MATERIALIZED (
    SELECT j.id FROM delta_job AS j WHERE """
    + _JOB_FILTER
    + """
    ORDER BY j.id LIMIT %(limit)s
),"""
)

# One batch of `retry_jobs`: the next %(limit)s matches after the cursor that are neither
# running nor available go back to available now, with one more attempt allowed when
# they used theirs up; errors kept. A job whose unique key a live job holds meanwhile is
# left as it is (retrying it would make two). Returns how many were retried, how many
# matched, the last match's id (the next cursor), and the wake-ups sent.
RETRY_JOBS: LiteralString = (
    _PICKED_JOBS
    + """
retried AS (
    UPDATE delta_job AS j
    SET state = 'available', scheduled_at = now(), finalized_at = NULL, claimed_by = NULL,
        max_attempts = greatest(j.max_attempts, j.attempt + 1)
    WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
      AND j.state NOT IN ('running', 'available')
      AND NOT (j.unique_key IS NOT NULL AND EXISTS (
            SELECT 1 FROM delta_job AS o
            WHERE o.kind = j.kind AND o.unique_key = j.unique_key AND o.id <> j.id
              AND o.state IN ('available', 'scheduled', 'running', 'retryable')))
    RETURNING j.namespace
),
notified AS (
    SELECT count(pg_notify('delta_jobs', q.namespace)) AS n
    FROM (SELECT DISTINCT namespace FROM retried) AS q
)
SELECT (SELECT count(*) FROM retried), (SELECT count(*) FROM picked),
       (SELECT max(id) FROM picked), (SELECT n FROM notified)
"""
)

# One batch of `cancel_jobs`: the next %(limit)s matches after the cursor that still wait
# (available, scheduled, retryable) are cancelled; running ones are asked to stop (their
# worker cancels the run and writes it cancelled, see SELECT_CANCEL_REQUESTS).
CANCEL_JOBS: LiteralString = (
    _PICKED_JOBS
    + """
cancelled AS (
    UPDATE delta_job AS j
    SET state = CASE WHEN j.state = 'running' THEN j.state ELSE 'cancelled' END,
        finalized_at = CASE WHEN j.state = 'running' THEN NULL ELSE now() END,
        cancel_requested_at = CASE WHEN j.state = 'running' THEN now() END
    WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
      AND (j.state IN ('available', 'scheduled', 'retryable')
           OR (j.state = 'running' AND j.cancel_requested_at IS NULL))
    RETURNING j.id
)
SELECT (SELECT count(*) FROM cancelled), (SELECT count(*) FROM picked),
       (SELECT max(id) FROM picked), 0
"""
)

# A worker's running claims that an operator asked to stop (the running index, by actor).
SELECT_CANCEL_REQUESTS: LiteralString = """
SELECT id FROM delta_job
WHERE claimed_by = %(actor)s AND state = 'running' AND cancel_requested_at IS NOT NULL
"""

# Pausing: stored, so every host's claims see it (_AVAILABLE_IN_QUEUE's caller checks).
PAUSE_NAMESPACE: LiteralString = """
INSERT INTO delta_namespace (name, paused_at) VALUES (%s, now())
ON CONFLICT (name) DO UPDATE SET paused_at = coalesce(delta_namespace.paused_at, now())
RETURNING paused_at
"""

RESUME_NAMESPACE: LiteralString = """
WITH resumed AS (
    UPDATE delta_namespace SET paused_at = NULL WHERE name = %s AND paused_at IS NOT NULL
    RETURNING name
)
SELECT count(pg_notify('delta_jobs', name)) FROM resumed
"""

SELECT_PAUSED_NAMESPACES: LiteralString = """
SELECT name, paused_at FROM delta_namespace WHERE paused_at IS NOT NULL ORDER BY name
"""

# The test Runner's clock (delta_actors.testing): moves every due time the database
# compares with now() back by %(seconds)s, as if that much time had passed: scheduled and
# retryable jobs (retries, requeues, scheduled enqueues), informers' next runs, and the
# starts that rate limits count. Nothing else reads the clock there.
ADVANCE_CLOCK: LiteralString = """
WITH jobs AS (
    UPDATE delta_job SET scheduled_at = scheduled_at - make_interval(secs => %(seconds)s)
    WHERE state IN ('scheduled', 'retryable')
    RETURNING 1
),
informers AS (
    UPDATE delta_informer SET next_run_at = next_run_at - make_interval(secs => %(seconds)s)
    RETURNING 1
),
starts AS (
    UPDATE delta_limit_start SET at = at - make_interval(secs => %(seconds)s)
    RETURNING 1
)
SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM informers),
       (SELECT count(*) FROM starts)
"""
