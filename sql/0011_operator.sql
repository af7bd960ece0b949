-- delta_actors migration 11: what operators act on.
--
-- `delta_namespace`: a namespace paused by `client.pause` / `delta-actors pause`. Claims
-- of a paused namespace stop on every host (the claim reads this table); running works
-- finish, informs and enqueues are still accepted and queued.
--
-- `delta_resource_troubled_idx`: the failed and degraded resources of a kind, in the
-- order `client.list` pages them (kind, object id). Only those rows are in it, so it
-- costs nothing for the healthy majority; listing every resource of a kind reads the
-- identity index in the same order.

CREATE TABLE delta_namespace (
    name text PRIMARY KEY,
    paused_at timestamptz,
    CONSTRAINT delta_namespace_name_check CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$')
);

CREATE INDEX delta_resource_troubled_idx ON delta_resource (kind, object_id)
    WHERE state IN ('failed', 'degraded');

-- `delta_job_troubled_idx`: the plain jobs an operator looks for (retryable, discarded,
-- cancelled) by kind, in the order `client.list_jobs` pages them (id). Jobs that
-- complete never enter it.
CREATE INDEX delta_job_troubled_idx ON delta_job (kind, id)
    WHERE resource_id IS NULL AND state IN ('retryable', 'discarded', 'cancelled');
