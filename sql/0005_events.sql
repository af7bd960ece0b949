-- delta_actors migration 5: resource events for subscribers (Client.subscribe).
--
-- Events are written only while a live subscriber wants them (delta_subscriber), by the
-- same statement that writes a work's result, and read by subscribers in (xid, id) order
-- below the snapshot's xmin horizon: see delta_actors/events.py for the protocol.

-- One row per open subscription: a lease renewed by its reader, its filters (NULL: all),
-- and how far it has read (the leader's Cleaner keeps every event at or after it).
CREATE TABLE delta_subscriber (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    kinds text[],
    events delta_resource_state[],
    cursor_xid xid8 NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

-- One row per work result that set its resource's state, while someone subscribed.
-- `xid` is the writing transaction's id: rows below the xmin horizon never change.
CREATE TABLE delta_event (
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    id bigint GENERATED ALWAYS AS IDENTITY,
    resource_id bigint NOT NULL,
    kind text NOT NULL,
    object_id text NOT NULL,
    namespace text NOT NULL,
    event delta_resource_state NOT NULL,
    generation bigint NOT NULL,
    error text,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (xid, id)
);
