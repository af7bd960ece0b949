-- delta_actors migration 12: periodic jobs (`delta.Periodic`), their schedule's state.
--
-- One row per periodic, by name. The leader stores the first run when it first sees one,
-- then, in the transaction that enqueues a due run, moves `next_run_at` past now and
-- records the run it enqueued (`last_run_at`: the time it was due). Rows of periodics an
-- app no longer declares stay (a rolling deploy may still run them); delete them by hand.

CREATE TABLE delta_periodic (
    name text PRIMARY KEY,
    kind text NOT NULL,
    namespace text NOT NULL,
    schedule text NOT NULL,
    next_run_at timestamptz NOT NULL,
    last_run_at timestamptz,
    last_job_id bigint,
    runs bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
