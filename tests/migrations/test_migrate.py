"""Migrations: idempotent, safe to run concurrently, enough for every statement; the CLI."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading

import psycopg
import pytest

from delta_actors.db import (
    actor_sql,
    console_sql,
    event_sql,
    job_sql,
    leader_sql,
    migration_sql,
    migrations,
    resource_sql,
    status_sql,
)
from delta_actors.errors import SchemaError
from tests.roles import PASSWORD

CLI = [sys.executable, "-c", "from delta_actors.ops.cli import main; main()"]

# Constants of the statement modules (delta_actors.db.*_sql) that are not statements to
# prepare, and why. Every other constant must prepare, so a new statement is checked
# without touching this test.
NOT_PREPARED = {
    "JOB_CHANNEL": "a channel name",
    "LEADER_CHANNEL": "a channel name",
    "RESOURCE_COLUMNS": "a column list spliced into statements",
    "JOB_COLUMNS": "a column list spliced into statements",
    "_AVAILABLE_IN_QUEUE": "a condition spliced into statements",
    "_FLOORS": "a function scan (the claim floors) spliced into statements",
    "_NOT_BUSY": "a condition spliced into statements",
    "_RESOURCE_FILTER": "a condition spliced into statements",
    "_RESOURCE_MATCHES": "a condition spliced into statements",
    "CLAIM_FENCE": "the results' fence, a condition spliced into statements",
    "CLAIMS_OF_ACTORS_FENCE": "rescue's fence, a condition spliced into statements",
    "BY_ID": "where the results find their rows, a condition spliced into statements",
    "BY_ROW_VERSION": "where the results find their rows, a condition spliced into statements",
    "_JOB_FILTER": "a condition spliced into statements",
    "_PICKED_JOBS": "the first CTE spliced into statements",
    "CREATE_MIGRATION_TABLE": "DDL, run by migrate() itself",
    "COPY_JOBS": "COPY is not planned when prepared; the bulk enqueue tests run it",
    "COPY_DUE_JOBS": "COPY is not planned when prepared; the bulk enqueue tests run it",
    "CLAIM_CONNECTION_SETTINGS": "two SETs of a session, not one statement",
}


def _schema_snapshot(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    """Tables, columns, indexes, constraints and types of the public schema."""
    return conn.execute(
        """
        SELECT 'column', table_name::text, column_name::text, data_type::text
        FROM information_schema.columns WHERE table_schema = 'public'
        UNION ALL
        SELECT 'index', tablename::text, indexname::text, indexdef
        FROM pg_indexes WHERE schemaname = 'public'
        UNION ALL
        SELECT 'constraint', conrelid::regclass::text, conname::text, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
        UNION ALL
        SELECT 'type', typname::text, '', typtype::text
        FROM pg_type WHERE typnamespace = 'public'::regnamespace AND typtype IN ('e', 'c')
        ORDER BY 1, 2, 3, 4
        """
    ).fetchall()


def _versions(dsn: str) -> list[tuple[int, int]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT version, count(*)::int FROM delta_migration GROUP BY 1 ORDER BY 1"
        ).fetchall()


def _all_versions() -> list[tuple[int, int]]:
    return [(v, 1) for v in range(1, migrations.required_version() + 1)]


def test_migrations_are_numbered_without_gaps_and_start_with_the_job_queue():
    """The shipped files are 0001..n; the first creates the job queue."""
    found = migrations.migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert found[0].name == "job_queue"
    assert "CREATE TABLE delta_job" in found[0].sql


def test_applying_twice_is_a_no_op(empty_dsn):
    """The first run applies every migration; the second returns [] and changes nothing."""
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        assert migrations.current_version(conn) == 0
        first = migrations.migrate(conn)
        assert [m.version for m in first] == list(range(1, migrations.required_version() + 1))
        snapshot = _schema_snapshot(conn)
        assert migrations.migrate(conn) == []
        assert _schema_snapshot(conn) == snapshot
        assert migrations.current_version(conn) == migrations.required_version()
        migrations.check_schema(conn)
    assert _versions(empty_dsn) == _all_versions()
    assert any(row[:3] == ("column", "delta_job", "unique_key") for row in snapshot)


def test_migrate_in_a_non_autocommit_connection_commits_its_work(empty_dsn):
    """migrate() on a connection outside autocommit still leaves the schema applied."""
    with psycopg.connect(empty_dsn) as conn:
        migrations.migrate(conn)
    assert _versions(empty_dsn) == _all_versions()


def test_concurrent_migrate_calls_are_serialized(empty_dsn):
    """Two threads migrating at once: both succeed, one applies all, the other nothing."""
    errors: list[BaseException] = []
    applied: list[list[int]] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            with psycopg.connect(empty_dsn, autocommit=True) as conn:
                barrier.wait(10)
                applied.append([m.version for m in migrations.migrate(conn)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(applied) == [[], list(range(1, migrations.required_version() + 1))]
    assert _versions(empty_dsn) == _all_versions()


def test_concurrent_cli_migrate_runs_both_succeed(empty_dsn):
    """Two `delta-actors migrate --dsn` processes at once: exit 0 both; each version once."""
    procs = [
        subprocess.Popen(
            [*CLI, "migrate", "--dsn", empty_dsn],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    stdouts = sorted(out for out, _ in outputs)
    assert "nothing to do" in stdouts[1] or "nothing to do" in stdouts[0]
    assert sum("applied 0001_job_queue" in out for out in stdouts) == 1
    assert _versions(empty_dsn) == _all_versions()


def test_check_schema_on_an_unmigrated_database_names_the_fix(empty_dsn):
    """check_schema on an empty database: SchemaError at version 0 naming delta-actors migrate."""
    with (
        psycopg.connect(empty_dsn, autocommit=True) as conn,
        pytest.raises(SchemaError, match=r"version 0.*run `delta-actors migrate`"),
    ):
        migrations.check_schema(conn)


STATEMENT_MODULES = (actor_sql, console_sql, event_sql, job_sql, leader_sql, migration_sql,
                     resource_sql, status_sql)  # fmt: skip


def _constants() -> dict[str, object]:
    """Every constant of the statement modules; a name is defined in one module only."""
    found: dict[str, object] = {}
    for module in STATEMENT_MODULES:
        for name, value in vars(module).items():
            if name.isupper() or name == "_AVAILABLE_IN_QUEUE":
                # One imported into another module is the same object, not a second one.
                assert found.get(name, value) is value, f"{name} is defined twice"
                found[name] = value
    return found


def _statements() -> dict[str, str]:
    return {
        name: value
        for name, value in _constants().items()
        if name.isupper() and isinstance(value, str) and name not in NOT_PREPARED
    }


def to_dollar_params(text: str) -> str:
    """Turn psycopg placeholders (%s, %(name)s, or %b/%t) into $1..$n, as the server sees them."""
    counter = iter(range(1, 1000))
    names: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        key = match.group(1)
        if key is None:
            return f"${next(counter)}"
        if key not in names:
            names[key] = next(counter)
        return f"${names[key]}"

    return re.sub(r"%(?:\((\w+)\))?[sbt]", number, text).replace("%%", "%")


def test_to_dollar_params_numbers_positional_and_reuses_named_placeholders():
    """The converter used below: %s counts up, a repeated %(name)s keeps its number."""
    assert to_dollar_params("a = %s AND b = %s") == "a = $1 AND b = $2"
    assert to_dollar_params("%(x)s, %(y)b, %(x)s, 100%%") == "$1, $2, $1, 100%"


def test_every_statement_prepares_against_the_migrated_schema(dsn):
    """Each statement constant of db/*_sql.py parses and type-checks (prepared, not run)."""
    statements = _statements()
    assert set(NOT_PREPARED) <= set(_constants()), "NOT_PREPARED names a constant that is gone"
    assert {"INSERT_JOBS", "CLAIM_JOBS", "COMPLETE_JOBS", "HAND_BACK_JOBS"} <= set(statements)
    failures = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, text in sorted(statements.items()):
            result = conn.pgconn.prepare(name.lower().encode(), to_dollar_params(text).encode())
            if result.status != psycopg.pq.ExecStatus.COMMAND_OK:
                failures[name] = (result.error_message or b"").decode().strip()
        prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
        job_count = conn.execute("SELECT count(*) FROM delta_job").fetchone()
    assert failures == {}
    assert prepared == (len(statements),)
    assert job_count == (0,), "a statement was executed, not only prepared"


def test_cli_migrate_prints_what_it_applied_then_up_to_date(empty_dsn):
    """`delta-actors migrate --dsn`: lists every applied file, then says it is up to date."""
    executable = shutil.which("delta-actors")
    argv = [executable] if executable else CLI
    first = subprocess.run(
        [*argv, "migrate", "--dsn", empty_dsn], capture_output=True, text=True, check=False
    )
    assert first.returncode == 0, first.stderr
    for migration in migrations.migrations():
        assert f"applied {migration.version:04d}_{migration.name}" in first.stdout
    assert f"schema is at version {migrations.required_version()}" in first.stdout
    second = subprocess.run(
        [*argv, "migrate", "--dsn", empty_dsn], capture_output=True, text=True, check=False
    )
    assert second.returncode == 0, second.stderr
    assert f"schema is at version {migrations.required_version()}, nothing to do" in second.stdout
    assert "applied" not in second.stdout
    assert _versions(empty_dsn) == _all_versions()


def test_cli_migrate_on_an_unreachable_dsn_fails_naming_the_problem(tmp_path):
    """No server there: exit 1 and an error naming the socket path, never the password."""
    dsn = f"postgresql://me:hunter2-pw@/db?host={tmp_path}&port=9"
    result = subprocess.run(
        [*CLI, "migrate", "--dsn", dsn], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "error: migrate: cannot use PostgreSQL at" in result.stderr
    assert f"{tmp_path}/.s.PGSQL.9" in result.stderr
    assert "hunter2-pw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_cli_migrate_with_a_malformed_dsn_fails_without_a_traceback():
    """A DSN that does not parse: a one-line error and a non-zero exit, not a traceback."""
    result = subprocess.run(
        [*CLI, "migrate", "--dsn", "not a dsn password=pw-4242"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    assert "pw-4242" not in result.stderr


def test_cli_migrate_without_a_dsn_is_a_usage_error(monkeypatch):
    """No --dsn and no $DELTA_DATABASE_URL: exit 2 and a message naming both."""
    monkeypatch.delenv("DELTA_DATABASE_URL", raising=False)
    result = subprocess.run([*CLI, "migrate"], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "--dsn" in result.stderr
    assert "DELTA_DATABASE_URL" in result.stderr


def test_an_install_without_its_migrations_is_refused_not_taken_for_version_0(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(migrations, "_migrations_dir", lambda: tmp_path)
    migrations.migrations.cache_clear()
    try:
        with pytest.raises(SchemaError, match=r"no migrations found .* incomplete"):
            migrations.migrations()
    finally:
        monkeypatch.undo()
        migrations.migrations.cache_clear()
    assert migrations.required_version() >= 7


def test_a_role_without_ddl_rights_can_check_a_current_schema_and_is_told_otherwise(dsn, role):
    """`migrate` on a current schema only reads, so an application role (DML, no DDL) can
    run it at deploy time; on a schema it would have to change, it fails in one line."""
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as admin:
        for statement in (
            "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}",
            "REVOKE CREATE ON SCHEMA public FROM {}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}",
        ):
            admin.execute(sql.SQL(statement).format(sql.Identifier(role.name)))
    argv = [sys.executable, "-m", "delta_actors", "migrate", "--dsn", role.dsn(PASSWORD)]
    current = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert current.returncode == 0, current.stderr
    assert f"schema is at version {migrations.required_version()}, nothing to do" in current.stdout
    with psycopg.connect(dsn, autocommit=True) as admin:  # one migration behind
        admin.execute(
            "DELETE FROM delta_migration WHERE version = %s", (migrations.required_version(),)
        )
    behind = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert behind.returncode == 1
    assert behind.stderr.startswith("error: migrate: ")
    assert "permission denied" in behind.stderr
    assert "Traceback" not in behind.stderr
    checked = subprocess.run([*argv, "--check"], capture_output=True, text=True, timeout=60,
                             check=False)  # fmt: skip
    assert checked.returncode == 1
    assert checked.stderr.startswith("error: the database schema is at version")
    assert "run `delta-actors migrate`" in checked.stderr


def test_migrate_check_reads_the_version_and_changes_nothing(empty_dsn, role):
    """`migrate --check` as a DML-only role: exit 0 on a current schema, 1 naming the fix
    on an empty one, which it leaves empty."""
    from psycopg import sql

    argv = [sys.executable, "-m", "delta_actors", "migrate", "--check", "--dsn"]
    empty = subprocess.run([*argv, empty_dsn], capture_output=True, text=True, timeout=60,
                           check=False)  # fmt: skip
    assert empty.returncode == 1, empty.stdout
    assert "schema is at version 0" in empty.stderr
    assert "run `delta-actors migrate`" in empty.stderr
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        assert migrations.current_version(conn) == 0  # nothing created
    with psycopg.connect(role.db_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(
            sql.Identifier(role.name)))  # fmt: skip
        admin.execute(sql.SQL("GRANT SELECT ON delta_migration TO {}").format(
            sql.Identifier(role.name)))  # fmt: skip
    current = subprocess.run([*argv, role.dsn(PASSWORD)], capture_output=True, text=True,
                             timeout=60, check=False)  # fmt: skip
    assert current.returncode == 0, current.stderr
    version = migrations.required_version()
    assert current.stdout.startswith(f"schema is at version {version}, nothing to do")


def test_migrate_on_a_schema_newer_than_this_code_says_upgrade_and_changes_nothing(dsn, role):
    """Not "nothing to do": this code would refuse to run on it. Said before any DDL, so a
    DML-only role hears the same, not a permission error."""
    from psycopg import sql

    newer = migrations.required_version() + 1
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            "INSERT INTO delta_migration (version, name) VALUES (%s, 'from_the_future')", (newer,)
        )
        admin.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(
            sql.Identifier(role.name)))  # fmt: skip
        before = _schema_snapshot(admin)
    for where in (dsn, role.dsn(PASSWORD)):
        for argv in (["migrate"], ["migrate", "--check"]):
            done = subprocess.run([*CLI, *argv, "--dsn", where], capture_output=True, text=True,
                                  timeout=60, check=False)  # fmt: skip
            shown = f"{argv} at {where}: {done.stdout}{done.stderr}"
            assert done.returncode == 1, shown
            assert done.stderr.startswith(f"error: the database schema is at version {newer}, "
                                          "newer than this delta_actors knows"), shown  # fmt: skip
            assert "upgrade delta_actors" in done.stderr, shown
            assert "nothing to do" not in done.stdout, shown
    with psycopg.connect(dsn, autocommit=True) as admin:
        assert _schema_snapshot(admin) == before


def test_a_role_that_may_not_use_the_schema_is_told_to_grant_it_not_to_migrate(dsn, role):
    """Name lookup skips a schema without USAGE: it looked unmigrated (version 0, "run
    `delta-actors migrate`"), and migrate then failed with no schema to create in."""
    from psycopg import sql

    import delta_actors as delta
    from delta_actors.runtime.supervisor import check_database

    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("REVOKE USAGE ON SCHEMA public FROM PUBLIC, {}").format(
            sql.Identifier(role.name)))  # fmt: skip
    as_role = role.dsn(PASSWORD)
    grant = f"may not use the schema 'public'.*GRANT USAGE ON SCHEMA public TO {role.name}"
    for argv in (["migrate"], ["migrate", "--check"], ["status"]):
        done = subprocess.run([*CLI, *argv, "--dsn", as_role], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        shown = f"{argv}: {done.stdout}{done.stderr}"
        assert done.returncode in (1, 2), shown
        assert re.search(grant, done.stderr), shown
        assert "run `delta-actors migrate`" not in done.stderr, shown
    with pytest.raises(delta.DatabaseError, match=grant):
        check_database(as_role)
    with pytest.raises(delta.DatabaseError, match=grant) as refused:
        delta.Client.connect(as_role)
    assert not isinstance(refused.value, SchemaError)
