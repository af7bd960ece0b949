"""Schema migrations: plain numbered SQL files, applied once each, in order.

Migrations live in the top-level `sql/` folder (shipped in the wheel as
`delta_actors/sql`), named `NNNN_description.sql`. They are append-only: a released file
never changes. `migrate()` applies the missing ones in a single transaction that first
takes a transaction-level advisory lock, so concurrent runs serialize and the second finds
nothing to do. Applied versions are recorded in `delta_migration`; any other migration
tool can apply the same files in order instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg

from delta_actors.db import migration_sql
from delta_actors.db.connection import Rows, Statement, drive, drive_async
from delta_actors.errors import DatabaseError, SchemaError

_FILE_RE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL migration file."""

    version: int
    name: str
    sql: str


def _migrations_dir() -> Path:
    package = Path(__file__).resolve().parents[1]  # delta_actors/
    packaged = package / "sql"
    if packaged.is_dir():
        return packaged
    # A source checkout or editable install: the top-level sql/ folder.
    return package.parent / "sql"


@cache
def migrations() -> tuple[Migration, ...]:
    """Return every migration shipped with this version, in order."""
    found = []
    folder = _migrations_dir()
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_RE.fullmatch(path.name)
        if match is None:
            raise SchemaError(f"migration file {path} is not named NNNN_description.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    if not found:
        # An install without its migrations would otherwise look like a schema at
        # version 0 that needs nothing, and every command would fail later, obscurely.
        raise SchemaError(f"no migrations found in {folder}: the installation is incomplete")
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise SchemaError(f"migrations in {folder} are not numbered 1..n without gaps: {versions}")
    return tuple(found)


def required_version() -> int:
    """Return the schema version this code needs."""
    return len(migrations())


def migrate(
    conn: psycopg.Connection,
    on_applying: Callable[[int, int, Migration], None] | None = None,
) -> list[Migration]:
    """Apply the missing migrations in one transaction; return what was applied.

    `on_applying(done, total, migration)` is called before each migration is applied.
    A schema that is current is only read, not locked or written: a role without DDL
    rights can run this as a deploy-time check. A schema newer than this code is a
    SchemaError saying to upgrade, also before anything is locked or written: it is not
    "nothing to do", since this code refuses to run on it.
    """
    with conn.transaction():  # the read ends as a run that applies would (or a savepoint)
        current = current_version(conn)
    problem = schema_problem(current)
    if problem is None:
        return []
    if current > required_version():
        raise SchemaError(problem)
    with conn.transaction():
        # Lock first: two concurrent CREATE TABLE IF NOT EXISTS race on the catalog.
        conn.execute(migration_sql.LOCK_MIGRATIONS)
        conn.execute(migration_sql.CREATE_MIGRATION_TABLE)
        applied = {row[0] for row in conn.execute(migration_sql.SELECT_APPLIED_MIGRATIONS)}
        pending = [m for m in migrations() if m.version not in applied]
        done: list[Migration] = []
        for migration in pending:
            if on_applying is not None:
                on_applying(len(done), len(pending), migration)
            # Migration files are shipped with the package, never user input.
            conn.execute(migration.sql)  # type: ignore[arg-type,unused-ignore]
            conn.execute(migration_sql.RECORD_MIGRATION, (migration.version, migration.name))
            done.append(migration)
    return done


def read_version() -> Generator[Statement, Rows, int]:
    """The highest applied migration version, 0 for an unmigrated database (drive it).

    Raises DatabaseError naming the grant when the schema holding delta_migration is one
    the role may not use: that database is not unmigrated, and migrating is not the fix.
    """
    exists = yield migration_sql.SELECT_MIGRATION_TABLE_EXISTS, None
    if not exists or not exists[0][0]:
        unusable = yield migration_sql.SELECT_UNUSABLE_MIGRATION_SCHEMAS, None
        if unusable:
            schema, role = unusable[0]
            raise DatabaseError(
                f"the role {role!r} may not use the schema {schema!r}, which holds the "
                f"delta_actors schema (delta_migration): grant it, `GRANT USAGE ON SCHEMA "
                f"{schema} TO {role}`, or connect as a role that has it"
            )
        return 0
    rows = yield migration_sql.SELECT_SCHEMA_VERSION, None
    return int(rows[0][0]) if rows else 0


def current_version(conn: psycopg.Connection) -> int:
    """Return the highest applied migration version, 0 for an unmigrated database."""
    return drive(conn, read_version())


async def current_version_async(conn: psycopg.AsyncConnection) -> int:
    """Async twin of current_version."""
    return await drive_async(conn, read_version())


def schema_problem(version: int) -> str | None:
    """Describe what is wrong with a database at `version`, or None if it fits this code."""
    needed = required_version()
    if version == needed:
        return None
    if version < needed:
        return (
            f"the database schema is at version {version}, this delta_actors needs {needed}: "
            "run `delta-actors migrate` against this database"
        )
    return (
        f"the database schema is at version {version}, newer than this delta_actors "
        f"knows ({needed}): upgrade delta_actors"
    )


def check_schema(conn: psycopg.Connection) -> None:
    """Raise SchemaError naming the fix unless the schema matches this code."""
    problem = schema_problem(current_version(conn))
    if problem:
        raise SchemaError(problem)


async def check_schema_async(conn: psycopg.AsyncConnection) -> None:
    """Async twin of check_schema."""
    problem = schema_problem(await current_version_async(conn))
    if problem:
        raise SchemaError(problem)
