-- delta_actors migration 20: the jobs due later, by namespace.
--
-- `status` and the console's overview count each namespace's scheduled and retryable
-- jobs ("due later"). The one index of those states, `delta_job_due_idx`, is ordered by
-- due time, so the count read every such job of every namespace: with a million plain
-- jobs, a third of them retryable, it took 0.7 s of the overview's 1.4 s. This index
-- lets the count find each namespace by a skip scan and stop at a cap, as the count of
-- available jobs does through the claim index.
CREATE INDEX delta_job_waiting_idx ON delta_job (namespace)
    WHERE state IN ('scheduled', 'retryable');
