-- delta_actors migration 14: running jobs asked to stop (`cancel_jobs`).
--
-- `cancel_requested_at`: set on a running plain job by `client.cancel_jobs` (or
-- `delta-actors jobs cancel`); its worker looks for such claims of its own every second
-- or so, cancels the run, and writes it cancelled.

ALTER TABLE delta_job ADD COLUMN cancel_requested_at timestamptz;
