"""Every SQL statement delta_actors runs, named after the function that runs it.

Statements are `LiteralString` constants; nothing here is ever formatted with user input.
Arrays are passed as single parameters and expanded with `unnest`, so a batch of any size
is one statement and one round trip.
"""

from __future__ import annotations

from typing import Final, LiteralString

# The one LISTEN/NOTIFY channel; the payload is the queue (namespace) that has work.
JOB_CHANNEL: Final = "delta_jobs"

# ---------------------------------------------------------------- shared column lists


# The columns of a Resource (resource.Resource's fields, `object` excepted), with `state`
# computed: `running` while a work of the resource runs.
def _resource_columns(state: LiteralString) -> LiteralString:
    return (
        """
r.id, r.kind, r.object_id, r.namespace, """
        + state
        + """ AS state,
r.generation, r.attempt, r.max_attempts, array_to_json(r.errors)::text AS errors, r.tags,
r.metadata::text AS metadata, r.created_at, r.updated_at, r.attempted_at, r.synced_at
"""
    )


RESOURCE_COLUMNS: LiteralString = _resource_columns(
    """CASE WHEN EXISTS (
    SELECT 1 FROM delta_job AS w WHERE w.resource_id = r.id AND w.state = 'running')
THEN 'running' ELSE r.state::text END"""
)

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

# One job without a unique key, the common `enqueue`: the same row and wake-up as
# INSERT_JOBS, but a plain VALUES insert plans in a third of the time (0.2 against
# 0.5 ms a call, half of it planning), which is enqueue-to-start latency.
INSERT_ONE_JOB: LiteralString = """
INSERT INTO delta_job (kind, queue, args, priority, max_attempts, state, scheduled_at)
VALUES (%(kind)s, %(queue)s, %(args)s, %(priority)s, %(max_attempts)s,
        CASE WHEN %(scheduled_at)s::timestamptz IS NULL
                  OR %(scheduled_at)s::timestamptz <= now()
             THEN 'available' ELSE 'scheduled' END::delta_job_state,
        coalesce(%(scheduled_at)s::timestamptz, now()))
RETURNING id, kind, queue, state::text, unique_key,
          CASE WHEN state = 'available' THEN pg_notify('delta_jobs', queue) END
"""

# Bulk path (no unique keys): reserve ids and read the transaction's clock, COPY the
# rows in (binary), then wake each queue once. A batch of jobs all due now leaves state
# and scheduled_at to their defaults.
RESERVE_JOB_IDS: LiteralString = """
SELECT now(), array(SELECT nextval('delta_job_id_seq') FROM generate_series(1, %s))
"""

COPY_JOBS: LiteralString = """
COPY delta_job (id, kind, queue, args, priority, max_attempts, state, scheduled_at)
FROM STDIN (FORMAT BINARY)
"""

COPY_DUE_JOBS: LiteralString = """
COPY delta_job (id, kind, queue, args, priority, max_attempts) FROM STDIN (FORMAT BINARY)
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

# The available jobs of queue %(queue)s, as `j`, through the claim index (migration 6: it
# leads with hashtext(queue); the queue test on the row settles a collision).
_AVAILABLE_IN_QUEUE: LiteralString = (
    "j.state = 'available' AND hashtext(j.queue) = hashtext(%(queue)s) AND j.queue = %(queue)s"
)

# Never more rows than free slots (LIMIT), skipping rows other claimers hold, and skipping
# the queued work of a resource whose previous work still runs (coalescing: runs of one
# resource never overlap). `= ANY(ARRAY(...))` pins the update to primary-key lookups; a
# join let the planner hash the whole table. A resource work comes back with its
# resource as stored now, read without a lock (claims never wait on informs).
CLAIM_JOBS: LiteralString = (
    """
WITH locked AS (
    SELECT j.id FROM delta_job AS j
    WHERE """
    + _AVAILABLE_IN_QUEUE
    + """
      AND (j.resource_id IS NULL OR NOT EXISTS (
            SELECT 1 FROM delta_job AS busy
            WHERE busy.resource_id = j.resource_id AND busy.state = 'running'))
    ORDER BY j.priority, j.scheduled_at, j.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE delta_job AS j
    SET state = 'running', attempt = j.attempt + 1, attempted_at = now(), claimed_by = %(actor)s
    WHERE j.id = ANY(ARRAY(SELECT id FROM locked))
    RETURNING j.id, j.kind, j.args, j.attempt, j.max_attempts, j.resource_id
),
resources AS MATERIALIZED (
    SELECT """
    + _resource_columns("'running'")
    + """, r.object FROM delta_resource AS r
    WHERE r.id = ANY(ARRAY(SELECT resource_id FROM claimed WHERE resource_id IS NOT NULL))
)
SELECT c.id, c.kind, c.args, c.attempt, c.max_attempts, c.resource_id, res.*
FROM claimed AS c LEFT JOIN resources AS res ON res.id = c.resource_id
"""
)

# Fenced: only a claim that is still current (running, same attempt, same actor) is
# finished; a rescued or handed-back claim matches nothing and is reported stale. The
# `= ANY` keeps the plan to primary-key lookups whatever the statistics say. Arrays of
# numbers and labels come as literals (completer.array_literal); errors, when a batch has
# any, as a binary array, else NULL (unnest pads it with NULLs).
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
            %(delays)s::float8[], %(errors)b::jsonb[], %(give_backs)s::boolean[])
     AS u(id, attempt, state, delay, error, give_back)
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.id = u.id
  AND j.state = 'running' AND j.attempt = u.attempt AND j.claimed_by = %(actor)s
RETURNING j.id
"""

# Results of resource works, fenced like COMPLETE_JOBS. A resource work's job is always
# finished here, never put back in the queue: a retry or requeue is a new queued work,
# inserted ON CONFLICT DO NOTHING, because an inform may have queued one meanwhile (which
# reads the newest object anyway). The resource takes the outcome only if its generation
# is still the one the work saw; a newer change keeps its own state and queued work.
COMPLETE_WORKS: LiteralString = """
WITH u AS (
    SELECT * FROM unnest(
        %(ids)s::bigint[], %(attempts)s::smallint[], %(generations)s::bigint[],
        %(job_states)s::delta_job_state[], %(resource_states)s::delta_resource_state[],
        %(count_attempts)s::boolean[], %(delays)s::float8[], %(errors)b::jsonb[])
    AS u(id, attempt, generation, job_state, resource_state, count_attempt, delay, error)
),
finished AS (
    UPDATE delta_job AS j
    SET state = u.job_state, claimed_by = NULL, finalized_at = now(),
        errors = CASE WHEN u.error IS NULL THEN j.errors
                      ELSE (j.errors || u.error)[greatest(1, cardinality(j.errors) - 8):] END
    FROM u
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.id = u.id
      AND j.state = 'running' AND j.attempt = u.attempt AND j.claimed_by = %(actor)s
    RETURNING j.id, j.resource_id, j.attempted_at
),
locked AS (
    SELECT r.id FROM delta_resource AS r
    WHERE r.id = ANY(ARRAY(SELECT resource_id FROM finished))
    ORDER BY r.id
    FOR UPDATE
),
resources AS (
    UPDATE delta_resource AS r
    SET state = CASE
            WHEN u.resource_state IS NULL OR r.generation <> u.generation THEN r.state
            WHEN u.count_attempt AND r.attempt + 1 >= r.max_attempts THEN 'degraded'
            ELSE u.resource_state END,
        attempt = CASE WHEN u.count_attempt AND r.generation = u.generation
                       THEN r.attempt + 1 ELSE r.attempt END,
        synced_at = CASE WHEN u.resource_state = 'synced' AND r.generation = u.generation
                         THEN now() ELSE r.synced_at END,
        attempted_at = f.attempted_at,
        errors = CASE WHEN u.error IS NULL THEN r.errors
                      ELSE (r.errors || u.error)[greatest(1, cardinality(r.errors) - 8):] END,
        updated_at = now()
    FROM finished AS f JOIN u ON u.id = f.id
    WHERE r.id = ANY(ARRAY(SELECT id FROM locked)) AND r.id = f.resource_id
    RETURNING r.id, r.kind, r.namespace, r.max_attempts, r.state, f.id AS job_id,
              r.generation <> u.generation AS moved_on,
              CASE WHEN r.generation <> u.generation THEN 0 ELSE u.delay END AS delay,
              r.object_id, r.generation,
              u.resource_state IS NOT NULL AND r.generation = u.generation AS applied,
              u.error->>'error' AS error
),
-- Events (events.py) only while a live subscriber wants them: otherwise this costs one
-- probe of an empty table. Written by this transaction, so in commit order per resource.
events AS (
    INSERT INTO delta_event (resource_id, kind, object_id, namespace, event, generation, error)
    SELECT x.id, x.kind, x.object_id, x.namespace, x.state, x.generation, x.error
    FROM resources AS x
    -- Uncorrelated first: with nobody subscribed, one check per statement, not per row.
    WHERE EXISTS (SELECT 1 FROM delta_subscriber WHERE expires_at > now())
      AND x.applied AND x.state IN ('synced', 'failed', 'degraded', 'deleted')
      AND EXISTS (SELECT 1 FROM delta_subscriber AS s
                  WHERE s.expires_at > now()
                    AND (s.kinds IS NULL OR x.kind = ANY(s.kinds))
                    AND (s.events IS NULL OR x.state = ANY(s.events)))
),
-- A work whose generation was overtaken leaves the state to the newer generation, whose
-- inform queued a work. But a claim racing that inform can take the queued work with the
-- older object (the claim locks the job row's newest version, yet reads the resource as
-- of its snapshot): then nothing is queued for the newer generation. So queue one,
-- unless one is queued (ON CONFLICT) or running already.
followups AS (
    INSERT INTO delta_job (kind, queue, args, resource_id, max_attempts, state, scheduled_at)
    SELECT x.kind, x.namespace, '\\x', x.id, x.max_attempts,
           CASE WHEN x.delay <= 0 THEN 'available' ELSE 'scheduled' END::delta_job_state,
           now() + make_interval(secs => greatest(x.delay, 0))
    FROM resources AS x
    WHERE x.delay IS NOT NULL AND x.state <> 'degraded'
      AND (NOT x.moved_on OR (x.state = 'scheduled' AND NOT EXISTS (
            SELECT 1 FROM delta_job AS w
            WHERE w.resource_id = x.id AND w.state = 'running' AND w.id <> x.job_id)))
    ON CONFLICT (resource_id)
        WHERE resource_id IS NOT NULL AND state IN ('available', 'scheduled', 'retryable')
        DO NOTHING
    RETURNING queue, state
),
notified AS (
    SELECT count(pg_notify('delta_jobs', q.queue)) AS n
    FROM (SELECT DISTINCT queue FROM followups WHERE state = 'available') AS q
)
SELECT f.id, (SELECT n FROM notified) FROM finished AS f
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

# Touches no row when rescue declared the actor dead meanwhile. `health`: see health.py.
HEARTBEAT_ACTOR: LiteralString = """
UPDATE delta_actor SET heartbeat_at = now(), health = %(health)s::jsonb WHERE id = %(actor)s
"""

# Capped: an exact count of a deep queue costs more than a heartbeat is worth. The lag
# takes the oldest due time per priority (one claim-index lookup each, 1..4), since the
# index orders by priority first.
COUNT_AVAILABLE_JOBS: LiteralString = (
    """
SELECT
    (SELECT count(*) FROM (
        SELECT 1 FROM delta_job AS j WHERE """
    + _AVAILABLE_IN_QUEUE
    + """ LIMIT 100000
    ) AS available),
    extract(epoch FROM now() - (
        SELECT min((
            SELECT j.scheduled_at FROM delta_job AS j
            WHERE """
    + _AVAILABLE_IN_QUEUE
    + """ AND j.priority = p
            ORDER BY j.scheduled_at LIMIT 1
        )) FROM generate_series(1, 4) AS p
    ))::float8
"""
)

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

# ---------------------------------------------------------------- resources (inform.py)
#
# Lock order, to keep informs, completions and claims free of deadlocks: a statement that
# writes resources locks them first, in id order (a `FOR UPDATE ... ORDER BY id` CTE),
# and only then writes the queued work. Claims never lock resources.

# Resource rows carry metadata as text: decoded by msgspec, ten times cheaper than
# psycopg's jsonb loader (json.loads).
#
# Phase 1 of an inform: what is stored for these identities (the object only for kinds
# whose change detection needs it, compare()). `= ANY` on both columns of the identity
# index keeps this one index pass whatever the statistics say (a join against unnest
# became a nested loop of sequential scans on a freshly truncated table); the caller
# drops rows whose (kind, object_id) pair it did not ask for.
SELECT_STORED_RESOURCES: LiteralString = (
    """
SELECT """
    + RESOURCE_COLUMNS
    + """, r.hash, CASE WHEN r.kind = ANY(%(compare_kinds)b::text[]) THEN r.object END
FROM delta_resource AS r
WHERE r.kind = ANY(%(kinds)b::text[]) AND r.object_id = ANY(%(object_ids)b::text[])
"""
)

# Phase 1 again, for identities that lost a race: lock them (in id order, like every
# resource write) so that this round cannot lose again.
SELECT_STORED_RESOURCES_FOR_UPDATE: LiteralString = (
    SELECT_STORED_RESOURCES.rstrip() + "\nORDER BY r.id\nFOR UPDATE OF r\n"
)

# Array parameters of informs go in binary (`%b`): psycopg dumps large text and bytea
# arrays about ten times faster so than as escaped text literals.
#
# Phase 2: write the changes, fenced on the generation phase 1 saw (NULL: not stored), and
# fold each into the resource's queued work. An identity that changed meanwhile is not
# returned, and the caller runs phase 1 again for it.
WRITE_RESOURCES: LiteralString = (
    """
WITH input AS (
    SELECT * FROM unnest(
        %(kinds)b::text[], %(object_ids)b::text[], %(namespaces)b::text[], %(objects)b::bytea[],
        %(hashes)b::bytea[], %(ids)b::bigint[], %(expected)b::bigint[],
        %(max_attempts)b::smallint[])
    AS i(kind, object_id, namespace, object, hash, id, expected, max_attempts)
),
-- Tags and metadata are options of the whole call: one value, not one per row.
options AS (
    SELECT ARRAY(SELECT jsonb_array_elements_text(%(tags)s::jsonb)) AS tags,
           %(metadata)s::jsonb AS metadata
),
inserted AS (
    INSERT INTO delta_resource AS r
        (kind, object_id, namespace, object, hash, max_attempts, tags, metadata)
    SELECT i.kind, i.object_id, i.namespace, i.object, i.hash, i.max_attempts,
           o.tags, o.metadata
    FROM input AS i, options AS o WHERE i.expected IS NULL
    ON CONFLICT (kind, object_id) DO NOTHING
    RETURNING """
    # A new resource has no running work and no errors: no need to look.
    + _resource_columns("'scheduled'").replace("array_to_json(r.errors)::text", "'[]'")
    + """
),
locked AS (
    SELECT r.id FROM delta_resource AS r
    WHERE r.id = ANY(%(ids)b::bigint[])
    ORDER BY r.id
    FOR UPDATE
),
updated AS (
    UPDATE delta_resource AS r
    SET object = i.object, hash = i.hash, generation = r.generation + 1, state = 'scheduled',
        attempt = 0, namespace = i.namespace, max_attempts = i.max_attempts,
        tags = o.tags, metadata = o.metadata, updated_at = now()
    FROM input AS i, options AS o
    WHERE r.id = ANY(ARRAY(SELECT id FROM locked)) AND r.id = i.id
      AND r.kind = i.kind AND r.object_id = i.object_id AND r.generation = i.expected
    RETURNING """
    + RESOURCE_COLUMNS
    + """
),
written AS (
    SELECT * FROM inserted UNION ALL SELECT * FROM updated
),
-- A new resource has no work yet: a plain insert, without the cost of conflict checks.
new_works AS (
    INSERT INTO delta_job (kind, queue, args, resource_id, max_attempts)
    SELECT w.kind, w.namespace, '\\x', w.id, w.max_attempts FROM inserted AS w
    RETURNING queue
),
changed_works AS (
    INSERT INTO delta_job (kind, queue, args, resource_id, max_attempts)
    SELECT w.kind, w.namespace, '\\x', w.id, w.max_attempts FROM updated AS w
    ON CONFLICT (resource_id)
        WHERE resource_id IS NOT NULL AND state IN ('available', 'scheduled', 'retryable')
        DO UPDATE SET state = 'available', scheduled_at = now(), queue = excluded.queue
    RETURNING queue
),
works AS (
    SELECT queue FROM new_works UNION ALL SELECT queue FROM changed_works
),
notified AS (
    SELECT count(pg_notify('delta_jobs', q.queue)) AS n
    FROM (SELECT DISTINCT queue FROM works) AS q
)
SELECT w.*, (SELECT n FROM notified) FROM written AS w
"""
)

# ---------------------------------------------------------------- resources (client.py)

GET_RESOURCE: LiteralString = (
    "SELECT "
    + RESOURCE_COLUMNS
    + ", r.object FROM delta_resource AS r WHERE r.kind = %s AND r.object_id = %s"
)

# Re-work a resource with its stored object: attempts reset, generation kept. A deleted
# resource stays deleted (only a newer change revives it).
INVALIDATE_RESOURCE: LiteralString = """
WITH target AS (
    SELECT r.id FROM delta_resource AS r
    WHERE r.kind = %s AND r.object_id = %s AND r.state <> 'deleted'
    FOR UPDATE
),
marked AS (
    UPDATE delta_resource AS r SET state = 'scheduled', attempt = 0, updated_at = now()
    FROM target WHERE r.id = target.id
    RETURNING r.id, r.kind, r.namespace, r.max_attempts
),
works AS (
    INSERT INTO delta_job (kind, queue, args, resource_id, max_attempts)
    SELECT m.kind, m.namespace, '\\x', m.id, m.max_attempts FROM marked AS m
    ON CONFLICT (resource_id)
        WHERE resource_id IS NOT NULL AND state IN ('available', 'scheduled', 'retryable')
        DO UPDATE SET state = 'available', scheduled_at = now()
    RETURNING queue
)
SELECT count(pg_notify('delta_jobs', w.queue)) FROM works AS w
"""

# ---------------------------------------------------------------- events (events.py)

# The start cursor: every transaction below the xmin of this statement's snapshot has
# ended, so results written by statements that start after this commit sort at or after it.
# A reader whose lease lapsed registers again at its own cursor (`after_xid`).
REGISTER_SUBSCRIBER: LiteralString = """
INSERT INTO delta_subscriber (host, pid, kinds, events, cursor_xid, expires_at)
VALUES (%(host)s, %(pid)s, %(kinds)s::text[], %(events)s::delta_resource_state[],
        coalesce(%(after_xid)s::text::xid8, pg_snapshot_xmin(pg_current_snapshot())),
        now() + make_interval(secs => %(ttl)s))
RETURNING id, cursor_xid::text::bigint
"""

# Renews the lease and records how far the reader got; no row: the lease had lapsed.
RENEW_SUBSCRIBER: LiteralString = """
UPDATE delta_subscriber
SET expires_at = now() + make_interval(secs => %(ttl)s),
    cursor_xid = greatest(cursor_xid, %(cursor_xid)s::text::xid8)
WHERE id = %(id)s AND expires_at > now()
RETURNING id
"""

UNREGISTER_SUBSCRIBER: LiteralString = "DELETE FROM delta_subscriber WHERE id = %s"

# Only rows of transactions below the snapshot's xmin: those have all ended, so no row can
# appear before the cursor later (a plain `id > cursor` skips rows of transactions that
# commit out of id order). Filters apply in the reader, so the cursor passes rows that
# other subscribers wanted.
SELECT_EVENTS: LiteralString = """
SELECT xid::text::bigint, id, kind, object_id, event::text, generation, error, at
FROM delta_event
WHERE (xid, id) > (%(xid)s::text::xid8, %(id)s::bigint)
  AND xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY xid, id
LIMIT %(limit)s
"""

# ---------------------------------------------------------------- rescue (rescue.py)

# Actors whose heartbeat is older than the TTL, and claims held by actors that have no
# row at all (unregistered, or rescued before): both are dead for rescue's purposes.
SELECT_DEAD_ACTORS: LiteralString = """
SELECT id FROM delta_actor
WHERE heartbeat_at < now() - make_interval(secs => %(ttl)s)
UNION
SELECT DISTINCT j.claimed_by FROM delta_job AS j
WHERE j.state = 'running'
  AND NOT EXISTS (SELECT 1 FROM delta_actor AS a WHERE a.id = j.claimed_by)
LIMIT %(limit)s
"""

# Deleting the row first tells a paused actor that resumes that it was declared dead.
DELETE_ACTORS: LiteralString = "DELETE FROM delta_actor WHERE id = ANY(%s)"

SELECT_CLAIMS_OF_ACTOR: LiteralString = """
SELECT j.id, j.attempt, j.max_attempts, j.resource_id, r.generation
FROM delta_job AS j
LEFT JOIN delta_resource AS r ON r.id = j.resource_id
WHERE j.state = 'running' AND j.claimed_by = %s
ORDER BY j.id
LIMIT %s
"""

# ---------------------------------------------------------------- election (election.py)

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

# ---------------------------------------------------------------- informers (informers.py)

# `fence` in the statements below: the write happens only while the given term holds an
# unexpired lease, so a leader that lost its lease (paused, partitioned) cannot act.

SELECT_INFORMERS: LiteralString = """
SELECT kind, cursor, next_run_at <= now() FROM delta_informer WHERE kind = ANY(%s)
"""

ADD_INFORMERS: LiteralString = """
INSERT INTO delta_informer (kind) SELECT unnest(%s::text[]) ON CONFLICT (kind) DO NOTHING
"""

START_INFORMER: LiteralString = """
UPDATE delta_informer SET last_started_at = now()
WHERE kind = %(kind)s AND next_run_at <= now()
  AND EXISTS (SELECT 1 FROM delta_leader WHERE name = 'default' AND term = %(term)s
              AND actor_id = %(actor)s AND expires_at > now())
RETURNING cursor, now(), last_full_at
"""

FINISH_INFORMER: LiteralString = """
UPDATE delta_informer
SET cursor = coalesce(%(cursor)s, cursor), last_finished_at = now(), last_error = NULL,
    last_full_at = CASE WHEN %(full)s THEN last_started_at ELSE last_full_at END,
    runs = runs + 1, objects = objects + %(objects)s,
    next_run_at = now() + make_interval(secs => %(next_in)s)
WHERE kind = %(kind)s
  AND EXISTS (SELECT 1 FROM delta_leader WHERE name = 'default' AND term = %(term)s
              AND actor_id = %(actor)s AND expires_at > now())
RETURNING kind
"""

FAIL_INFORMER: LiteralString = """
UPDATE delta_informer
SET last_error = %(error)s, failures = failures + 1, last_finished_at = now(),
    objects = objects + %(objects)s,
    next_run_at = now() + make_interval(secs => %(next_in)s)
WHERE kind = %(kind)s
"""

# After a full listing: every resource of the kind that the listing did not name, and
# that no inform touched since the listing began, is marked deleted. Fenced.
TOMBSTONE_UNLISTED: LiteralString = """
UPDATE delta_resource AS r SET state = 'deleted', updated_at = now()
WHERE r.kind = %(kind)s AND r.state <> 'deleted' AND r.updated_at < %(started)s
  AND NOT (r.object_id = ANY(%(listed)s::text[]))
  AND EXISTS (SELECT 1 FROM delta_leader WHERE name = 'default' AND term = %(term)s
              AND actor_id = %(actor)s AND expires_at > now())
RETURNING r.id
"""

# ---------------------------------------------------------------- maintenance (maintenance.py)

# Synced resources older than the namespace's expiry get one new work each (no chain).
EXPIRE_RESOURCES: LiteralString = """
WITH stale AS (
    SELECT r.id FROM delta_resource AS r
    WHERE r.namespace = %(namespace)s AND r.state = 'synced'
      AND r.updated_at < now() - make_interval(secs => %(expiry)s)
    ORDER BY r.updated_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
expired AS (
    UPDATE delta_resource AS r SET state = 'expired', updated_at = now()
    FROM stale WHERE r.id = stale.id
    RETURNING r.id, r.kind, r.namespace, r.max_attempts
),
works AS (
    INSERT INTO delta_job (kind, queue, args, resource_id, max_attempts)
    SELECT e.kind, e.namespace, '\\x', e.id, e.max_attempts FROM expired AS e
    ON CONFLICT (resource_id)
        WHERE resource_id IS NOT NULL AND state IN ('available', 'scheduled', 'retryable')
        DO NOTHING
    RETURNING queue
)
SELECT (SELECT count(*) FROM expired),
       (SELECT count(pg_notify('delta_jobs', q.queue)) FROM (SELECT DISTINCT queue FROM works) AS q)
"""

DELETE_FINALIZED_JOBS: LiteralString = """
WITH old AS (
    SELECT id FROM delta_job
    WHERE state IN ('completed', 'cancelled', 'discarded')
      AND finalized_at < now() - make_interval(secs => %(retention)s)
      AND queue = %(namespace)s
    ORDER BY finalized_at
    LIMIT %(limit)s
)
DELETE FROM delta_job AS j USING old WHERE j.id = old.id
"""

# Events every live subscriber has read (every ended one once none is live), oldest first.
DELETE_READ_EVENTS: LiteralString = """
WITH old AS (
    SELECT e.xid, e.id FROM delta_event AS e
    WHERE e.xid < (SELECT coalesce(min(s.cursor_xid), pg_snapshot_xmin(pg_current_snapshot()))
                   FROM delta_subscriber AS s WHERE s.expires_at > now())
    ORDER BY e.xid, e.id
    LIMIT %(limit)s
)
DELETE FROM delta_event AS e USING old WHERE e.xid = old.xid AND e.id = old.id
"""

# Leases that lapsed a while ago (a reader that resumes re-registers and reports a gap).
DELETE_LAPSED_SUBSCRIBERS: LiteralString = """
DELETE FROM delta_subscriber WHERE expires_at < now() - make_interval(secs => %(grace)s)
"""

DELETE_DELETED_RESOURCES: LiteralString = """
WITH old AS (
    SELECT r.id FROM delta_resource AS r
    WHERE r.namespace = %(namespace)s AND r.state = 'deleted'
      AND r.updated_at < now() - make_interval(secs => %(retention)s)
      AND NOT EXISTS (SELECT 1 FROM delta_job AS j WHERE j.resource_id = r.id
                      AND j.state IN ('available', 'scheduled', 'retryable', 'running'))
    ORDER BY r.updated_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM delta_resource AS r USING old WHERE r.id = old.id
"""

# ---------------------------------------------------------------- status (status.py)
#
# Read-only statements of `delta-actors status` and `inspect`. Ages come from the
# database's clock. Queue counts go through the partial indexes of each state.

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
    SELECT queue, count(*) AS n, min(scheduled_at) AS oldest
    FROM delta_job WHERE state = 'available' GROUP BY queue
),
running AS (
    SELECT queue, count(*) AS n FROM delta_job WHERE state = 'running' GROUP BY queue
),
waiting AS (
    SELECT queue, count(*) AS n
    FROM delta_job WHERE state IN ('scheduled', 'retryable') GROUP BY queue
),
finished AS (
    SELECT queue, count(*) AS n
    FROM delta_job
    WHERE state IN ('completed', 'cancelled', 'discarded')
      AND finalized_at > now() - make_interval(secs => %(window)s)
    GROUP BY queue
),
queues AS (
    SELECT queue FROM available UNION SELECT queue FROM running
    UNION SELECT queue FROM waiting UNION SELECT queue FROM finished
)
SELECT q.queue, coalesce(a.n, 0), coalesce(r.n, 0), coalesce(w.n, 0),
       greatest(extract(epoch FROM now() - a.oldest), 0)::float8, coalesce(f.n, 0)
FROM queues AS q
LEFT JOIN available AS a ON a.queue = q.queue
LEFT JOIN running AS r ON r.queue = q.queue
LEFT JOIN waiting AS w ON w.queue = q.queue
LEFT JOIN finished AS f ON f.queue = q.queue
ORDER BY q.queue
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
(SELECT 'job', j.kind, j.id::text, j.queue, j.state::text, j.attempt::int,
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
