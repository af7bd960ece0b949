-- delta_actors migration 15: what `status` and `list` read on large tables.
--
-- Counting resources by kind and state reads the whole of delta_resource (about a second
-- per million rows). Past a size `status` estimates those counts from the planner's
-- statistics instead: the row count from pg_class, the share of each (kind, state) pair
-- from this extended statistics object's list of most common combinations, which ANALYZE
-- (and autovacuum's analyze) fills from its sample of rows. The planner uses it too, for
-- filters on kind and state together (`client.list(kind, state=...)`).
--
-- Only a catalog entry: nothing is read or rewritten until the next ANALYZE.

CREATE STATISTICS IF NOT EXISTS delta_resource_kind_state_stats (mcv)
    ON kind, state FROM delta_resource;

-- `delta_resource_erred_idx`: the resources with an error history, in the order
-- `client.list` pages them, for its `error` filter (a part of the newest error), which
-- otherwise reads every resource of the kind. A new resource has none, so informs of
-- new objects never enter it; a failed work's result (a new row version anyway, its
-- state changes) does.
CREATE INDEX delta_resource_erred_idx ON delta_resource (kind, object_id)
    WHERE errors <> '{}';
