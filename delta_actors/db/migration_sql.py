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

SELECT_SCHEMA_VERSION: LiteralString = "SELECT coalesce(max(version), 0) FROM delta_migration"
