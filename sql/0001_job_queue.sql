-- delta_actors migration 1: the job queue and the actor table.
--
-- The queue is one general table (River-like states) that carries plain background
-- jobs and, later, resource works and informs. Every index below backs one named
-- statement in delta_actors/queries.py; the comment says which.

CREATE TYPE delta_job_state AS ENUM (
    'available',   -- due and waiting for a worker
    'scheduled',   -- waiting for scheduled_at (enqueued for later, or snoozed)
    'running',     -- claimed by the actor in claimed_by
    'retryable',   -- failed, waiting for its backoff to pass
    'completed',   -- finished successfully (final)
    'cancelled',   -- cancelled by the handler or a client (final)
    'discarded'    -- failed permanently or ran out of attempts (final)
);

CREATE TABLE delta_actor (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    namespace text NOT NULL,
    role text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Rescue looks for actors whose heartbeat expired.
CREATE INDEX delta_actor_heartbeat_idx ON delta_actor (heartbeat_at);

CREATE TABLE delta_job (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state delta_job_state NOT NULL DEFAULT 'available',
    kind text NOT NULL,
    queue text NOT NULL,
    -- msgspec JSON encoding of the job's arguments; read it with convert_from(args, 'UTF8').
    args bytea NOT NULL,
    priority smallint NOT NULL DEFAULT 1,
    attempt smallint NOT NULL DEFAULT 0,
    max_attempts smallint NOT NULL,
    -- Newest last, at most ten entries (trimmed by complete_jobs).
    errors jsonb[] NOT NULL DEFAULT '{}',
    unique_key text,
    claimed_by bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    scheduled_at timestamptz NOT NULL DEFAULT now(),
    attempted_at timestamptz,
    finalized_at timestamptz,
    CONSTRAINT delta_job_kind_check CHECK (kind ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    CONSTRAINT delta_job_queue_check CHECK (queue ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    CONSTRAINT delta_job_priority_check CHECK (priority BETWEEN 1 AND 4),
    CONSTRAINT delta_job_max_attempts_check CHECK (max_attempts >= 1),
    CONSTRAINT delta_job_attempt_check CHECK (attempt >= 0),
    CONSTRAINT delta_job_finalized_check CHECK (
        (state IN ('completed', 'cancelled', 'discarded')) = (finalized_at IS NOT NULL)
    ),
    CONSTRAINT delta_job_running_check CHECK ((state = 'running') = (claimed_by IS NOT NULL))
);

-- claim_jobs: the oldest available work of one queue, by priority.
CREATE INDEX delta_job_claim_idx ON delta_job (queue, priority, scheduled_at, id)
    WHERE state = 'available';

-- promote_due_jobs: scheduled and retryable jobs whose time has come.
CREATE INDEX delta_job_due_idx ON delta_job (scheduled_at)
    WHERE state IN ('scheduled', 'retryable');

-- rescue_jobs: running jobs by the actor that claimed them.
CREATE INDEX delta_job_running_idx ON delta_job (claimed_by)
    WHERE state = 'running';

-- delete_finalized_jobs: finished jobs past their retention.
CREATE INDEX delta_job_finalized_idx ON delta_job (finalized_at)
    WHERE state IN ('completed', 'cancelled', 'discarded');

-- insert_jobs: at most one live job per (kind, unique_key).
CREATE UNIQUE INDEX delta_job_unique_idx ON delta_job (kind, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('available', 'scheduled', 'running', 'retryable');
