"""Statements of the resource table (`delta_resource`): informs, reads, invalidation, a work's
completion, expiry, tombstones and cleanup.

Lock order, to keep informs, completions and claims free of deadlocks: a statement that
writes resources locks them first, in id order (a `FOR UPDATE ... ORDER BY id` CTE),
and only then writes the queued work. Claims never lock resources.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, LiteralString, TypeVar

import msgspec

from delta_actors.model.job_row import JobError
from delta_actors.model.resource import Resource, State

T = TypeVar("T")


class ResourceRow(msgspec.Struct, frozen=True):
    """The columns of `resource_columns`, in their order: the one place they are named."""

    id: int
    kind: str
    object_id: str
    namespace: str
    state: str  # `running` while a work of the resource runs, else the stored state
    generation: int
    attempt: int
    max_attempts: int
    errors: str | None  # a JSON array of JobError, newest last
    tags: list[str]
    metadata: str  # a JSON object
    created_at: datetime
    updated_at: datetime
    attempted_at: datetime | None
    synced_at: datetime | None
    deletion_requested_at: datetime | None

    def resource(self, obj: T) -> Resource[T]:
        """The Resource this row describes, holding `obj` (decoded by the caller)."""
        errors = self.errors
        metadata = self.metadata
        return Resource(
            self.id, self.kind, self.object_id, self.namespace, obj, _states[self.state],
            self.generation, self.attempt, self.max_attempts,
            _errors_decoder.decode(errors) if errors and errors != "[]" else [],
            list(self.tags), _metadata_decoder.decode(metadata) if metadata != "{}" else {},
            self.created_at, self.updated_at, self.attempted_at, self.synced_at,
            self.deletion_requested_at,
        )  # fmt: skip


class StoredRow(ResourceRow, frozen=True):
    """`resource_columns` and the stored object (GET_RESOURCE; a claimed work's resource)."""

    object: bytes


class InformedRow(ResourceRow, frozen=True):
    """SELECT_STORED_RESOURCES: the columns, the content hash, the object if it compares."""

    hash: bytes
    object: bytes | None


class WrittenRow(ResourceRow, frozen=True):
    """WRITE_RESOURCES: the columns of a written resource, and the queues notified."""

    notified: int


_errors_decoder = msgspec.json.Decoder(list[JobError])
_metadata_decoder = msgspec.json.Decoder(dict[str, Any])
_states = {state.value: state for state in State}


# The columns of a Resource (ResourceRow above: Resource's fields, `object` excepted),
# with `state` computed: `running` while a work of the resource runs.
def resource_columns(state: LiteralString) -> LiteralString:
    return (
        """
r.id, r.kind, r.object_id, r.namespace, """
        + state
        + """ AS state,
r.generation, r.attempt, r.max_attempts, array_to_json(r.errors)::text AS errors, r.tags,
r.metadata::text AS metadata, r.created_at, r.updated_at, r.attempted_at, r.synced_at,
r.deletion_requested_at
"""
    )


# `OFFSET 0`: a probe per resource, never a hash of every running job (job_sql._NOT_BUSY).
RESOURCE_COLUMNS: LiteralString = resource_columns(
    """CASE WHEN EXISTS (
    SELECT 1 FROM delta_job AS w WHERE w.resource_id = r.id AND w.state = 'running' OFFSET 0)
THEN 'running' ELSE r.state::text END"""
)

# The fence of every result (COMPLETE_JOBS, HAND_BACK_JOBS, COMPLETE_WORKS below):
# only a claim that is still current (running, same attempt, same actor) is finished; a
# rescued or handed-back claim matches nothing and is reported stale. It is written as a
# CASE on purpose, and joined with the rows found BY_ID or BY_ROW_VERSION (below):
# - Written plainly, `state = 'running' AND claimed_by = actor` let the planner read the
#   running index by claimed_by, which while a transaction holds an old snapshot keeps an
#   entry for every claim since: a batch walked them all, more every minute, and at 1,500
#   jobs/s the queue fell behind at the tenth minute (docs/performance.md). A CASE proves
#   nothing of the index's `state = 'running'`, so the rows come through the primary
#   key, one descent per id of the batch, whatever else the table holds.
# - The planner gives a CASE the selectivity of an unknown condition (a half), where it
#   multiplied the plain conditions' down to one row, and then re-read the batch's ids
#   for each row found (a nested loop: 5-15 ms a batch of 100 instead of 1-2); with the
#   batch's size as its estimate it hashes the ids once.
CLAIM_FENCE: LiteralString = (
    "CASE WHEN j.state = 'running' AND j.attempt = u.attempt"
    " AND j.claimed_by = %(actor)s THEN true END"
)
# Rescue's fence (leader/rescue.py, the *_OF_ACTORS statements): the claim is still
# held, at that attempt, by one of the dead actors in `actors`, so that one statement
# finishes the claims of them all, in as many round trips for one dead actor as for
# fifty (on a leader 200 ms from its server, a pass per actor ran past its deadline). A
# claim taken since by a live actor, or finished, matches nothing; one handed back and
# taken again at the same attempt by another of these dead actors is theirs to rescue.
CLAIMS_OF_ACTORS_FENCE: LiteralString = (
    "CASE WHEN j.state = 'running' AND j.attempt = u.attempt"
    " AND j.claimed_by = ANY(%(actors)s::bigint[]) THEN true END"
)

# Where a results statement finds its rows, `j`. BY_ID: one primary-key descent per id.
# BY_ROW_VERSION: the row versions the claims wrote (the claim returns each one's ctid),
# one heap visit each and no index: a batch of 100 over a million rows 1.18 against
# 1.30 ms by id, of 10 over 20,000 rows 0.58 against 0.61 ms (the statement alone,
# alternated), and as cheap under a held snapshot. It is only where to look: the fence
# decides, on the version this statement sees, and `j.id = u.id` rejects another row
# that took over a freed line pointer. A row updated since its claim (a cancel request,
# a rescue) has moved: that version is dead, matches nothing, and the completer writes
# those results again BY_ID.
BY_ID: LiteralString = "j.id = ANY(%(ids)s::bigint[])"
BY_ROW_VERSION: LiteralString = "j.ctid = ANY(%(tids)s::tid[])"


# Results of resource works, fenced and found like COMPLETE_JOBS (by id, or by the row
# versions their claims wrote: COMPLETE_CLAIMED_WORKS). A resource work's job is always
# finished here, never put back in the queue: a retry or requeue is a new queued work,
# inserted ON CONFLICT DO NOTHING, because an inform may have queued one meanwhile (which
# reads the newest object anyway). The resource takes the outcome only if its generation
# is still the one the work saw; a newer change keeps its own state and queued work.
# Each written row says whether its resource has a work queued and available (an
# inform's, while this one ran): the worker then moves its claim floor back to where
# this work's claim read from (queue/floors.py), and only then.
def _complete_works(found: LiteralString, fence: LiteralString = CLAIM_FENCE) -> LiteralString:
    return (
        """
WITH u AS (
    SELECT * FROM unnest(
        %(ids)s::bigint[], %(attempts)s::smallint[], %(generations)s::bigint[],
        %(job_states)s::delta_job_state[], %(resource_states)s::delta_resource_state[],
        %(counts_attempts)s::boolean[], %(delays)s::float8[], %(errors)b::jsonb[])
    AS u(id, attempt, generation, job_state, resource_state, counts_attempt, delay, error)
),
finished AS (
    UPDATE delta_job AS j
    SET state = u.job_state, claimed_by = NULL, finalized_at = now(),
        errors = CASE WHEN u.error IS NULL THEN j.errors
                      ELSE (j.errors || u.error)[greatest(1, cardinality(j.errors) - 8):] END
    FROM u
    WHERE """
        + found
        + """ AND j.id = u.id AND """
        + fence
        + """
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
            WHEN u.counts_attempt AND r.attempt + 1 >= r.max_attempts THEN 'degraded'
            ELSE u.resource_state END,
        attempt = CASE WHEN u.counts_attempt AND r.generation = u.generation
                       THEN r.attempt + 1 ELSE r.attempt END,
        synced_at = CASE WHEN u.resource_state = 'synced' AND r.generation = u.generation
                         THEN now() ELSE r.synced_at END,
        deletion_requested_at = CASE
            WHEN u.resource_state IN ('deleting', 'deleted') AND r.generation = u.generation
            THEN coalesce(r.deletion_requested_at, now()) ELSE r.deletion_requested_at END,
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
      AND x.applied AND x.state IN ('synced', 'failed', 'degraded', 'deleting', 'deleted')
      AND EXISTS (SELECT 1 FROM delta_subscriber AS s
                  WHERE s.expires_at > now()
                    AND (s.kinds IS NULL OR x.kind = ANY(s.kinds))
                    AND (s.events IS NULL OR x.state = ANY(s.events)))
),
-- A work whose generation was overtaken leaves the state to the newer generation, whose
-- inform (or deletion) queued a work. But a claim racing that write can take the queued
-- work with the older row (the claim locks the job row's newest version, yet reads the
-- resource as of its snapshot): then nothing is queued for the newer generation. So
-- queue one, unless one is queued (ON CONFLICT) or running already.
followups AS (
    INSERT INTO delta_job (kind, namespace, args, resource_id, max_attempts, state, scheduled_at)
    SELECT x.kind, x.namespace, '\\x', x.id, x.max_attempts,
           CASE WHEN x.delay <= 0 THEN 'available' ELSE 'scheduled' END::delta_job_state,
           now() + make_interval(secs => greatest(x.delay, 0))
    FROM resources AS x
    WHERE x.delay IS NOT NULL AND x.state <> 'degraded'
      AND (NOT x.moved_on OR (x.state IN ('scheduled', 'deleting') AND NOT EXISTS (
            SELECT 1 FROM delta_job AS w
            WHERE w.resource_id = x.id AND w.state = 'running' AND w.id <> x.job_id
            OFFSET 0)))
    ON CONFLICT (resource_id)
        WHERE resource_id IS NOT NULL AND state IN ('available', 'scheduled', 'retryable')
        DO NOTHING
    RETURNING namespace, state
),
notified AS (
    SELECT count(pg_notify('delta_jobs', q.namespace)) AS n
    FROM (SELECT DISTINCT namespace FROM followups WHERE state = 'available') AS q
)
SELECT f.id, (SELECT n FROM notified),
       EXISTS (SELECT 1 FROM delta_job AS q
               WHERE q.resource_id = f.resource_id AND q.state = 'available' OFFSET 0)
           AS follow_up
FROM finished AS f
"""
    )


COMPLETE_WORKS: LiteralString = _complete_works(BY_ID)
COMPLETE_CLAIMED_WORKS: LiteralString = _complete_works(BY_ROW_VERSION)
COMPLETE_WORKS_OF_ACTORS: LiteralString = _complete_works(BY_ID, CLAIMS_OF_ACTORS_FENCE)

# Resource rows carry metadata as text: decoded by msgspec, ten times cheaper than
# psycopg's jsonb loader (json.loads).
#
# Phase 1 of an inform: what is stored for these identities (the object only for kinds
# whose change detection needs it, compare()). Each identity is one probe of the identity
# index, whatever the statistics say: the subquery fenced by OFFSET 0 is never flattened
# into a join, so it runs once per identity with both columns bound. (`kind = ANY(...)
# AND object_id = ANY(...)` was planned as a sequential scan of the table once it held a
# few hundred thousand rows, and a join against unnest as a hash join over one.)
SELECT_STORED_RESOURCES: LiteralString = (
    """
SELECT """
    + RESOURCE_COLUMNS
    + """, r.hash, CASE WHEN r.kind = ANY(%(compare_kinds)b::text[]) THEN r.object END AS object
FROM unnest(%(kinds)b::text[], %(object_ids)b::text[]) AS wanted(kind, object_id)
CROSS JOIN LATERAL (
    SELECT * FROM delta_resource AS r
    WHERE r.kind = wanted.kind AND r.object_id = wanted.object_id
    OFFSET 0
) AS r
"""
)

# A large inform's statements run without JIT (resources/store.py: JIT_OFF_FROM): the
# setting as it was (read first, by the fenced subquery), then off for the transaction.
JIT_OFF: LiteralString = """
SELECT s.before, set_config('jit', 'off', true)
FROM (SELECT current_setting('jit') AS before OFFSET 0) AS s
"""
RESTORE_JIT: LiteralString = "SELECT set_config('jit', %(jit)s, true)"

# Phase 1 again, for identities that lost a race (few): lock them, in id order like every
# resource write, so that this round cannot lose again. `= ANY` on both columns of the
# identity index; the caller drops rows whose (kind, object_id) pair it did not ask for.
SELECT_STORED_RESOURCES_FOR_UPDATE: LiteralString = (
    """
SELECT """
    + RESOURCE_COLUMNS
    + """, r.hash, CASE WHEN r.kind = ANY(%(compare_kinds)b::text[]) THEN r.object END AS object
FROM delta_resource AS r
WHERE r.kind = ANY(%(distinct_kinds)b::text[]) AND r.object_id = ANY(%(object_ids)b::text[])
ORDER BY r.id
FOR UPDATE OF r
"""
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
-- Tags, metadata, `listed` (an informer writes) and the trace context for the works' rows
-- (NULL unless traced, tracing.py) are options of the whole call: one value, not one per
-- row.
options AS (
    SELECT ARRAY(SELECT jsonb_array_elements_text(%(tags)s::jsonb)) AS tags,
           %(metadata)s::jsonb AS metadata, %(listed)s::boolean AS listed,
           %(trace)s::jsonb AS trace
),
inserted AS (
    INSERT INTO delta_resource AS r
        (kind, object_id, namespace, object, hash, max_attempts, tags, metadata, listed)
    SELECT i.kind, i.object_id, i.namespace, i.object, i.hash, i.max_attempts,
           o.tags, o.metadata, o.listed
    FROM input AS i, options AS o WHERE i.expected IS NULL
    ON CONFLICT (kind, object_id) DO NOTHING
    RETURNING """
    # A new resource has no running work and no errors: no need to look.
    + resource_columns("'scheduled'").replace("array_to_json(r.errors)::text", "'[]'")
    + """
),
-- The ids through an InitPlan, not the parameter: for a batch of new objects the
-- parameter is an array of NULLs, which the planner costs as matching nothing and reads
-- with a sequential scan of the whole table, once per batch (the slope of new informs).
locked AS (
    SELECT r.id FROM delta_resource AS r
    WHERE r.id = ANY(ARRAY(SELECT i.id FROM input AS i WHERE i.id IS NOT NULL))
    ORDER BY r.id
    FOR UPDATE
),
updated AS (
    UPDATE delta_resource AS r
    SET object = i.object, hash = i.hash, generation = r.generation + 1, state = 'scheduled',
        attempt = 0, namespace = i.namespace, max_attempts = i.max_attempts,
        tags = o.tags, metadata = o.metadata, updated_at = now(),
        deletion_requested_at = NULL, listed = r.listed OR o.listed
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
    INSERT INTO delta_job (kind, namespace, args, resource_id, max_attempts, metadata)
    SELECT w.kind, w.namespace, '\\x', w.id, w.max_attempts, o.trace
    FROM inserted AS w, options AS o
    RETURNING namespace
),
-- A folded work continues the newest traced inform's trace.
changed_works AS (
    INSERT INTO delta_job (kind, namespace, args, resource_id, max_attempts, metadata)
    SELECT w.kind, w.namespace, '\\x', w.id, w.max_attempts, o.trace
    FROM updated AS w, options AS o
    ON CONFLICT (resource_id)
        WHERE resource_id IS NOT NULL AND state IN ('available', 'scheduled', 'retryable')
        DO UPDATE SET state = 'available', scheduled_at = now(), namespace = excluded.namespace,
                      metadata = coalesce(excluded.metadata, delta_job.metadata)
    RETURNING namespace
),
works AS (
    SELECT namespace FROM new_works UNION ALL SELECT namespace FROM changed_works
),
notified AS (
    SELECT count(pg_notify('delta_jobs', q.namespace)) AS n
    FROM (SELECT DISTINCT namespace FROM works) AS q
)
SELECT w.*, (SELECT n FROM notified) FROM written AS w
"""
)

GET_RESOURCE: LiteralString = (
    "SELECT "
    + RESOURCE_COLUMNS
    + ", r.object FROM delta_resource AS r WHERE r.kind = %s AND r.object_id = %s"
)

GET_RESOURCES: LiteralString = (
    "SELECT "
    + RESOURCE_COLUMNS
    + """, r.object FROM delta_resource AS r
WHERE r.kind = %s AND r.object_id = ANY(%s::text[])"""
)


# Deletion, one way out for `client.delete*` and tombstones (a work's `Delete` takes the
# same states through COMPLETE_WORKS). `target` selects the resources of one kind to
# delete, locked in id order; resources already deleted or marked are left as they are.
# Each gets a new generation (so a work running meanwhile cannot overwrite the deletion
# with its result) and the deletion mark. With `finalize` it becomes `deleting` and its
# queued work (folded, as an inform does) runs `finalize`; without, `deleted` at once and
# its queued work is cancelled. Either is an event for the subscribers that want it.
def _deletion(target: LiteralString) -> LiteralString:
    return (
        """
WITH target AS ("""
        + target
        + """
    ORDER BY r.id
    FOR UPDATE OF r
),
marked AS (
    UPDATE delta_resource AS r
    SET state = CASE WHEN %(finalize)s::boolean THEN 'deleting'
                     ELSE 'deleted' END::delta_resource_state,
        generation = r.generation + 1, attempt = 0, deletion_requested_at = now(),
        updated_at = now()
    FROM target WHERE r.id = target.id
    RETURNING r.id, r.kind, r.object_id, r.namespace, r.max_attempts, r.generation, r.state
),
works AS (
    INSERT INTO delta_job (kind, namespace, args, resource_id, max_attempts)
    SELECT m.kind, m.namespace, '\\x', m.id, m.max_attempts FROM marked AS m
    WHERE m.state = 'deleting'
    ON CONFLICT (resource_id)
        WHERE resource_id IS NOT NULL AND state IN ('available', 'scheduled', 'retryable')
        DO UPDATE SET state = 'available', scheduled_at = now()
    RETURNING namespace
),
cancelled AS (
    UPDATE delta_job AS j SET state = 'cancelled', finalized_at = now()
    WHERE j.resource_id = ANY(ARRAY(SELECT id FROM marked WHERE state = 'deleted'))
      AND j.state IN ('available', 'scheduled', 'retryable')
),
events AS (
    INSERT INTO delta_event (resource_id, kind, object_id, namespace, event, generation, error)
    SELECT m.id, m.kind, m.object_id, m.namespace, m.state, m.generation, %(reason)s
    FROM marked AS m
    WHERE EXISTS (SELECT 1 FROM delta_subscriber WHERE expires_at > now())
      AND EXISTS (SELECT 1 FROM delta_subscriber AS s
                  WHERE s.expires_at > now()
                    AND (s.kinds IS NULL OR m.kind = ANY(s.kinds))
                    AND (s.events IS NULL OR m.state = ANY(s.events)))
),
notified AS (
    SELECT count(pg_notify('delta_jobs', q.namespace)) AS n
    FROM (SELECT DISTINCT namespace FROM works) AS q
)
SELECT m.id, (SELECT n FROM notified) FROM marked AS m
"""
    )


DELETE_RESOURCES: LiteralString = _deletion(
    """
    SELECT r.id FROM delta_resource AS r
    WHERE r.kind = %(kind)s AND r.object_id = ANY(%(object_ids)s::text[])
      AND r.state <> 'deleted' AND r.deletion_requested_at IS NULL"""
)

# After a full listing: every resource of the kind that the listing did not name, and
# that no inform touched since the listing began, is deleted; with `only_listed`
# (`tombstones = "listed"`), only those an informer stored or listed. Fenced on the term.
TOMBSTONE_UNLISTED: LiteralString = _deletion(
    """
    SELECT r.id FROM delta_resource AS r
    WHERE r.kind = %(kind)s AND r.state <> 'deleted' AND r.deletion_requested_at IS NULL
      AND r.updated_at < %(started)s
      AND NOT (r.object_id = ANY(%(listed)s::text[]))
      AND (r.listed OR NOT %(only_listed)s::boolean)
      AND EXISTS (SELECT 1 FROM delta_leader WHERE name = 'default' AND term = %(term)s
                  AND actor_id = %(actor)s AND expires_at > now())"""
)

# A full listing names what its informer owns: the resources it lists are `listed` from
# then on, for `tombstones = "listed"` (an informer's own writes set it as well).
MARK_LISTED: LiteralString = """
UPDATE delta_resource SET listed = true
WHERE kind = %(kind)s AND object_id = ANY(%(listed)s::text[]) AND NOT listed
"""

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
    INSERT INTO delta_job (kind, namespace, args, resource_id, max_attempts)
    SELECT e.kind, e.namespace, '\\x', e.id, e.max_attempts FROM expired AS e
    ON CONFLICT (resource_id)
        WHERE resource_id IS NOT NULL AND state IN ('available', 'scheduled', 'retryable')
        DO NOTHING
    RETURNING namespace
)
SELECT (SELECT count(*) FROM expired),
       (SELECT count(pg_notify('delta_jobs', q.namespace))
        FROM (SELECT DISTINCT namespace FROM works) AS q)
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

# The filters of `client.list`, `retry` and `delete` (and their CLI), on resources `r`:
# each parameter NULL matches everything. Statements that use them run unprepared, so
# every plan is made for its values and the NULL tests fold away; a state of failed or
# degraded then reads delta_resource_troubled_idx, an error filter
# delta_resource_erred_idx (migration 17: resources with an error history, so
# `r.errors <> '{}'` is spelled out for the planner to match its predicate), anything
# else the identity index, all in the (kind, object id) order that pages go in. A tag
# filter reads delta_resource_tags_idx (migration 21: a GIN index of the tagged
# resources; _RESOURCE_FILTER below) for a tag the tags' element statistics say few
# rows carry, and sorts those into page order; for a common one it walks the identity
# index. A state filter matches the stored state; `running` (a resource whose work
# runs) is a flag of its own, so that each folds: its resources come from the running
# works (few, bounded by the slots) through an InitPlan, not from a probe per resource
# of the kind. `error` is a case-insensitive part of the newest error.
#
# A page after a cursor: rows from the cursor on, `>=` (the index scan starts there),
# without the cursor's row itself. The planner estimates a row comparison by its first
# column alone, and `kind > after_kind` matches no row of the cursor's kind: with `>`
# every page after the first looked empty to it, and it walked the identity index for
# a rare tag instead of reading its few rows (375 ms three quarters into a million,
# against 0.2). A cursor of the kind filtered on also says `object_id > after`: with
# `kind =` the index starts from the kind's first entry for the row comparison alone,
# and walked up to the cursor (0.3 s three quarters into a million); that condition
# also leaves the cursor's row out. Without a kind, the last condition does.
_RESOURCE_MATCHES: LiteralString = """
(%(kind)s::text IS NULL OR r.kind = %(kind)s::text)
AND (%(namespace)s::text IS NULL OR r.namespace = %(namespace)s::text)
AND (%(state)s::delta_resource_state IS NULL OR r.state = %(state)s::delta_resource_state)
AND (NOT %(running)s::boolean OR r.id = ANY(ARRAY(
        SELECT w.resource_id FROM delta_job AS w
        WHERE w.state = 'running' AND w.resource_id IS NOT NULL)))
AND (%(tags)s::text[] IS NULL OR r.tags @> %(tags)s::text[])
AND (%(error)s::text IS NULL OR r.errors <> '{}')
AND (%(error)s::text IS NULL OR strpos(
        lower(r.errors[cardinality(r.errors)]->>'error'), lower(%(error)s::text)) > 0)
AND (%(ids)s::text[] IS NULL OR r.object_id = ANY(%(ids)s::text[]))
AND (%(after_kind)s::text IS NULL
     OR (r.kind, r.object_id) >= (%(after_kind)s::text, %(after_id)s::text))
AND (%(after_kind)s::text IS NULL OR %(kind)s::text IS DISTINCT FROM %(after_kind)s::text
     OR r.object_id > %(after_id)s::text)
AND (%(after_kind)s::text IS NULL OR %(kind)s::text IS NOT NULL
     OR r.kind <> %(after_kind)s::text OR r.object_id <> %(after_id)s::text)
"""

# The filter of the statements that run: with the tags index's predicate spelled out,
# which every tag filter implies but the planner cannot prove from `@>`. It also counts
# the condition as one of its own, and so expects fewer rows of a tag than there are,
# by the share of resources without tags: a turn to the index for a tag on a few
# percent of the rows costs a sort of them. ESTIMATE_MATCHING_RESOURCES reports that
# count, and leaves the predicate out.
_RESOURCE_FILTER: LiteralString = (
    _RESOURCE_MATCHES + "AND (%(tags)s::text[] IS NULL OR r.tags <> '{}')\n"
)

LIST_RESOURCES: LiteralString = (
    "SELECT "
    + RESOURCE_COLUMNS
    + ", r.object FROM delta_resource AS r WHERE "
    + _RESOURCE_FILTER
    + "ORDER BY r.kind, r.object_id LIMIT %(limit)s"
)

COUNT_RESOURCES: LiteralString = (
    "SELECT count(*) FROM delta_resource AS r WHERE " + _RESOURCE_FILTER
)

# The matches of a filter counted up to %(cap)s + 1 rows: a broad filter (every synced
# resource, a kind alone) stops after them instead of reading its million rows, and a
# result above %(cap)s says to ask ESTIMATE_MATCHING_RESOURCES instead.
COUNT_RESOURCES_UP_TO: LiteralString = (
    "SELECT count(*) FROM (SELECT FROM delta_resource AS r WHERE "
    + _RESOURCE_FILTER
    + "LIMIT %(cap)s + 1) AS m"
)

# The planner's count of a filter's matches (EXPLAIN, never run), from the statistics of
# the last ANALYZE: the bound parameters are planned as constants, so a filter's unused
# fields drop out as they do in the listing's plan. Without the tags index's predicate,
# which would lower the count of a tag filter (_RESOURCE_FILTER).
ESTIMATE_MATCHING_RESOURCES: LiteralString = (
    "EXPLAIN (FORMAT JSON) SELECT FROM delta_resource AS r WHERE " + _RESOURCE_MATCHES
)

# One batch of `retry` (and of a filtered invalidate): the next %(limit)s matches after
# the cursor, locked in id order, worked again with their stored object: attempts reset,
# errors kept, one work queued or folded (coalescing). Deleted resources are skipped;
# one marked for deletion runs its `finalize` again. Returns how many were queued, how
# many matched, and the last match's key: the cursor of the next batch.
RETRY_RESOURCES: LiteralString = (
    """
WITH picked AS MATERIALIZED (
    SELECT r.id, r.kind, r.object_id FROM delta_resource AS r
    WHERE """
    + _RESOURCE_FILTER
    + """
    ORDER BY r.kind, r.object_id
    LIMIT %(limit)s
),
target AS (
    SELECT r.id FROM delta_resource AS r
    WHERE r.id = ANY(ARRAY(SELECT id FROM picked)) AND r.state <> 'deleted'
    ORDER BY r.id
    FOR UPDATE
),
marked AS (
    UPDATE delta_resource AS r
    SET state = CASE WHEN r.deletion_requested_at IS NULL THEN 'scheduled'
                     ELSE 'deleting' END::delta_resource_state,
        attempt = 0, updated_at = now()
    FROM target WHERE r.id = target.id
    RETURNING r.id, r.kind, r.namespace, r.max_attempts
),
works AS (
    INSERT INTO delta_job (kind, namespace, args, resource_id, max_attempts)
    SELECT m.kind, m.namespace, '\\x', m.id, m.max_attempts FROM marked AS m
    ON CONFLICT (resource_id)
        WHERE resource_id IS NOT NULL AND state IN ('available', 'scheduled', 'retryable')
        DO UPDATE SET state = 'available', scheduled_at = now()
    RETURNING namespace
),
notified AS (
    SELECT count(pg_notify('delta_jobs', q.namespace)) AS n
    FROM (SELECT DISTINCT namespace FROM works) AS q
),
last AS (
    SELECT kind, object_id FROM picked ORDER BY kind DESC, object_id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM marked), (SELECT count(*) FROM picked),
       (SELECT kind FROM last), (SELECT object_id FROM last), (SELECT n FROM notified)
"""
)

# One batch of a filtered delete: the next %(limit)s matches not yet deleted or marked,
# through the one way out above. Marked rows no longer match, so batches need no cursor.
DELETE_MATCHING_RESOURCES: LiteralString = _deletion(
    """
    SELECT r.id FROM delta_resource AS r
    WHERE r.id = ANY(ARRAY(
        SELECT r.id FROM delta_resource AS r
        WHERE """
    + _RESOURCE_FILTER
    + """
          AND r.state <> 'deleted' AND r.deletion_requested_at IS NULL
        ORDER BY r.kind, r.object_id
        LIMIT %(limit)s))
      AND r.state <> 'deleted' AND r.deletion_requested_at IS NULL"""
)

# The test Runner (delta_actors.testing): what a written work left its resource as, to
# tell a last failed attempt (degraded by COMPLETE_WORKS) from one that is retried.
SELECT_WORK_OUTCOMES: LiteralString = """
SELECT r.id, r.state::text, r.generation FROM delta_resource AS r WHERE r.id = ANY(%s)
"""
