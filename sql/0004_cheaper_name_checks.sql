-- delta_actors migration 4: the same name rules, checked at a fraction of the cost.
--
-- PostgreSQL's regex engine expands a bounded repetition such as `{0,62}` into that many
-- states, and every CHECK runs on every new row version: each insert, claim and
-- completion paid about 3 µs per name check, some 30 % of an inform's server time. An
-- unbounded class plus a length test accepts exactly the same names.

ALTER TABLE delta_job
    DROP CONSTRAINT delta_job_kind_check,
    ADD CONSTRAINT delta_job_kind_check
        CHECK (kind ~ '^[a-z0-9][a-z0-9_-]*$' AND length(kind) <= 63),
    DROP CONSTRAINT delta_job_queue_check,
    ADD CONSTRAINT delta_job_queue_check
        CHECK (queue ~ '^[a-z0-9][a-z0-9_-]*$' AND length(queue) <= 63);

ALTER TABLE delta_resource
    DROP CONSTRAINT delta_resource_kind_check,
    ADD CONSTRAINT delta_resource_kind_check
        CHECK (kind ~ '^[a-z0-9][a-z0-9_-]*$' AND length(kind) <= 63),
    DROP CONSTRAINT delta_resource_namespace_check,
    ADD CONSTRAINT delta_resource_namespace_check
        CHECK (namespace ~ '^[a-z0-9][a-z0-9_-]*$' AND length(namespace) <= 63);
