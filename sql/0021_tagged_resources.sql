-- delta_actors migration 21: the resources that carry a tag, for `list --tag`.
--
-- `client.list` (the console's resources page, `retry` and `delete` by filter, the CLI's
-- `resources` commands) filtered by a tag walked the identity index in page order and
-- tested each row's tags: cheap for a tag that many rows carry, the whole kind for one
-- that few or none carry (1,073 ms for an absent tag at 1,000,000 resources,
-- docs/performance.md). This GIN index finds a rare tag's rows at once, and the planner
-- sorts those few; for a common tag it keeps walking the identity index. It holds only
-- rows with a tag, so an inform of an untagged object, new or changed, writes nothing to
-- it; one of a tagged object adds an entry per tag (to the index's pending list).
CREATE INDEX delta_resource_tags_idx ON delta_resource USING gin (tags)
    WHERE tags <> '{}';
