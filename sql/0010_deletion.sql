-- delta_actors migration 10: deletion that reaches the controller, and whose resources
-- an informer's tombstones may take.
--
-- A resource marked for deletion (`deletion_requested_at` set) is worked by its
-- controller's `finalize` instead of `work`: `deleting` while that is queued, running or
-- being retried, then `deleted`; `degraded` with the mark kept when it gives up, so that
-- a retry runs `finalize` again. An inform of a newer object clears the mark (revives it).
--
-- `listed`: an informer stored or listed this resource, for controllers that limit their
-- tombstones to those (`tombstones = "listed"`).
--
-- A transaction cannot use an enum value it added, and migrate() applies every pending
-- migration in one transaction: a later migration must not name 'deleting'.

ALTER TYPE delta_resource_state ADD VALUE IF NOT EXISTS 'deleting' BEFORE 'deleted';

ALTER TABLE delta_resource
    ADD COLUMN deletion_requested_at timestamptz,
    ADD COLUMN listed boolean NOT NULL DEFAULT false;
