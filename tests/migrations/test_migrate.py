"""Migrations: idempotent, safe to run concurrently, and enough for every statement."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import psycopg
import pytest

from delta_actors import queries, schema
from delta_actors.errors import SchemaError


def test_applying_twice_is_a_no_op(empty_dsn):
    """The first run applies every migration, the second nothing; the version is recorded."""
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        first = schema.migrate(conn)
        assert [m.version for m in first] == list(range(1, schema.required_version() + 1))
        assert schema.migrate(conn) == []
        assert schema.current_version(conn) == schema.required_version()
        schema.check_schema(conn)


def test_concurrent_migrations_are_serialized(empty_dsn):
    """Two migrate runs at once both succeed and each version is recorded once."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            with psycopg.connect(empty_dsn, autocommit=True) as conn:
                barrier.wait()
                schema.migrate(conn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT version, count(*) FROM delta_migration GROUP BY 1").fetchall()
    assert sorted(rows) == [(v, 1) for v in range(1, schema.required_version() + 1)]


def test_unmigrated_database_names_the_fix(empty_dsn):
    """check_schema on an empty database raises SchemaError naming delta-actors migrate."""
    with (
        psycopg.connect(empty_dsn, autocommit=True) as conn,
        pytest.raises(SchemaError, match=r"version 0.*run `delta-actors migrate`"),
    ):
        schema.check_schema(conn)


def _statements() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(queries).items()
        if name.isupper() and isinstance(value, str)
        and value.lstrip().split(" ", 1)[0].split("\n", 1)[0]
        in {"SELECT", "WITH", "UPDATE", "INSERT", "DELETE", "COPY"}
    }  # fmt: skip


def to_dollar_params(text: str) -> str:
    """Turn psycopg's %s / %(name)s placeholders into $1..$n, as the server sees them."""
    counter = iter(range(1, 1000))
    names: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        key = match.group(1)
        if key is None:
            return f"${next(counter)}"
        if key not in names:
            names[key] = next(counter)
        return f"${names[key]}"

    return re.sub(r"%(?:\((\w+)\))?s", number, text).replace("%%", "%")


def test_every_statement_prepares_against_the_schema(dsn):
    """Each named statement parses and type-checks against the migrated schema."""
    statements = _statements()
    assert len(statements) > 30
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, text in statements.items():
            if text.lstrip().startswith("COPY"):
                continue  # COPY cannot be prepared; it is exercised by the bulk tests
            converted = to_dollar_params(text)
            result = conn.pgconn.prepare(name.lower().encode(), converted.encode())
            assert result.status == psycopg.pq.ExecStatus.COMMAND_OK, (
                name,
                result.error_message.decode(),
            )


def test_cli_migrate_reports_what_it_applied(empty_dsn):
    """`delta-actors migrate` prints the applied files, then that the schema is current."""
    argv = [sys.executable, "-c", "from delta_actors.cli import main; main()", "migrate"]
    first = subprocess.run([*argv, "--dsn", empty_dsn], capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_job_queue" in first.stdout
    second = subprocess.run(
        [*argv, "--dsn", empty_dsn], capture_output=True, text=True, check=False
    )
    assert second.returncode == 0
    assert "up to date" in second.stdout


def test_cli_migrate_on_an_unreachable_dsn_fails_clearly(tmp_path):
    """An unreachable database: non-zero exit and a message that says so, no password."""
    dsn = f"postgresql://me:hunter2@/db?host={tmp_path}&port=9"
    argv = [sys.executable, "-c", "from delta_actors.cli import main; main()", "migrate"]
    result = subprocess.run([*argv, "--dsn", dsn], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "cannot use PostgreSQL" in result.stderr
    assert "hunter2" not in result.stderr
