"""Statements of the migration table (`delta_migration`), run by db/migrations.py."""

from __future__ import annotations

from typing import LiteralString

CREATE_MIGRATION_TABLE: LiteralString = """
CREATE TABLE IF NOT EXISTS delta_migration (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

# A transaction-level lock: released by the commit or rollback that ends migrate().
LOCK_MIGRATIONS: LiteralString = "SELECT pg_advisory_xact_lock(hashtext('delta_actors.migrate'))"

SELECT_APPLIED_MIGRATIONS: LiteralString = "SELECT version FROM delta_migration"

RECORD_MIGRATION: LiteralString = "INSERT INTO delta_migration (version, name) VALUES (%s, %s)"

SELECT_MIGRATION_TABLE_EXISTS: LiteralString = "SELECT to_regclass('delta_migration') IS NOT NULL"

# Schemas holding a delta_migration that the role may not use. Name lookup skips such a
# schema (to_regclass() sees nothing), so without this the role would be told that the
# schema is at version 0 and to migrate, when what it lacks is USAGE on the schema.
SELECT_UNUSABLE_MIGRATION_SCHEMAS: LiteralString = """
SELECT n.nspname, current_user
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relname = 'delta_migration' AND c.relkind = 'r'
  AND NOT has_schema_privilege(n.oid, 'USAGE')
ORDER BY n.nspname
"""

SELECT_SCHEMA_VERSION: LiteralString = "SELECT coalesce(max(version), 0) FROM delta_migration"

# What the actors write, for supervise's check before it forks: every table of ours that
# the role cannot read and write, with the privileges it lacks, and sequences it cannot
# use. An application role needs exactly these (docs/operations.md).
SELECT_MISSING_PRIVILEGES: LiteralString = """
SELECT c.relname, string_agg(p.privilege, ', ' ORDER BY p.privilege)
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace AND n.nspname = current_schema()
CROSS JOIN LATERAL (
    SELECT unnest(CASE WHEN c.relkind = 'S' THEN ARRAY['USAGE']
                       ELSE ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE'] END)
) AS p(privilege)
WHERE c.relname LIKE 'delta\\_%%' AND c.relkind IN ('r', 'p', 'S')
  AND c.relname <> 'delta_migration'
  AND NOT CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(c.oid, p.privilege)
               ELSE has_table_privilege(c.oid, p.privilege) END
GROUP BY c.relname
ORDER BY c.relname
"""
