"""Databases for tests: a server, a migrated template, a clone of it per test.

The server is a throwaway cluster started from the machine's PostgreSQL server binaries
(local/cluster.py, the code the embedded database runs on), or the one `$DELTA_TEST_DSN`
names. On it, a template database is migrated once and every test gets its own copy
(`CREATE DATABASE ... TEMPLATE`, about 15 ms), dropped afterwards with its sessions
(`WITH (FORCE)`). Names carry a prefix unique to the process and xdist worker, so that
workers, and runs sharing one external server, never meet. Owners drop what they made:
the clones, then the template, then the cluster, also after a failed run.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from delta_actors.db import migrations
from delta_actors.db.connection import PLAN_CACHE_MODE, component_conninfo, translate_errors
from delta_actors.local.cluster import PostgresCluster, throwaway_cluster

TEST_DSN_ENV = "DELTA_TEST_DSN"


class DatabaseServer:
    """The PostgreSQL server tests make their databases on."""

    def __init__(self, admin_dsn: str, cluster: PostgresCluster | None = None) -> None:
        self.admin_dsn = admin_dsn
        self.cluster = cluster  # None: an external server, not ours to stop

    @classmethod
    def start(cls) -> DatabaseServer:
        """The server `$DELTA_TEST_DSN` names, else a throwaway cluster started now."""
        external = os.environ.get(TEST_DSN_ENV)
        if external:
            return cls(external)
        cluster = throwaway_cluster()
        return cls(cluster.dsn(), cluster)

    def stop(self) -> None:
        """Remove the throwaway cluster (an external server is left alone)."""
        if self.cluster is not None:
            self.cluster.remove()

    def dsn(self, dbname: str) -> str:
        """Return the DSN of database `dbname` on this server."""
        return psycopg.conninfo.make_conninfo(self.admin_dsn, dbname=dbname)

    def admin(self) -> psycopg.Connection:
        """Connect to the maintenance database, in autocommit."""
        with translate_errors("connect to the test server", self.admin_dsn):
            return psycopg.connect(self.admin_dsn, autocommit=True)

    def create_database(self, name: str, template: str | None = None) -> str:
        """(Re)create database `name`, optionally from `template`; return its DSN."""
        with self.admin() as conn, translate_errors(f"create database {name}", self.admin_dsn):
            self.drop_database(name, conn)
            query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            conn.execute(query)
        return self.dsn(name)

    def drop_database(self, name: str, conn: psycopg.Connection | None = None) -> None:
        """Drop database `name` if it exists, disconnecting its sessions."""
        query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with translate_errors(f"drop database {name}", self.admin_dsn):
            if conn is not None:
                conn.execute(query)
                return
            with self.admin() as admin:
                admin.execute(query)


class TemplateDatabases:
    """A template migrated once on first use, and clones of it, on one server."""

    def __init__(self, server: DatabaseServer, prefix: str) -> None:
        self.server = server
        self.prefix = prefix
        self._template: str | None = None
        self._counter = itertools.count()

    @property
    def template(self) -> str:
        """The migrated template's name (created and migrated on first use)."""
        if self._template is None:
            name = f"{self.prefix}_template"
            dsn = self.server.create_database(name)
            with (
                translate_errors("migrate the test template", dsn),
                psycopg.connect(dsn, autocommit=True) as conn,
            ):
                migrations.migrate(conn)
            self._template = name
        return self._template

    def clone(self) -> tuple[str, str]:
        """Create a migrated database of its own; return its name and DSN."""
        name = f"{self.prefix}_{next(self._counter)}"
        return name, self.server.create_database(name, template=self.template)

    def empty(self) -> tuple[str, str]:
        """Create an empty, unmigrated database; return its name and DSN."""
        name = f"{self.prefix}_empty{next(self._counter)}"
        return name, self.server.create_database(name)

    def drop(self, name: str) -> None:
        """Drop a database made here."""
        self.server.drop_database(name)

    def close(self) -> None:
        """Drop the template."""
        if self._template is not None:
            self.server.drop_database(self._template)
            self._template = None


def database_prefix(worker: str | None = None) -> str:
    """A prefix for database names unique to this process and xdist worker."""
    worker = worker or os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"delta_t{os.getpid()}_{worker}".lower()


class UnpooledAsyncPool(AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]]):
    """An AsyncConnectionPool that keeps nothing: each `connection()` opens a connection,
    configured as our pools' are, and closes it after the block.

    Bound to no event loop, so an AsyncClient built on it in a sync fixture serves a test
    on whatever loop its async plugin runs it, and nothing is left open at teardown.
    """

    def __init__(self, dsn: str, *, name: str = "delta-test-client") -> None:
        super().__init__(
            component_conninfo(dsn, name), min_size=0, max_size=1, open=False, name=name
        )

    @asynccontextmanager
    async def connection(
        self, timeout: float | None = None
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A new connection for the block (commit on success, rollback on error), closed."""
        conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)  # type: ignore[arg-type]
        async with conn:
            await conn.execute(PLAN_CACHE_MODE)
            yield conn
