"""Every SQL statement delta_actors runs, named after the function that runs it.

Statements are `LiteralString` constants; nothing here is ever formatted with user input.
Arrays are passed as single parameters and expanded with `unnest`, so a batch of any size
is one statement and one round trip.
"""

from __future__ import annotations

from typing import Final, LiteralString

# The one LISTEN/NOTIFY channel; the payload is the queue (namespace) that has work.
JOB_CHANNEL: Final = "delta_jobs"

# ---------------------------------------------------------------- schema (schema.py)

CREATE_MIGRATION_TABLE: LiteralString = """
CREATE TABLE IF NOT EXISTS delta_migration (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

# A transaction-level lock: released by the commit or rollback that ends migrate().
LOCK_MIGRATIONS: LiteralString = "SELECT pg_advisory_xact_lock(hashtext('delta_actors.migrate'))"

SELECT_APPLIED_MIGRATIONS: LiteralString = "SELECT version FROM delta_migration"

RECORD_MIGRATION: LiteralString = "INSERT INTO delta_migration (version, name) VALUES (%s, %s)"

SELECT_MIGRATION_TABLE_EXISTS: LiteralString = "SELECT to_regclass('delta_migration') IS NOT NULL"

SELECT_SCHEMA_VERSION: LiteralString = "SELECT coalesce(max(version), 0) FROM delta_migration"

# ---------------------------------------------------------------- insert (queue/insert.py)

_INSERTED_JOBS: LiteralString = """
INSERT INTO delta_job
    (kind, queue, args, priority, max_attempts, unique_key, state, scheduled_at)
SELECT u.kind, u.queue, u.args, u.priority, u.max_attempts, u.unique_key,
       CASE WHEN u.scheduled_at IS NULL OR u.scheduled_at <= now()
            THEN 'available' ELSE 'scheduled' END::delta_job_state,
       coalesce(u.scheduled_at, now())
FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::smallint[], %s::smallint[],
            %s::text[], %s::timestamptz[])
     AS u(kind, queue, args, priority, max_attempts, unique_key, scheduled_at)
ON CONFLICT (kind, unique_key)
    WHERE unique_key IS NOT NULL
      AND state IN ('available', 'scheduled', 'running', 'retryable')
    DO NOTHING
RETURNING id, kind, queue, state, unique_key
"""

# Rows come back in insertion order (ids ascend with it). Postgres delivers identical
# notifications of one transaction once, so this is one NOTIFY per queue per commit.
INSERT_JOBS: LiteralString = (
    "WITH inserted AS ("
    + _INSERTED_JOBS
    + """),
notified AS (
    SELECT count(pg_notify('delta_jobs', q.queue)) AS n
    FROM (SELECT DISTINCT queue FROM inserted WHERE state = 'available') AS q
)
SELECT i.id, i.kind, i.queue, i.state::text, i.unique_key
FROM inserted AS i, notified
ORDER BY i.id
"""
)

# Bulk path (no unique keys): reserve ids and read the transaction's clock, COPY the
# rows in, then wake each queue once.
RESERVE_JOB_IDS: LiteralString = """
SELECT now(), array(SELECT nextval('delta_job_id_seq') FROM generate_series(1, %s))
"""

COPY_JOBS: LiteralString = """
COPY delta_job (id, kind, queue, args, priority, max_attempts, state, scheduled_at)
FROM STDIN
"""

NOTIFY_QUEUES: LiteralString = """
SELECT count(pg_notify('delta_jobs', q)) FROM unnest(%s::text[]) AS q
"""

SELECT_LIVE_UNIQUE_JOBS: LiteralString = """
SELECT id, kind, queue, state::text, unique_key
FROM delta_job
WHERE (kind, unique_key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
  AND state IN ('available', 'scheduled', 'running', 'retryable')
"""

# ---------------------------------------------------------------- worker (queue/worker.py)

# Never more rows than free slots (LIMIT), skipping rows other claimers hold. `= ANY(ARRAY
# (...))` pins the update to primary-key lookups; a join let the planner hash the table.
CLAIM_JOBS: LiteralString = """
WITH locked AS (
    SELECT id FROM delta_job
    WHERE state = 'available' AND queue = %(queue)s
    ORDER BY priority, scheduled_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE delta_job AS j
SET state = 'running', attempt = j.attempt + 1, attempted_at = now(), claimed_by = %(actor)s
WHERE j.id = ANY(ARRAY(SELECT id FROM locked))
RETURNING j.id, j.kind, j.args, j.attempt, j.max_attempts
"""

# Fenced: only a claim that is still current (running, same attempt, same actor) is
# finished; a rescued or handed-back claim matches nothing and is reported stale. The
# `= ANY` keeps the plan to primary-key lookups whatever the statistics say.
COMPLETE_JOBS: LiteralString = """
UPDATE delta_job AS j
SET state = u.state,
    attempt = j.attempt - u.give_back::integer,
    claimed_by = NULL,
    scheduled_at = CASE WHEN u.delay IS NULL THEN j.scheduled_at
                        ELSE now() + make_interval(secs => u.delay) END,
    finalized_at = CASE WHEN u.state IN ('completed', 'cancelled', 'discarded')
                        THEN now() END,
    errors = CASE WHEN u.error IS NULL THEN j.errors
                  ELSE (j.errors || u.error)[greatest(1, cardinality(j.errors) - 8):] END
FROM unnest(%(ids)s::bigint[], %(attempts)s::smallint[], %(states)s::delta_job_state[],
            %(delays)s::float8[], %(errors)s::jsonb[], %(give_backs)s::boolean[])
     AS u(id, attempt, state, delay, error, give_back)
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.id = u.id
  AND j.state = 'running' AND j.attempt = u.attempt AND j.claimed_by = %(actor)s
RETURNING j.id
"""

# A stopping worker returns what it could not finish: no attempt counted, and other
# workers of the queue are woken to take it.
HAND_BACK_JOBS: LiteralString = """
WITH returned AS (
    UPDATE delta_job AS j
    SET state = 'available', attempt = j.attempt - 1, claimed_by = NULL
    FROM unnest(%s::bigint[], %s::smallint[]) AS u(id, attempt)
    WHERE j.id = u.id AND j.state = 'running' AND j.attempt = u.attempt
      AND j.claimed_by = %s
    RETURNING j.id, j.queue
)
SELECT r.id, pg_notify('delta_jobs', r.queue) FROM returned AS r
"""

# ---------------------------------------------------------------- scheduler (queue/scheduler.py)

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
    RETURNING j.queue
)
SELECT p.queue, count(*), pg_notify('delta_jobs', p.queue)
FROM promoted AS p GROUP BY p.queue
"""

SELECT_NEXT_DUE_IN: LiteralString = """
SELECT extract(epoch FROM min(scheduled_at) - now())::float8
FROM delta_job WHERE state IN ('scheduled', 'retryable')
"""

# ---------------------------------------------------------------- actors (queue/worker.py)

REGISTER_ACTOR: LiteralString = """
INSERT INTO delta_actor (host, pid, namespace, role) VALUES (%s, %s, %s, %s) RETURNING id
"""

HEARTBEAT_ACTOR: LiteralString = "UPDATE delta_actor SET heartbeat_at = now() WHERE id = %s"

UNREGISTER_ACTOR: LiteralString = "DELETE FROM delta_actor WHERE id = %s"

# ---------------------------------------------------------------- client (client.py)

# In the order of the fields of queue.rows.JobRow.
JOB_COLUMNS: LiteralString = """
id, kind, queue, state::text, args, priority, attempt, max_attempts,
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

COUNT_JOBS_BY_STATE: LiteralString = """
SELECT state::text, count(*) FROM delta_job WHERE queue = %s GROUP BY state
"""
