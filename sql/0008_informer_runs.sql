-- delta_actors migration 8: informers under control: runs on request, a record of every run.
--
-- `requested_at` asks the leader to run an informer now (client.run_informer, `delta-actors
-- inform`), `requested_full` for a full listing; the leader clears both when the run
-- starts. `last_success_at` is when a run last ended without error; `last_error_at` when
-- one last failed (`last_error` holds its text, with the exception type).
ALTER TABLE delta_informer
    ADD COLUMN requested_at timestamptz,
    ADD COLUMN requested_full boolean NOT NULL DEFAULT false,
    ADD COLUMN last_success_at timestamptz,
    ADD COLUMN last_error_at timestamptz;

-- One row per informer run: started, finished, objects written, the error (NULL: none).
-- The leader's Cleaner deletes runs past seven days, in batches.
CREATE TABLE delta_informer_run (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind delta_name NOT NULL,
    full_listing boolean NOT NULL,
    requested boolean NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    objects bigint NOT NULL DEFAULT 0,
    error text
);

-- status: the runs of one kind, newest first; the Cleaner: the oldest runs.
CREATE INDEX delta_informer_run_kind_idx ON delta_informer_run (kind, started_at);
CREATE INDEX delta_informer_run_started_idx ON delta_informer_run (started_at);
