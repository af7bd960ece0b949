-- delta_actors migration 7: each actor's health, as progress, beside its heartbeat.
--
-- A heartbeat says a process lives, not that it gets anything done. Every heartbeat now
-- also writes what each of the actor's components last achieved (a JSON array of
-- delta_actors.health.ComponentHealth: name, interval, stall_after, since_progress in
-- seconds at heartbeat_at, failures, restarts, last_error, error_age), so that
-- `delta-actors status` can show a stuck leader duty or worker component. NULL until the
-- actor's first heartbeat, and for actors of older versions.

ALTER TABLE delta_actor ADD COLUMN health jsonb;
