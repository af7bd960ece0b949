"""The pytest plugin of delta_actors (entry point `pytest11`: installed, it is loaded).

Fixtures, each named `delta_*` so that none clashes with a project's own:

- `delta_postgres` (session): the DatabaseServer: a throwaway PostgreSQL cluster from
  the machine's server binaries ($PG_BINDIR, `pg_config --bindir` or
  /usr/lib/postgresql/*/bin), or the server `$DELTA_TEST_DSN` names. Under pytest-xdist
  each worker has its own (session fixtures are per worker).
- `delta_databases` (session): the migrated template and its clones.
- `delta_dsn`: the DSN of a migrated database of the test's own, dropped afterwards.
- `delta_app`: None; override it in a conftest.py to give the clients your App (kinds
  and namespaces checked, objects routed to their controllers' namespaces).
- `delta_client`: a `delta.Client` on `delta_dsn`, closed afterwards.
- `delta_async_client`: a `delta.AsyncClient` on `delta_dsn`. A plain fixture, so it
  serves an async test whatever plugin runs it: it connects per call and keeps nothing
  open (testing/databases.UnpooledAsyncPool).

Nothing is started until a test asks for one of them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from delta_actors.app import App
from delta_actors.client import AsyncClient, Client
from delta_actors.testing.databases import (
    DatabaseServer,
    TemplateDatabases,
    UnpooledAsyncPool,
    database_prefix,
)


@pytest.fixture(scope="session")
def delta_postgres() -> Iterator[DatabaseServer]:
    """The PostgreSQL server of this test session (or xdist worker)."""
    server = DatabaseServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def delta_databases(delta_postgres: DatabaseServer) -> Iterator[TemplateDatabases]:
    """The migrated template of this session, and its clones."""
    databases = TemplateDatabases(delta_postgres, database_prefix())
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
def delta_dsn(delta_databases: TemplateDatabases) -> Iterator[str]:
    """The DSN of a migrated database of this test's own."""
    name, dsn = delta_databases.clone()
    try:
        yield dsn
    finally:
        delta_databases.drop(name)


@pytest.fixture
def delta_app() -> App | None:
    """The App the client fixtures use: None; override it to give them yours."""
    return None


@pytest.fixture
def delta_client(delta_dsn: str, delta_app: App | None) -> Iterator[Client]:
    """A delta.Client on this test's database."""
    with Client.connect(delta_dsn, app=delta_app) as client:
        yield client


@pytest.fixture
def delta_async_client(delta_dsn: str, delta_app: App | None) -> AsyncClient:
    """A delta.AsyncClient on this test's database, usable on any event loop."""
    return AsyncClient(UnpooledAsyncPool(delta_dsn), app=delta_app)
