"""The test harness: a real PostgreSQL, a migrated template, a fresh clone per test.

Built on our own pytest plugin (delta_actors.testing, loaded through its `pytest11`
entry point): each xdist worker starts its own throwaway cluster (or uses
`$DELTA_TEST_DSN`), migrates a template database once, and gives every test that asks
for `dsn` (the plugin's `delta_dsn`) its own copy of it (`CREATE DATABASE ... TEMPLATE`,
about 15 ms). Everything is dropped at the end, also after a failed run. Coroutine tests
run on a fresh uvloop event loop.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import uvloop

from delta_actors.testing import DatabaseServer, TemplateDatabases

pytest_plugins = [
    "tests.roles",
    "tests.pgbouncer",
    "tests.spans",
    "tests.console_server",
]  # `role`, PgBouncer, `spans`, `serve_console`


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


@pytest.fixture(scope="session")
def pg_server(delta_postgres: DatabaseServer) -> DatabaseServer:
    """The PostgreSQL server for this xdist worker (the plugin's)."""
    return delta_postgres


@pytest.fixture
def dsn(delta_dsn: str) -> str:
    """The DSN of a migrated database of this test's own (the plugin's `delta_dsn`)."""
    return delta_dsn


@pytest.fixture
def empty_dsn(delta_databases: TemplateDatabases) -> Iterator[str]:
    """The DSN of an empty, unmigrated database of this test's own."""
    name, dsn = delta_databases.empty()
    yield dsn
    delta_databases.drop(name)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to this test's database."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection
