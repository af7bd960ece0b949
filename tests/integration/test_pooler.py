"""Behind PgBouncer: transaction mode declared, session mode as is (db/pooler.py).

Each test runs through a real PgBouncer (tests/pgbouncer.py) whose transaction pool has
TRANSACTION_POOL_SIZE server connections, so clients share them from the start.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from click.testing import CliRunner

import delta_actors as delta
from delta_actors.ops.cli import main
from tests.integration.workers import running_worker
from tests.objects import Keyed
from tests.pgbouncer import TRANSACTION_POOL_SIZE
from tests.waiting import wait_until_async


class Ticket(Keyed, kind="pooled-ticket"):
    version: int = 0


class Ping(delta.Job, kind="pooled-ping"):
    n: int = 0


class TicketController(delta.Controller[Ticket]):
    async def work(self, resource: delta.Resource[Ticket]) -> None:
        pass


def declared(bouncer_dsn: str) -> str:
    return f"{bouncer_dsn} delta_pool_mode=transaction"


def server_sessions(bouncer_dsn: str) -> list[tuple[str, str, int, int]]:
    """Every server connection of the transaction pool, each pinned by an open transaction
    of its own: its plan_cache_mode, enable_seqscan, prepared statements, LISTENs."""
    conns = [psycopg.connect(bouncer_dsn) for _ in range(TRANSACTION_POOL_SIZE)]
    try:
        return [
            conn.execute(
                "SELECT current_setting('plan_cache_mode'), current_setting('enable_seqscan'),"
                " (SELECT count(*)::int FROM pg_prepared_statements),"
                " (SELECT count(*)::int FROM pg_listening_channels())"
            ).fetchone()  # type: ignore[misc]
            for conn in conns
        ]
    finally:
        for conn in conns:
            conn.close()


def test_an_undeclared_transaction_pooler_fails_as_a_database_error_naming_the_setting(
    dsn, transaction_bouncer
):
    """psycopg's automatic prepares collide across clients sharing a server connection."""
    through = transaction_bouncer.dsn(dsn)

    def alternate(one: delta.Client, two: delta.Client) -> None:
        for n in range(10):  # prepared from the 6th execution on, each as "_pg3_0"
            one.enqueue(Ping(n=n))
            two.enqueue(Ping(n=n))

    with (
        delta.Client.connect(through) as one,
        delta.Client.connect(through) as two,
        pytest.raises(delta.DatabaseError, match="delta_pool_mode=transaction") as failed,
    ):
        alternate(one, two)
    assert isinstance(failed.value.__cause__, psycopg.Error)
    assert "_pg3_" in str(failed.value)


async def test_declared_clients_share_server_connections_without_a_mixup(dsn, transaction_bouncer):
    through = declared(transaction_bouncer.dsn(dsn))
    clients = [await delta.AsyncClient.connect(through, max_size=2) for _ in range(3)]
    try:

        async def use(client: delta.AsyncClient, index: int) -> None:
            for n in range(15):
                await client.enqueue(Ping(n=n))
                await client.inform(Ticket(key=f"{index}-{n}"))
                assert await client.get(Ticket, f"{index}-{n}") is not None
            async with await psycopg.AsyncConnection.connect(
                transaction_bouncer.dsn(dsn), prepare_threshold=None
            ) as conn:
                for n in range(10):
                    await client.inform_tx(conn, Ticket(key=f"{index}-tx-{n}"))
                    await conn.commit()

        await asyncio.gather(*(use(client, index) for index, client in enumerate(clients)))
        page = await clients[0].list(Ticket, limit=1000)
        assert len(page.items) == 3 * 25
        assert len((await clients[0].list_jobs(Ping, limit=1000)).items) == 3 * 15
    finally:
        for client in clients:
            await client.close()
    for setting in server_sessions(transaction_bouncer.dsn(dsn)):
        assert setting == ("auto", "on", 0, 0)


async def test_a_worker_behind_a_transaction_pooler_polls_and_leaves_no_session_state(
    dsn, transaction_bouncer
):
    """No claim setting, prepared plan or LISTEN is left on any server connection."""
    through = declared(transaction_bouncer.dsn(dsn))
    app = delta.App(controllers=[TicketController()])
    async with (
        await delta.AsyncClient.connect(through) as client,
        running_worker(app, through, poll_interval=None) as worker,
    ):
        assert "listener" not in {h.name for h in worker.health()}
        await worker.wait_listening()  # nothing to wait for: it polls
        await client.inform_many([Ticket(key=f"t{n}") for n in range(30)])
        for n in range(10):
            await client.inform(Ticket(key=f"t{30 + n}"))  # one claim after another

        async def all_synced() -> bool:
            page = await client.list(Ticket, state=delta.State.SYNCED, limit=1000)
            return len(page.items) == 40

        await wait_until_async(all_synced, 20, "40 synced resources")
        assert worker.stats.claim_failures == 0
        assert worker.stats.claimed == 40
        sessions = server_sessions(transaction_bouncer.dsn(dsn))
    assert sessions == [("auto", "on", 0, 0)] * TRANSACTION_POOL_SIZE


async def test_a_listen_dsn_wakes_a_worker_behind_a_transaction_pooler(dsn, transaction_bouncer):
    """poll_interval=30: only the LISTEN on the direct connection can start it sooner."""
    started = asyncio.Event()

    async def mark(job: Ping) -> None:
        started.set()

    through = declared(transaction_bouncer.dsn(dsn))
    app = delta.App(jobs={Ping: mark})
    async with (
        await delta.AsyncClient.connect(through) as client,
        running_worker(app, through, poll_interval=30, listen_dsn=dsn) as worker,
    ):
        await worker.wait_listening()
        await wait_until_async(lambda: worker.stats.claims >= 1, 5, "the start-up claim")
        await client.enqueue(Ping())  # its commit NOTIFYs, through PgBouncer
        async with asyncio.timeout(10.0):
            await started.wait()


async def test_a_worker_through_a_session_pooler_listens_as_on_a_direct_connection(
    dsn, session_bouncer
):
    started = asyncio.Event()

    async def mark(job: Ping) -> None:
        started.set()

    through = session_bouncer.dsn(dsn)
    app = delta.App(jobs={Ping: mark})
    async with (
        await delta.AsyncClient.connect(through) as client,
        running_worker(app, through, poll_interval=30) as worker,
    ):
        await worker.wait_listening()
        await wait_until_async(lambda: worker.stats.claims >= 1, 5, "the start-up claim")
        await client.enqueue(Ping())
        async with asyncio.timeout(10.0):
            await started.wait()


async def test_a_leader_behind_a_transaction_pooler_is_elected_and_runs_its_duties(
    dsn, transaction_bouncer
):
    from delta_actors.leader.duties import Leader

    through = declared(transaction_bouncer.dsn(dsn))
    leader = Leader(delta.App(controllers=[TicketController()]), through, lease_ttl=3.0)
    await leader.start()
    try:
        await wait_until_async(lambda: leader.is_leader, 10, "the leader elected")
        await wait_until_async(
            lambda: any(h.name == "rescuer" and h.failures == 0 for h in leader.health()),
            10, "the rescuer's first pass",
        )  # fmt: skip
    finally:
        await leader.stop()
    assert server_sessions(transaction_bouncer.dsn(dsn)) == [("auto", "on", 0, 0)] * (
        TRANSACTION_POOL_SIZE
    )


def test_migrate_runs_through_a_transaction_pooler(empty_dsn, transaction_bouncer):
    """One transaction and a transaction-level lock: nothing it needs outlives it."""
    through = declared(transaction_bouncer.dsn(empty_dsn))
    first = CliRunner().invoke(main, ["migrate", "--dsn", through])
    assert first.exit_code == 0, first.output
    assert "applied 0001_" in first.output
    again = CliRunner().invoke(main, ["migrate", "--dsn", through])
    assert again.exit_code == 0, again.output
    assert "nothing to do" in again.output


def test_supervise_checks_its_listen_dsn_before_it_forks(dsn):
    from delta_actors.runtime.supervisor import Supervisor, check_database

    check_database(declared(dsn), dsn)  # a connection is all a listen DSN needs
    nowhere = "postgresql://nobody@/x?host=/nonexistent-socket-dir&port=1&connect_timeout=2"
    with pytest.raises(delta.DatabaseError, match="check the listen DSN: cannot use"):
        check_database(declared(dsn), nowhere)
    with pytest.raises(delta.ConfigError, match="LISTEN needs a session of its own"):
        Supervisor(delta.App(), declared(dsn), listen_dsn=declared(dsn))
