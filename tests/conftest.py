"""The test harness: a real PostgreSQL, a migrated template, a fresh clone per test.

Each xdist worker starts its own throwaway cluster (or uses `$DELTA_TEST_DSN`), migrates a
template database once, and gives every test that asks for `dsn` its own copy of it
(`CREATE DATABASE ... TEMPLATE`, about 15 ms). Everything is dropped at the end, also
after a failed run. Coroutine tests run on a fresh uvloop event loop.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import itertools
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import uvloop
from psycopg import sql

from delta_actors.db import migrations
from delta_actors.local.cluster import PostgresCluster, throwaway_cluster

pytest_plugins = ["tests.roles", "tests.console_server"]  # `role`, `serve_console`


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests on their own uvloop event loop.

    An error the loop reports as unhandled (a task exception never retrieved: a task
    nobody owned died) fails the test, whatever the test itself asserted.
    """
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    test = pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names})
    unhandled: list[str] = []

    def record(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        unhandled.append(f"{context.get('message')}: {context.get('exception')!r}")

    async def run() -> None:
        asyncio.get_running_loop().set_exception_handler(record)
        await test

    uvloop.run(run())
    gc.collect()  # an unretrieved task exception is reported when the task is collected
    if unhandled:
        pytest.fail("the event loop reported unhandled errors:\n" + "\n".join(unhandled))
    return True


class Server:
    """The PostgreSQL server the tests use: a throwaway cluster or `$DELTA_TEST_DSN`."""

    def __init__(self, admin_dsn: str, cluster: PostgresCluster | None) -> None:
        self.admin_dsn = admin_dsn
        self.cluster = cluster

    def dsn(self, dbname: str) -> str:
        """Return the DSN of database `dbname` on this server."""
        return psycopg.conninfo.make_conninfo(self.admin_dsn, dbname=dbname)

    def admin(self) -> psycopg.Connection:
        """Connect to the maintenance database, in autocommit."""
        return psycopg.connect(self.admin_dsn, autocommit=True)

    def create_database(self, name: str, template: str | None = None) -> str:
        """(Re)create database `name`, optionally from `template`; return its DSN."""
        with self.admin() as conn:
            self.drop_database(name, conn)
            query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            conn.execute(query)
        return self.dsn(name)

    def drop_database(self, name: str, conn: psycopg.Connection | None = None) -> None:
        """Drop database `name` if it exists, disconnecting its sessions."""
        query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        if conn is not None:
            conn.execute(query)
            return
        with self.admin() as admin:
            admin.execute(query)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    """The PostgreSQL server for this xdist worker."""
    external = os.environ.get("DELTA_TEST_DSN")
    if external:
        yield Server(external, None)
        return
    cluster = throwaway_cluster()
    try:
        yield Server(cluster.dsn(), cluster)
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def db_prefix(worker_id: str) -> str:
    """A prefix for database names unique to this xdist worker and run."""
    return f"delta_t{os.getpid()}_{worker_id}".lower()


@pytest.fixture(scope="session")
def template_db(pg_server: Server, db_prefix: str) -> Iterator[str]:
    """A database migrated once per session, cloned by every test."""
    name = f"{db_prefix}_template"
    with psycopg.connect(pg_server.create_database(name), autocommit=True) as conn:
        migrations.migrate(conn)
    yield name
    pg_server.drop_database(name)


_counter = itertools.count()


@pytest.fixture
def dsn(pg_server: Server, template_db: str, db_prefix: str) -> Iterator[str]:
    """The DSN of a migrated database of this test's own."""
    name = f"{db_prefix}_{next(_counter)}"
    yield pg_server.create_database(name, template=template_db)
    pg_server.drop_database(name)


@pytest.fixture
def empty_dsn(pg_server: Server, db_prefix: str) -> Iterator[str]:
    """The DSN of an empty, unmigrated database of this test's own."""
    name = f"{db_prefix}_empty{next(_counter)}"
    yield pg_server.create_database(name)
    pg_server.drop_database(name)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to this test's database."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection
