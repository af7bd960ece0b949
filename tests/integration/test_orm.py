"""The `*_tx` methods join an ORM's transaction: SQLAlchemy 2 (sync and async) and Django 5.

Each ORM writes a row of the application's own next to what delta writes: a commit keeps
both, a rollback leaves neither. What is not supported is refused, naming what is.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

import delta_actors as delta
from tests.objects import Keyed


class Order(Keyed, kind="orm-order"):
    total: int = 0


class Receipt(delta.Job, kind="orm-receipt"):
    order: str


class Base(orm.DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "app_order"
    id: orm.Mapped[str] = orm.mapped_column(primary_key=True)


APP_TABLE = "CREATE TABLE app_order (id text PRIMARY KEY)"


def _create_app_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(APP_TABLE)


def _state(dsn: str) -> tuple[list[str], list[str], list[str]]:
    """The app's rows, the resources and the plain jobs' kinds, as committed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = [r[0] for r in conn.execute("SELECT id FROM app_order ORDER BY id")]
        resources = [
            f"{r[0]}:{r[1]}"
            for r in conn.execute("SELECT object_id, state FROM delta_resource ORDER BY object_id")
        ]
        jobs = [r[0] for r in conn.execute("SELECT kind FROM delta_job WHERE resource_id IS NULL")]
    return rows, resources, jobs


def _url(dsn: str) -> sa.URL:
    """`dsn` as a postgresql+psycopg:// URL (its host may be a socket directory)."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    database = params.pop("dbname", None)
    user = params.pop("user", None)
    password = params.pop("password", None)
    query = {key: str(value) for key, value in params.items()}
    return sa.URL.create(
        "postgresql+psycopg", username=user, password=password, database=database, query=query
    )


@pytest.fixture
def engine(dsn: str) -> Iterator[sa.Engine]:
    _create_app_table(dsn)
    engine = sa.create_engine(_url(dsn))
    yield engine
    engine.dispose()


def test_a_sqlalchemy_session_commit_keeps_the_app_row_the_resource_and_the_job(dsn, engine):
    with delta.Client.connect(dsn) as client:
        with orm.Session(engine) as session:
            session.add(Row(id="o1"))
            result = client.inform_tx(session, Order(key="o1", total=3))
            client.enqueue_tx(session, Receipt(order="o1"))
            assert result.outcome is delta.InformOutcome.CREATED
            assert _state(dsn) == ([], [], [])  # nothing visible before the commit
            session.commit()
        assert _state(dsn) == (["o1"], ["o1:scheduled"], ["orm-receipt"])
        with orm.Session(engine) as session:
            client.delete_tx(session, Order, "o1")
            session.commit()
        assert _state(dsn)[1] == ["o1:deleting"]  # no app: the worker finishes it


def test_a_sqlalchemy_session_rollback_leaves_neither_the_app_row_nor_the_resource(dsn, engine):
    with delta.Client.connect(dsn) as client:
        with orm.Session(engine) as session:
            session.add(Row(id="o1"))
            session.flush()
            client.inform_many_tx(session, [Order(key="o1"), Order(key="o2")])
            client.enqueue_many_tx(session, [Receipt(order="o1")])
            session.rollback()
        assert _state(dsn) == ([], [], [])


def test_a_sqlalchemy_connection_is_begun_like_its_own_execute_so_commit_commits(dsn, engine):
    with delta.Client.connect(dsn) as client:
        with engine.connect() as conn:  # no begin(): commit-as-you-go
            client.inform_tx(conn, Order(key="o1"))  # alone: it begins the transaction
            conn.commit()
        with engine.connect() as conn:
            conn.execute(sa.text("INSERT INTO app_order VALUES ('o1')"))
            conn.commit()
            client.inform_tx(conn, Order(key="o2"))
            conn.rollback()
        with engine.begin() as conn:
            client.inform_tx(conn, Order(key="o3"))
        assert _state(dsn) == (["o1"], ["o1:scheduled", "o3:scheduled"], [])


def test_sqlalchemy_handles_that_are_not_supported_are_refused_naming_what_is(dsn, engine):
    sqlite = sa.create_engine("sqlite://")
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    try:
        with delta.Client.connect(dsn) as client:
            with (
                orm.Session(sqlite) as session,
                pytest.raises(
                    delta.ConfigError, match=r"'sqlite\+pysqlite'.*postgresql\+psycopg://"
                ),
            ):
                client.inform_tx(session, Order(key="o1"))
            with pytest.raises(delta.ConfigError, match=r"an Engine has no transaction"):
                client.inform_tx(engine, Order(key="o1"))
            with (
                autocommit.connect() as conn,
                pytest.raises(delta.ConfigError, match=r"autocommit"),
            ):
                client.enqueue_tx(conn, Receipt(order="o1"))
            with pytest.raises(delta.ConfigError, match=r"use delta\.AsyncClient\.inform_tx"):
                client.inform_tx(AsyncSession(), Order(key="o1"))
    finally:
        sqlite.dispose()
    assert _state(dsn) == ([], [], [])


async def test_a_sqlalchemy_async_session_commits_or_rolls_back_with_the_app_row(dsn):
    _create_app_table(dsn)
    engine = create_async_engine(_url(dsn))
    try:
        async with await delta.AsyncClient.connect(dsn) as client:
            async with AsyncSession(engine) as session:
                session.add(Row(id="o1"))
                await client.inform_tx(session, Order(key="o1"))
                await client.enqueue_tx(session, Receipt(order="o1"))
                await session.commit()
            async with AsyncSession(engine) as session:
                session.add(Row(id="o2"))
                await client.inform_tx(session, Order(key="o2"))
                await session.rollback()
            async with engine.connect() as conn:
                await client.inform_many_tx(conn, [Order(key="o3")])  # begins it
                await conn.commit()
            async with engine.begin() as conn:
                await client.delete_tx(conn, Order, "o3")
                await conn.rollback()
            with (
                pytest.raises(delta.ConfigError, match=r"use delta\.Client\.inform_tx"),
                orm.Session(sa.create_engine("sqlite://")) as sync_session,
            ):
                await client.inform_tx(sync_session, Order(key="o4"))
    finally:
        await engine.dispose()
    assert _state(dsn) == (
        ["o1"], ["o1:scheduled", "o3:scheduled"], ["orm-receipt"]
    )  # fmt: skip


# ---------------------------------------------------------------- Django


class AbandonedError(Exception):
    """Raised inside an atomic block to roll it back."""


@pytest.fixture
def django_connection(dsn: str) -> Iterator[Any]:
    """Django's `connection`, configured (once per process) onto this test's database."""
    import django
    from django.conf import settings
    from django.db import connection, connections

    params = psycopg.conninfo.conninfo_to_dict(dsn)
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.get("dbname", ""),
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params.get("host", ""),
        "PORT": str(params.get("port", "")),
    }
    if not settings.configured:
        settings.configure(DATABASES={"default": database}, INSTALLED_APPS=[], USE_TZ=True)
        django.setup()
    else:
        # The wrapper reads this very dict when it next connects.
        connections.close_all()
        settings.DATABASES["default"].update(database)
    _create_app_table(dsn)
    yield connection
    connections.close_all()


def test_a_django_atomic_block_commits_or_rolls_back_the_app_row_with_the_resource(
    dsn, django_connection
):
    from django.db import transaction

    with delta.Client.connect(dsn) as client:
        with transaction.atomic():
            with django_connection.cursor() as cursor:
                cursor.execute("INSERT INTO app_order VALUES ('o1')")
            client.inform_tx(django_connection, Order(key="o1"))
            client.enqueue_tx(django_connection, Receipt(order="o1"))
            assert _state(dsn) == ([], [], [])
        assert _state(dsn) == (["o1"], ["o1:scheduled"], ["orm-receipt"])

        def write_then_fail() -> None:
            with transaction.atomic():
                with django_connection.cursor() as cursor:
                    cursor.execute("INSERT INTO app_order VALUES ('o2')")
                client.inform_tx(django_connection, Order(key="o2"))
                client.delete_tx(django_connection, Order, "o1")
                raise AbandonedError

        with pytest.raises(AbandonedError):
            write_then_fail()
        with transaction.atomic(), transaction.atomic():  # a savepoint inside is fine too
            client.delete_many_tx(django_connection, Order, ["o1"])
        assert _state(dsn) == (["o1"], ["o1:deleting"], ["orm-receipt"])


def test_django_outside_atomic_is_refused_since_it_would_commit_at_once(dsn, django_connection):
    with (
        delta.Client.connect(dsn) as client,
        pytest.raises(delta.ConfigError, match=r"inside transaction\.atomic\(\)"),
    ):
        client.inform_tx(django_connection, Order(key="o1"))
    assert _state(dsn) == ([], [], [])


async def test_the_async_client_refuses_a_django_connection_naming_the_sync_one(dsn):
    from django.db import connection

    async with await delta.AsyncClient.connect(dsn) as client:
        with pytest.raises(delta.ConfigError, match=r"use delta\.Client\.enqueue_tx"):
            await client.enqueue_tx(connection, Receipt(order="o1"))


def test_importing_delta_actors_imports_no_orm():
    """Detection is lazy: neither ORM is loaded unless the application loads it."""
    script = (
        "import sys, delta_actors, delta_actors.db.orm; "
        "print(sorted(m for m in ('sqlalchemy', 'django') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
