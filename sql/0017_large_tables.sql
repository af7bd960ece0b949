-- delta_actors migration 17: what `list` reads on large tables.
--
-- `status` estimates resource counts by kind and state past a size, from the planner's
-- row count and the (kind, state) statistics of migration 16.
--
-- `delta_resource_erred_idx`: the resources with an error history, in the order
-- `client.list` pages them, for its `error` filter (a part of the newest error), which
-- otherwise reads every resource of the kind. A new resource has none, so informs of
-- new objects never enter it; a failed work's result (a new row version anyway, its
-- state changes) does.
CREATE INDEX delta_resource_erred_idx ON delta_resource (kind, object_id)
    WHERE errors <> '{}';
