-- delta_actors migration 6: names checked once per value, a claim index on fixed-width keys.
--
-- A table CHECK runs on every new row version, so each claim and completion of a job and
-- each state change of a resource re-checked two names that never change (about 0.4 µs
-- each). A domain's CHECK runs only where a value is written to the column: an insert, a
-- COPY, an UPDATE that sets it. The rule is the same.
--
-- The claim index led with the queue's text: every insert into it and every claim scan
-- compared strings (in the database's collation) and could not cache the offsets of the
-- columns after a variable-length one; a bulk insert spent about 1 µs per job there. It
-- now leads with hashtext(queue). Claims still test `queue = $1` on the row, so two
-- queues whose hashes collide share an index range and nothing else; within it, rows
-- stay in (priority, scheduled_at, id) order.
--
-- The domain gets its CHECK after the columns take it, so that changing their type
-- rewrites no table: the ALTER DOMAIN only reads the names (which the table CHECKs
-- dropped here already held to the rule).

CREATE DOMAIN delta_name AS text;

DROP INDEX delta_job_claim_idx;

ALTER TABLE delta_job
    DROP CONSTRAINT delta_job_kind_check,
    DROP CONSTRAINT delta_job_queue_check,
    ALTER COLUMN kind TYPE delta_name,
    ALTER COLUMN queue TYPE delta_name;

ALTER TABLE delta_resource
    DROP CONSTRAINT delta_resource_kind_check,
    DROP CONSTRAINT delta_resource_namespace_check,
    ALTER COLUMN kind TYPE delta_name,
    ALTER COLUMN namespace TYPE delta_name;

ALTER DOMAIN delta_name ADD CONSTRAINT delta_name_check
    CHECK (VALUE ~ '^[a-z0-9][a-z0-9_-]*$' AND length(VALUE) <= 63);

-- claim_jobs, count_available_jobs: the oldest available work of one queue, by priority.
CREATE INDEX delta_job_claim_idx ON delta_job (hashtext(queue), priority, scheduled_at, id)
    WHERE state = 'available';
