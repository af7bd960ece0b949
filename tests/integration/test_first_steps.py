"""What a new user hits first: mistakes refused with the fix named, logs that say which
resource, printouts that stay readable."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

import delta_actors as delta
from delta_actors.model.job_row import JobError
from delta_actors.resources.informers import InformerScheduler
from tests.integration.test_leader import _lead
from tests.integration.workers import running_worker
from tests.objects import Keyed


def test_an_object_type_with_a_kind_but_no_id_is_refused_when_defined():
    with pytest.raises(delta.ConfigError, match=r"Nameless has a kind but no id\(\)"):

        class Nameless(delta.Object, kind="nameless"):
            name: str

    class Base(delta.Object):  # abstract (no kind): may leave id() to its subclasses
        key: str

    class Concrete(Base, kind="concrete"):
        def id(self) -> str:
            return self.key

    assert Concrete(key="c").id() == "c"


def test_an_app_refuses_a_controller_with_neither_work_nor_finalize():
    class Idle(Keyed, kind="idle"):
        pass

    class IdleController(delta.Controller[Idle]):
        pass

    with pytest.raises(delta.ConfigError, match=r"overrides neither work\(\) nor finalize\(\)"):
        delta.App(controllers=[IdleController()])


def test_a_kind_name_where_a_type_belongs_is_a_clear_error(dsn):
    with delta.Client.connect(dsn) as client:
        with pytest.raises(delta.ConfigError, match=r"expected a delta\.Object or delta\.Job type"):
            client.get("order", "o2")  # type: ignore[arg-type]
        with pytest.raises(delta.ConfigError, match=r"expected a delta\.Object or delta\.Job type"):
            client.delete("order", "o2")  # type: ignore[call-overload]


def test_a_printed_error_history_leaves_the_tracebacks_out():
    error = JobError(at=1.0, attempt=2, error="RuntimeError: boom", trace="Traceback...\n" * 200)
    assert repr(error) == (
        "JobError(at=1.0, attempt=2, error='RuntimeError: boom', trace=<2600 characters>)"
    )


class Stamped(Keyed, kind="stamped"):
    at: datetime

    def created_at(self) -> datetime:
        return self.at


class StampedController(delta.Controller[Stamped]):
    async def work(self, resource: delta.Resource[Stamped]) -> None:
        return None

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Stamped]:
        yield Stamped(key="s1", at=datetime(2026, 1, 1))  # naive: no tzinfo


async def test_a_naive_created_at_fails_the_informer_run_naming_the_fix(dsn):
    app = delta.App(controllers=[StampedController()])
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        term = await _lead(dsn)
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO delta_informer (kind) VALUES ('stamped')")
        result = await InformerScheduler(app, pool).run_informer("stamped", term, 1)
    assert "Stamped.created_at() returned a naive datetime" in result["error"]


class Brittle(Keyed, kind="brittle"):
    pass


class BrittleController(delta.Controller[Brittle]):
    max_attempts = 2

    async def work(self, resource: delta.Resource[Brittle]) -> None:
        raise RuntimeError("the API said no")


async def test_failure_logs_name_the_resource_and_degrading_has_a_warning(dsn, caplog):
    app = delta.App(controllers=[BrittleController()])
    caplog.set_level(logging.INFO, logger="delta_actors.resources.reconciler")
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        await client.inform(Brittle(key="b-17"))
        async with running_worker(app, dsn):
            from tests.waiting import wait_until_async

            async def degraded() -> bool:
                found = await client.get(Brittle, "b-17")
                return found is not None and found.state is delta.State.DEGRADED

            await wait_until_async(degraded, 10)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("INFO", "brittle b-17: work failed (attempt 1), retrying in 0.0s: "
            "RuntimeError: the API said no") in lines  # fmt: skip
    assert ("WARNING", "brittle b-17 degraded: its work failed 2 times (max_attempts), last: "
            "RuntimeError: the API said no") in lines  # fmt: skip


TX_METHODS = {
    "enqueue_tx": lambda c, conn: c.enqueue_tx(conn, Ping()),
    "enqueue_many_tx": lambda c, conn: c.enqueue_many_tx(conn, [Ping()]),
    "inform_tx": lambda c, conn: c.inform_tx(conn, Brittle(key="x")),
    "inform_many_tx": lambda c, conn: c.inform_many_tx(conn, [Brittle(key="x")]),
    "delete_tx": lambda c, conn: c.delete_tx(conn, Brittle, "x"),
    "delete_many_tx": lambda c, conn: c.delete_many_tx(conn, Brittle, ["x"]),
}


class Ping(delta.Job, kind="first-steps-ping"):
    pass


async def test_every_tx_method_refuses_a_connection_of_the_wrong_kind_naming_the_fix(dsn):
    import contextlib
    import sqlite3

    # Closed at the end: Python 3.13 warns of an unclosed sqlite3 connection.
    with (
        delta.Client.connect(dsn) as client,
        psycopg.connect(dsn) as sync_conn,
        contextlib.closing(sqlite3.connect(":memory:")) as sqlite,
    ):
        async_conn = await psycopg.AsyncConnection.connect(dsn)
        async with await delta.AsyncClient.connect(dsn) as aclient:
            try:
                for name, call in TX_METHODS.items():
                    with pytest.raises(delta.ConfigError, match=rf"use delta\.AsyncClient\.{name}"):
                        call(client, async_conn)
                    with pytest.raises(delta.ConfigError, match=r"takes the psycopg\.Connection"):
                        call(client, sqlite)
                    with pytest.raises(delta.ConfigError, match=rf"use delta\.Client\.{name}"):
                        await call(aclient, sync_conn)
                    with pytest.raises(delta.ConfigError, match=r"got builtins\.NoneType"):
                        await call(aclient, None)
                closed = psycopg.connect(dsn)
                closed.close()
                for call in TX_METHODS.values():
                    with pytest.raises(delta.DatabaseError):
                        call(client, closed)
            finally:
                await async_conn.close()


def test_supervise_refuses_a_role_that_cannot_write_what_the_actors_write(dsn, role):
    """Before it forks: the missing grants named, instead of actors that crash-loop."""
    from psycopg import sql

    from delta_actors.runtime.supervisor import check_database
    from tests.roles import PASSWORD

    check_database(role.dsn(PASSWORD))  # the fixture's role may write everything
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("REVOKE INSERT, UPDATE, DELETE ON delta_actor, delta_job FROM {}").format(
                sql.Identifier(role.name)
            )
        )
    with pytest.raises(delta.ConfigError) as refused:
        check_database(role.dsn(PASSWORD))
    message = str(refused.value)
    assert f"the role {role.name!r} cannot write what the actors write" in message
    assert "DELETE, INSERT, UPDATE on delta_actor; DELETE, INSERT, UPDATE on delta_job" in message
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES" in message


def test_a_role_without_a_privilege_gets_a_database_error_naming_it(dsn, role):
    from psycopg import sql

    from tests.roles import PASSWORD

    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("REVOKE INSERT, UPDATE ON delta_resource FROM {}").format(
                sql.Identifier(role.name)
            )
        )
    with delta.Client.connect(role.dsn(PASSWORD)) as client:
        with pytest.raises(delta.DatabaseError, match="permission denied for table delta_resource"):
            client.inform(Brittle(key="b"))
        with pytest.raises(delta.DatabaseError, match="grant that to the role"):
            client.inform_many([Brittle(key="c")])
