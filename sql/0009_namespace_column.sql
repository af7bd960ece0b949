-- delta_actors migration 9: a job's queue is called what the API calls it, its namespace.
--
-- The column was `queue` while every call, option and status line says namespace; the
-- two words named one thing. Renaming touches only the catalog (no row is rewritten);
-- the claim index, on hashtext(queue), follows the column by itself. Queries of your own
-- against delta_job must say `namespace` from this version on.

ALTER TABLE delta_job RENAME COLUMN queue TO namespace;
