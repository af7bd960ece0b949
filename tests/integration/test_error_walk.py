"""One seam, no leaks: every public method fails as a delta error, never a raw one.

The walk calls every public method of `Client` and `AsyncClient` (the tables below must
name each one: a new method fails the walk until it is added), then the worker and every
CLI command that takes a DSN (COMMANDS, checked the same way against the CLI's commands),
under three faults:

- a wrong `conn`: the other kind of psycopg connection, or no connection at all, for the
  `*_tx` methods; a client made over something that is not a pool of the right kind for
  the others: `ConfigError` naming what to pass;
- a closed connection (or a client whose pool is closed, a DSN nothing answers):
  `DatabaseError`;
- a role without privileges on our tables: `DatabaseError` naming the grant.
"""

from __future__ import annotations

import contextlib
import inspect
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import click
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool

import delta_actors as delta
from delta_actors.ops.cli import main
from tests.e2e.conftest import ROOT
from tests.objects import Keyed
from tests.roles import PASSWORD

NOWHERE = "postgresql://nobody@/delta?host=/nonexistent-socket-dir&port=1&connect_timeout=2"


class Item(Keyed, kind="walk-item"):
    pass


class Ping(delta.Job, kind="walk-ping"):
    pass


Call = Callable[[Any, Any], Any]

# Every public method of both clients, called with arguments that reach the database.
# None: the method opens or closes the client itself and is walked on its own.
CALLS: dict[str, Call | None] = {
    "cancel_job": lambda c, conn: c.cancel_job(1),
    "cancel_jobs": lambda c, conn: c.cancel_jobs(Ping, state="available"),
    "close": None,
    "connect": None,
    "delete": lambda c, conn: c.delete(Item, "a"),
    "delete_many": lambda c, conn: c.delete_many(Item, ["a"]),
    "delete_many_tx": lambda c, conn: c.delete_many_tx(conn, Item, ["a"]),
    "delete_tx": lambda c, conn: c.delete_tx(conn, Item, "a"),
    "enqueue": lambda c, conn: c.enqueue(Ping()),
    "enqueue_many": lambda c, conn: c.enqueue_many([Ping(), Ping()]),
    "enqueue_many_tx": lambda c, conn: c.enqueue_many_tx(conn, [Ping()]),
    "enqueue_tx": lambda c, conn: c.enqueue_tx(conn, Ping()),
    "get": lambda c, conn: c.get(Item, "a"),
    "get_job": lambda c, conn: c.get_job(1),
    "inform": lambda c, conn: c.inform(Item(key="a")),
    "inform_many": lambda c, conn: c.inform_many([Item(key="a")]),
    "inform_many_tx": lambda c, conn: c.inform_many_tx(conn, [Item(key="a")]),
    "inform_tx": lambda c, conn: c.inform_tx(conn, Item(key="a")),
    "invalidate": lambda c, conn: c.invalidate(Item, "a"),
    "list": lambda c, conn: c.list(Item),
    "list_jobs": lambda c, conn: c.list_jobs(Ping),
    "pause": lambda c, conn: c.pause("default"),
    "resume": lambda c, conn: c.resume("default"),
    "retry": lambda c, conn: c.retry(Item, state="failed"),
    "retry_jobs": lambda c, conn: c.retry_jobs(Ping, state="discarded"),
    "run_informer": lambda c, conn: c.run_informer("walk-item"),
    "subscribe": lambda c, conn: c.subscribe(),
}
# Methods with a filter form besides their single form, walked both ways.
EXTRA: list[tuple[str, Call]] = [
    ("delete", lambda c, conn: c.delete(Item, state="failed")),
]
TX = sorted(name for name in CALLS if name.endswith("_tx"))


def walk() -> list[tuple[str, Call]]:
    calls = [(name, call) for name, call in CALLS.items() if call is not None]
    return calls + EXTRA


def test_the_walk_names_every_public_method_of_both_clients():
    for cls in (delta.Client, delta.AsyncClient):
        public = {name for name, _ in inspect.getmembers(cls) if not name.startswith("_")}
        assert public == set(CALLS), f"{cls.__name__}: walk these too: {public ^ set(CALLS)}"


def call_sync(client: delta.Client, name: str, call: Call, conn: Any) -> None:
    result = call(client, conn)
    if isinstance(result, delta.Subscription):
        result.close()


async def call_async(client: delta.AsyncClient, name: str, call: Call, conn: Any) -> None:
    result = call(client, conn)
    if isinstance(result, delta.AsyncSubscription):
        async with result:
            return
    await result


def assert_cause_kept(name: str, error: BaseException) -> None:
    """The psycopg (or psycopg_pool) error behind a DatabaseError is its cause. `subscribe`
    on a closed client refuses before psycopg is asked anything: there is no cause."""
    if name == "subscribe" and "pool 'delta-client' is closed" in str(error):
        assert error.__cause__ is None
        return
    assert isinstance(error.__cause__, psycopg.Error), f"{name}: {error!r} lost its cause"


def revoke_everything(dsn: str, role: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        for statement in (
            "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}",
            "REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {}",
        ):
            admin.execute(sql.SQL(statement).format(sql.Identifier(role)))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- wrong conn


async def test_a_wrong_conn_is_refused_naming_what_to_pass(dsn):
    # Closed at the end: Python 3.13 warns of an unclosed sqlite3 connection.
    with (
        delta.Client.connect(dsn) as client,
        psycopg.connect(dsn) as sync_conn,
        contextlib.closing(sqlite3.connect(":memory:")) as sqlite,
    ):
        async with (
            await delta.AsyncClient.connect(dsn) as aclient,
            await psycopg.AsyncConnection.connect(dsn) as async_conn,
        ):
            for name in TX:
                call = CALLS[name]
                assert call is not None
                for wrong, match in (
                    (async_conn, rf"use delta\.AsyncClient\.{name}"),
                    (sqlite, r"takes the psycopg\.Connection"),
                    (None, r"got builtins\.NoneType"),
                ):
                    with pytest.raises(delta.ConfigError, match=match):
                        call_sync(client, name, call, wrong)
                for wrong, match in (
                    (sync_conn, rf"use delta\.Client\.{name}"),
                    (object(), r"takes the psycopg\.AsyncConnection"),
                    (None, r"got builtins\.NoneType"),
                ):
                    with pytest.raises(delta.ConfigError, match=match):
                        await call_async(aclient, name, call, wrong)


async def test_a_client_over_something_that_is_not_its_kind_of_pool_is_refused(dsn):
    async_pool = AsyncConnectionPool(dsn, open=False)
    sync_pool = ConnectionPool(dsn, open=False)
    with psycopg.connect(dsn) as conn:
        for wrong in (async_pool, conn, dsn, None):
            with pytest.raises(delta.ConfigError, match=r"Client takes a psycopg_pool\.Conn"):
                delta.Client(wrong)  # type: ignore[arg-type]
        for wrong in (sync_pool, conn, dsn):
            with pytest.raises(delta.ConfigError, match=r"AsyncClient takes a psycopg_pool\.Async"):
                delta.AsyncClient(wrong)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- closed


async def test_a_closed_connection_or_pool_is_a_database_error(dsn):
    closed = psycopg.connect(dsn)
    closed.close()
    aclosed = await psycopg.AsyncConnection.connect(dsn)
    await aclosed.close()
    client = delta.Client.connect(dsn)
    client.close()
    aclient = await delta.AsyncClient.connect(dsn)
    await aclient.close()
    for name, call in walk():
        with pytest.raises(delta.DatabaseError) as failed:
            call_sync(client, name, call, closed)
        assert_cause_kept(name, failed.value)
        with pytest.raises(delta.DatabaseError) as failed:
            await call_async(aclient, name, call, aclosed)
        assert_cause_kept(name, failed.value)
    with pytest.raises(delta.DatabaseError, match="cannot use PostgreSQL"):
        delta.Client.connect(NOWHERE)
    with pytest.raises(delta.DatabaseError, match="cannot use PostgreSQL"):
        await delta.AsyncClient.connect(NOWHERE)


async def test_actors_on_a_database_they_cannot_reach_fail_as_a_database_error():
    worker = delta.Worker(delta.App(jobs={Ping: lambda job: None}), NOWHERE)
    with pytest.raises(delta.DatabaseError):
        await worker.queue_depth()  # its pool never opened
    with pytest.raises(delta.DatabaseError, match="cannot use PostgreSQL"):
        await worker.start()
    from delta_actors.leader.duties import Leader

    with pytest.raises(delta.DatabaseError, match="cannot use PostgreSQL"):
        await Leader(delta.App(), NOWHERE).start()


# ---------------------------------------------------------------------------- privileges


async def test_a_role_without_privileges_gets_a_database_error_from_every_method(dsn, role):
    revoke_everything(dsn, role.name)
    as_role = role.dsn(PASSWORD)
    with pytest.raises(delta.DatabaseError, match="permission denied"):
        delta.Client.connect(as_role)
    with pytest.raises(delta.DatabaseError, match="permission denied"):
        await delta.AsyncClient.connect(as_role)
    with (
        ConnectionPool(as_role, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool,
        psycopg.connect(as_role) as conn,
    ):
        client = delta.Client(pool)
        for name, call in walk():
            with pytest.raises(delta.DatabaseError, match="grant that to the role") as denied:
                call_sync(client, name, call, conn)
            conn.rollback()
            assert isinstance(denied.value.__cause__, psycopg.errors.InsufficientPrivilege), name
    async with (
        AsyncConnectionPool(as_role, min_size=1, max_size=2, kwargs={"autocommit": True}) as apool,
        await psycopg.AsyncConnection.connect(as_role) as aconn,
    ):
        aclient = delta.AsyncClient(apool)
        for name, call in walk():
            with pytest.raises(delta.DatabaseError, match="grant that to the role") as denied:
                await call_async(aclient, name, call, aconn)
            await aconn.rollback()
            assert isinstance(denied.value.__cause__, psycopg.errors.InsufficientPrivilege), name
    worker = delta.Worker(delta.App(jobs={Ping: lambda job: None}), as_role)
    with pytest.raises(delta.DatabaseError, match="permission denied"):
        await worker.start()
    from delta_actors.leader.duties import Leader

    with pytest.raises(delta.DatabaseError, match="permission denied"):
        await Leader(delta.App(), as_role).start()


# ---------------------------------------------------------------------------- the CLI

COMMANDS = [
    ["migrate"],
    ["migrate", "--check"],
    ["status"],
    ["inspect", "walk-item", "a"],
    ["inform", "walk-item"],
    ["resources", "list", "--kind", "walk-item"],
    ["resources", "retry", "--kind", "walk-item"],
    ["resources", "invalidate", "--kind", "walk-item"],
    ["resources", "delete", "--kind", "walk-item"],
    ["resources", "delete", "--kind", "walk-item", "--dry-run"],
    ["jobs", "list"],
    ["jobs", "retry", "--kind", "walk-ping"],
    ["jobs", "cancel", "--kind", "walk-ping"],
    ["jobs", "cancel", "--kind", "walk-ping", "--dry-run"],
    ["pause", "default"],
    ["resume", "default"],
]
# Commands that take --dsn and are walked elsewhere: supervise below (it forks actors),
# web in tests/integration/test_console.py (it serves until stopped).
WALKED_ELSEWHERE = {"supervise", "web"}


def command_path(argv: list[str]) -> str:
    """The command `argv` runs, e.g. "resources delete" (its group and name)."""
    group: click.Command = main
    path = []
    for token in argv:
        if not isinstance(group, click.Group) or token not in group.commands:
            break
        group = group.commands[token]
        path.append(token)
    return " ".join(path)


def test_the_cli_walk_names_every_command_that_takes_a_dsn():
    def taking_a_dsn(group: click.Group, prefix: str) -> set[str]:
        found = set()
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                found |= taking_a_dsn(command, f"{prefix}{name} ")
            elif any(param.name == "dsn" for param in command.params):
                found.add(f"{prefix}{name}")
        return found

    walked = {command_path(argv) for argv in COMMANDS} | WALKED_ELSEWHERE
    assert taking_a_dsn(main, "") == walked, "walk these too, or drop them from the walk"


def test_every_cli_command_says_what_failed_in_one_line_never_a_traceback(dsn, role):
    revoke_everything(dsn, role.name)
    for where in (NOWHERE, role.dsn(PASSWORD)):
        for command in COMMANDS:
            result = CliRunner().invoke(main, [*command, "--dsn", where])
            shown = f"{command} at {where}: {result.output}"
            assert result.exit_code in (1, 2), shown
            assert result.output.startswith("error: "), shown
            assert not isinstance(result.exception, psycopg.Error), shown
            assert "Traceback" not in result.output, shown
            assert PASSWORD not in result.output, shown


def test_supervise_says_what_failed_before_it_forks(dsn, role):
    revoke_everything(dsn, role.name)
    for where in (NOWHERE, role.dsn(PASSWORD)):
        done = subprocess.run(
            [sys.executable, "-m", "delta_actors", "supervise", "--app", "tests.e2e.apps:app",
             "--dsn", where],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "error: check database" in done.stderr
        assert "Traceback" not in done.stderr


def test_supervise_as_a_role_that_cannot_write_exits_naming_the_grants_before_it_forks(dsn, role):
    """The issue's SELECT-only role passed the checks, forked, then crash-looped on
    `permission denied for table delta_actor`; and without the sequences' USAGE."""
    argv = [sys.executable, "-m", "delta_actors", "supervise", "--app", "tests.e2e.apps:app",
            "--dsn", role.dsn(PASSWORD)]  # fmt: skip
    revoke_everything(dsn, role.name)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(
            sql.Identifier(role.name)))  # fmt: skip
        found = admin.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'S' AND relname LIKE %s", ("delta\\_%",)
        )
        sequences = [row[0] for row in found]
    assert sequences
    select_only = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60,
                                 check=False)  # fmt: skip
    assert select_only.returncode == 2, select_only.stderr
    assert select_only.stderr.startswith(
        f"error: the role {role.name!r} cannot write what the actors write: it lacks "
    ), select_only.stderr
    for table in ("delta_actor", "delta_job", "delta_resource", "delta_leader"):
        assert f"DELETE, INSERT, UPDATE on {table}" in select_only.stderr, table
    assert "Traceback" not in select_only.stderr
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}")
                      .format(sql.Identifier(role.name)))  # fmt: skip
    no_sequences = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60,
                                  check=False)  # fmt: skip
    assert no_sequences.returncode == 2, no_sequences.stderr
    for sequence in sequences:
        assert f"USAGE on {sequence}" in no_sequences.stderr, no_sequences.stderr
    assert "on delta_actor;" not in no_sequences.stderr
    with psycopg.connect(dsn, autocommit=True) as admin:  # no actor ever started
        assert admin.execute("SELECT count(*) FROM delta_actor").fetchone() == (0,)


# ---------------------------------------------------------------------------- reasons


async def test_a_heartbeat_that_gets_no_connection_says_so_in_its_log_line(dsn, caplog):
    """The issue's `heartbeat of actor 1 failed (4.0s since the last): ` had no reason."""
    from delta_actors.queue.actors import heartbeat

    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False) as pool:
        await pool.open(wait=True)
        async with pool.connection():  # the only connection is taken: checkouts time out
            with pytest.raises(delta.ActorLostError, match="could not heartbeat"):
                await heartbeat(pool, 1, 0.1, fence=0.5)
    lines = [r.getMessage() for r in caplog.records if r.event == "actor.heartbeat_failed"]  # type: ignore[attr-defined]
    assert lines
    assert all(line.endswith("TimeoutError: no connection or no answer from PostgreSQL within 1s")
               for line in lines), lines  # fmt: skip
    assert "since the last one that got through" in lines[0]
