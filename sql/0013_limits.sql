-- delta_actors migration 13: cluster-wide limits of a kind (`concurrency`, `rate`).
--
-- `delta_limit`: one row per limited kind, locked by each claim of the kind, so that
-- claims of it serialize across the cluster and count what the others committed. Its
-- settings are the last claimer's (they are the app's). `delta_limit_start`: when each
-- work of a rate-limited kind started, within its window (older rows are deleted by
-- the next claim).

CREATE TABLE delta_limit (
    kind text PRIMARY KEY,
    concurrency integer,
    rate_count integer,
    rate_window double precision
);

CREATE TABLE delta_limit_start (
    kind text NOT NULL,
    at timestamptz NOT NULL
);

CREATE INDEX delta_limit_start_idx ON delta_limit_start (kind, at);
