"""A login role that is not a superuser, for tests of passwords and connection limits.

The test cluster trusts every local connection; the `role` fixture adds a pg_hba rule that
makes PostgreSQL check this one role's password (scram), and grants it the test database.
Superusers ignore connection limits, so limits are tested through such a role.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from delta_actors.testing import DatabaseServer as Server
from delta_actors.testing import TemplateDatabases

PASSWORD = "Corr3ct-Horse-9417"  # noqa: S105 (a throwaway role's, to check redaction)
_roles = itertools.count()


class Role:
    """A non-superuser login role with rights on one test database."""

    def __init__(self, server: Server, dsn: str, name: str) -> None:
        self.server = server
        self.db_dsn = dsn
        self.name = name

    def dsn(self, password: str | None = None) -> str:
        extra = {"password": password} if password is not None else {}
        return psycopg.conninfo.make_conninfo(self.db_dsn, user=self.name, **extra)

    def grant(self) -> None:
        """Give the role every right on the tables that exist now."""
        with psycopg.connect(self.db_dsn, autocommit=True) as conn:
            for grant in (
                "GRANT ALL ON ALL TABLES IN SCHEMA public TO {}",
                "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {}",
                "GRANT USAGE, CREATE ON SCHEMA public TO {}",
            ):
                conn.execute(sql.SQL(grant).format(sql.Identifier(self.name)))  # type: ignore[arg-type]

    def set_connection_limit(self, limit: int) -> None:
        with self.server.admin() as admin:
            admin.execute(
                sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
                    sql.Identifier(self.name), sql.Literal(limit)
                )
            )

    def terminate_sessions(self) -> int:
        with self.server.admin() as admin:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (self.name,),
            ).fetchall()
        return len(rows)


@pytest.fixture
def role(pg_server: Server, dsn: str, delta_databases: TemplateDatabases) -> Iterator[Role]:
    """A login role whose password is checked (scram), with rights on the test database."""
    name = f"{delta_databases.prefix}_role{next(_roles)}"
    with pg_server.admin() as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(PASSWORD)
            )
        )
        hba = admin.execute("SHOW hba_file").fetchone()
        assert hba is not None
    Role(pg_server, dsn, name).grant()
    rule = f"local all {name} scram-sha-256\nhost all {name} all scram-sha-256\n"
    with open(hba[0]) as file:
        original = file.read()
    with open(hba[0], "w") as file:
        file.write(rule + original)
    try:
        _reload(pg_server)
        yield Role(pg_server, dsn, name)
    finally:
        with open(hba[0], "w") as file:
            file.write(original)
        _reload(pg_server)
        Role(pg_server, dsn, name).terminate_sessions()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        with pg_server.admin() as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _reload(server: Server) -> None:
    with server.admin() as admin:
        admin.execute("SELECT pg_reload_conf()")
