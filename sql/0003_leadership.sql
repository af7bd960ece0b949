-- delta_actors migration 3: leader election and informer state.

-- One row per election (name 'default'): the lease of the current leader. `term` grows
-- with every election won; renewals and resignations match it, and leader-only writes
-- are fenced by it.
CREATE TABLE delta_leader (
    name text PRIMARY KEY,
    actor_id bigint NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    term bigint NOT NULL,
    elected_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

-- One row per informing kind: its cursor (advanced only after a run without error) and
-- when it runs next.
CREATE TABLE delta_informer (
    kind text PRIMARY KEY,
    cursor timestamptz,
    next_run_at timestamptz NOT NULL DEFAULT now(),
    last_started_at timestamptz,
    last_full_at timestamptz,
    last_finished_at timestamptz,
    last_error text,
    runs bigint NOT NULL DEFAULT 0,
    failures bigint NOT NULL DEFAULT 0,
    objects bigint NOT NULL DEFAULT 0
);
