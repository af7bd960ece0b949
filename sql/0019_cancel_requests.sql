-- delta_actors migration 19: a worker's look for its claims an operator asked to stop.
--
-- Every worker looks about once a second for its running plain jobs with a cancel
-- request (migration 14). Through `delta_job_running_idx` (claimed_by, the running
-- ones) that look visited every job the worker had claimed whose row version vacuum
-- could not yet remove: while a transaction holds an old snapshot, all of them. With a
-- million such versions it took 108-155 ms a look, growing with the snapshot's age, and
-- in a 30-minute run at 1,500 jobs/s under a held snapshot the queue fell behind at
-- the tenth minute (docs/performance.md). This index holds only rows with a request.
CREATE INDEX delta_job_cancel_requested_idx ON delta_job (claimed_by)
    WHERE cancel_requested_at IS NOT NULL;
