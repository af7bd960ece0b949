"""The worker's lifecycle: NOTIFY wake-ups, sync handlers off the loop, stopping on a deadline."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import psycopg
import pytest

import delta_actors as delta
from delta_actors.db.connection import component_conninfo
from tests.blackhole import Blackhole
from tests.integration.job_table import get_job, is_state, job_states
from tests.integration.workers import running_worker
from tests.roles import PASSWORD
from tests.waiting import wait_until, wait_until_async

AVAILABLE = delta.JobState.AVAILABLE
COMPLETED = delta.JobState.COMPLETED


class Note(delta.Job, kind="note"):
    n: int = 0


class Nap(delta.Job, kind="nap"):
    seconds: float = 0.4


async def test_notify_wakes_an_idle_worker_long_before_its_poll(dsn):
    """poll_interval=30: a job enqueued once the worker listens and idles runs long before."""
    started = asyncio.Event()

    async def mark(job: Note) -> None:
        started.set()

    app = delta.App(jobs={Note: mark})
    client = await delta.AsyncClient.connect(dsn)
    try:
        async with running_worker(app, dsn, poll_interval=30) as worker:
            await worker.wait_listening()
            # The claim made on start-up found nothing; only a notification can wake it now.
            await wait_until_async(lambda: worker.stats.claims >= 1, 5, "the start-up claim")
            claims_before = worker.stats.claims
            job = await client.enqueue(Note())
            # The poll is 30 s away: starting well within it proves the notification woke it
            # (10 s leaves room for a loaded machine).
            async with asyncio.timeout(10.0):
                await started.wait()
            assert worker.stats.claims > claims_before
            await wait_until_async(lambda: is_state(client, job.id, COMPLETED), 5)
    finally:
        await client.close()


async def test_notify_at_commit_of_a_transactional_enqueue_wakes_the_worker(dsn):
    """poll_interval=30: enqueue_tx wakes the worker when the caller commits."""
    started = asyncio.Event()

    async def mark(job: Note) -> None:
        started.set()

    app = delta.App(jobs={Note: mark})
    client = await delta.AsyncClient.connect(dsn)
    try:
        async with running_worker(app, dsn, poll_interval=30) as worker:
            await worker.wait_listening()
            await wait_until_async(lambda: worker.stats.claims >= 1, 5, "the start-up claim")
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                await conn.execute("SELECT txid_current()")  # the caller's own work first
                await client.enqueue_tx(conn, Note())
                await conn.commit()
            async with asyncio.timeout(2.0):
                await started.wait()
    finally:
        await client.close()


async def test_sync_handlers_run_in_parallel_off_the_event_loop(dsn):
    """Five 0.4 s time.sleep handlers, five slots: they overlap on threads; the loop turns."""
    spans: list[tuple[float, float, int]] = []
    lock = threading.Lock()

    def nap(job: Nap) -> None:
        begin = time.monotonic()
        time.sleep(job.seconds)
        with lock:
            spans.append((begin, time.monotonic(), threading.get_ident()))

    app = delta.App(jobs={Nap: nap})
    client = await delta.AsyncClient.connect(dsn)
    loop_gaps: list[float] = []
    try:
        await client.enqueue_many([Nap() for _ in range(5)])
        async with running_worker(app, dsn, max_workers=5):

            async def done() -> bool:
                before = time.monotonic()
                await asyncio.sleep(0.01)
                loop_gaps.append(time.monotonic() - before)
                return job_states(dsn) == {"completed": 5}

            await wait_until_async(done, 5, "five naps completed")
        assert len(spans) == 5
        assert max(end for _, end, _ in spans) - min(begin for begin, _, _ in spans) < 1.2
        assert len({ident for _, _, ident in spans}) == 5
        assert threading.main_thread().ident not in {ident for _, _, ident in spans}
        assert max(loop_gaps) < 0.2, "the event loop was blocked by a sync handler"
    finally:
        await client.close()


async def test_stop_hands_back_unfinished_jobs_and_lets_short_ones_finish(dsn):
    """stop(timeout=0.5): back in < 2 s, short job completed, long async+sync ones handed back."""
    short_started = asyncio.Event()
    sync_finished = threading.Event()

    async def run(job: Note) -> None:
        if job.n == 0:
            short_started.set()
            await asyncio.sleep(0.2)
        else:
            await asyncio.sleep(30)

    def block(job: Nap) -> None:
        time.sleep(job.seconds)
        sync_finished.set()

    app = delta.App(jobs={Note: run, Nap: block})
    client = await delta.AsyncClient.connect(dsn)
    try:
        long = await client.enqueue(Note(n=1))
        blocking = await client.enqueue(Nap(seconds=1.2))
        worker = delta.Worker(app, dsn, poll_interval=0.1, retry_policy=lambda attempt: 0.0)
        await worker.start()
        try:
            await wait_until_async(
                lambda: job_states(dsn) == {"running": 2}, 5, "two long jobs running"
            )
            short = await client.enqueue(Note(n=0))
            async with asyncio.timeout(5):
                await short_started.wait()
            began = time.monotonic()
            await worker.stop(timeout=0.5)
            took = time.monotonic() - began
        finally:
            await worker.stop()
        assert took < 2.0
        rows = {job.id: await get_job(client, job.id) for job in (short, long, blocking)}
        assert (rows[short.id].state, rows[short.id].attempt) == (COMPLETED, 1)
        for job in (long, blocking):
            row = rows[job.id]
            assert (row.state, row.attempt, row.claimed_by) == (AVAILABLE, 0, None)
            assert row.errors == []
            assert row.finalized_at is None
        assert worker.stats.handed_back == 2
        assert worker.stats.failed == 0
        # The sync handler ran on past the deadline; its late end changes nothing.
        wait_until(sync_finished.is_set, 5, "the sync handler to return")
        late = await get_job(client, blocking.id)
        assert (late.state, late.attempt, late.claimed_by) == (AVAILABLE, 0, None)
    finally:
        await client.close()


async def test_handed_back_jobs_run_on_another_worker(dsn):
    """A job handed back at stop is taken and completed by the next worker, at attempt 1."""
    second_run = asyncio.Event()

    async def hang_first(job: Note) -> None:
        if not second_run.is_set():
            await asyncio.sleep(30)

    app = delta.App(jobs={Note: hang_first})
    client = await delta.AsyncClient.connect(dsn)
    try:
        job = await client.enqueue(Note())
        async with running_worker(app, dsn, stop_timeout=0.2):
            await wait_until_async(lambda: is_state(client, job.id, delta.JobState.RUNNING), 5)
        assert (await get_job(client, job.id)).state is AVAILABLE
        second_run.set()
        async with running_worker(app, dsn):
            await wait_until_async(lambda: is_state(client, job.id, COMPLETED), 5)
        row = await get_job(client, job.id)
        assert row.attempt == 1
        assert row.errors == []
    finally:
        await client.close()


async def test_stop_is_idempotent_and_safe_before_start(dsn):
    """stop() before start() and a second stop() return at once and change nothing."""

    async def noop(job: Note) -> None:
        return None

    app = delta.App(jobs={Note: noop})
    never_started = delta.Worker(app, dsn)
    await never_started.stop()
    worker = delta.Worker(app, dsn, poll_interval=0.1)
    await worker.start()
    await worker.stop(timeout=1)
    began = time.monotonic()
    await worker.stop(timeout=1)
    assert time.monotonic() - began < 0.1
    assert job_states(dsn) == {}


async def test_stop_is_bounded_by_a_handler_that_swallows_its_cancellation(dsn):
    """A handler that ignores cancellation cannot hold stop() for long; its claim goes back."""
    entered = asyncio.Event()

    async def stubborn(job: Note) -> None:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(30)

    app = delta.App(jobs={Note: stubborn})
    client = await delta.AsyncClient.connect(dsn)
    try:
        job = await client.enqueue(Note())
        worker = delta.Worker(app, dsn, poll_interval=0.1)
        await worker.start()
        try:
            async with asyncio.timeout(5):
                await entered.wait()
            began = time.monotonic()
            await worker.stop(timeout=0.2)
            assert time.monotonic() - began < 8.0
        finally:
            await worker.stop()
        row = await get_job(client, job.id)
        assert (row.state, row.attempt, row.claimed_by) == (AVAILABLE, 0, None)
        assert worker.stats.handed_back == 1
    finally:
        await client.close()


async def test_a_worker_cut_off_from_postgres_cancels_its_jobs_and_fails(dsn):
    """No heartbeat gets through for most of the rescue TTL: the worker gives its jobs up.

    Past the TTL the leader would hand the claims to another actor; the worker must not
    be running them then. It cancels them and fails with ActorLostError.
    """
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def nap(job: Nap) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    app = delta.App(jobs={Nap: nap})
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    admin = psycopg.conninfo.make_conninfo(dsn, dbname="postgres")
    worker = delta.Worker(app, dsn, heartbeat_interval=0.2, rescue_ttl=3.0, poll_interval=0.2)
    await worker.start()
    try:
        async with await delta.AsyncClient.connect(dsn) as client:
            await client.enqueue(Nap())
        await asyncio.wait_for(started.wait(), 10)
        async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
            await conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')
            try:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (dbname,),
                )
                with pytest.raises(delta.ActorLostError, match="could not heartbeat"):
                    await asyncio.wait_for(worker.wait_stopped(), 15)
                assert cancelled.is_set()
            finally:
                await conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
    finally:
        await worker.stop(timeout=1)


async def test_a_worker_behind_a_silent_network_fences_itself_within_the_ttl(dsn):
    """PostgreSQL stops answering (a partition): the works are cancelled before the TTL.

    Not a refused connection but silence: psycopg answers the cancellation of a query by
    cancelling it on the server and waiting, seconds each, and a heartbeat that waited
    for that fenced the worker long after the leader could have rescued its claims.
    """
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def nap(job: Nap) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    app = delta.App(jobs={Nap: nap})
    async with Blackhole(dsn) as hole:
        worker = delta.Worker(
            app, hole.dsn, heartbeat_interval=0.2, rescue_ttl=3.0, poll_interval=0.2
        )
        await worker.start()
        try:
            async with await delta.AsyncClient.connect(dsn) as client:
                await client.enqueue(Nap())
            await asyncio.wait_for(started.wait(), 10)
            hole.swallow()
            cut_at = time.monotonic()
            await asyncio.wait_for(cancelled.wait(), 10)
            assert time.monotonic() - cut_at < 3.0  # the rescue TTL
            hole.release()  # healed: what the worker's components wait for comes back
            with pytest.raises(delta.ActorLostError, match="could not heartbeat"):
                await asyncio.wait_for(worker.wait_stopped(), 30)
        finally:
            await worker.stop(timeout=1)


async def test_component_connections_find_a_silent_server_dead_within_seconds(dsn):
    """A component's TCP connection probes a silent server (keepalives) within seconds.

    When the server ends a session while the network is down, its goodbye is lost; a
    component then waits for a reply on that connection for the system's two hours.
    """
    async with (
        Blackhole(dsn) as hole,
        await psycopg.AsyncConnection.connect(component_conninfo(hole.dsn, "delta-test")) as conn,
    ):
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            interval = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
            count = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
        finally:
            sock.close()
        assert idle + interval * count <= 15, (idle, interval, count)
        # The DSN's own choice wins.
        given = component_conninfo(hole.dsn + " keepalives_idle=30", "delta-test")
        assert psycopg.conninfo.conninfo_to_dict(given)["keepalives_idle"] == "30"


async def test_a_stop_that_cannot_hand_its_claims_back_keeps_its_row_for_rescue(role):
    """The hand back fails (here: the role lost UPDATE on delta_job): the worker leaves
    its actor row, so rescue finds it by its heartbeat's age and returns the claim."""
    started = asyncio.Event()

    async def nap(job: Nap) -> None:
        started.set()
        await asyncio.sleep(60)

    worker = delta.Worker(delta.App(jobs={Nap: nap}), role.dsn(PASSWORD), poll_interval=0.2)
    await worker.start()
    try:
        async with await delta.AsyncClient.connect(role.db_dsn) as client:
            job = await client.enqueue(Nap())
        await asyncio.wait_for(started.wait(), 10)
        with psycopg.connect(role.db_dsn, autocommit=True) as conn:
            conn.execute(f'REVOKE UPDATE ON delta_job FROM "{role.name}"')
        await worker.stop(timeout=0)
        with psycopg.connect(role.db_dsn, autocommit=True) as conn:
            actor = conn.execute(
                "SELECT id FROM delta_actor WHERE id = %s", (worker.actor_id,)
            ).fetchone()
            claim = conn.execute(
                "SELECT state::text, claimed_by FROM delta_job WHERE id = %s", (job.id,)
            ).fetchone()
        assert actor is not None  # kept: without it only the rarer look for orphans rescues
        assert claim == ("running", worker.actor_id)
    finally:
        await worker.stop(timeout=0)
