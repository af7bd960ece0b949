-- delta_actors migration 16: what the web console estimates from.
--
-- On a large table the console shows resources by kind and state as the planner's
-- estimates instead of counting every row per page view. Without statistics on the pair,
-- the planner multiplies the two columns' frequencies as if they were independent (every
-- kind would seem to have the same share of degraded resources); a most-common-values
-- list over (kind, state) gives it the real share of each pair. ANALYZE (autovacuum's
-- included) keeps it current.

CREATE STATISTICS delta_resource_kind_state_stats (mcv) ON kind, state FROM delta_resource;
