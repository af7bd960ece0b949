"""Claim floors (queue/floors.py): claims read from them, nothing below them is lost."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString

import psycopg
from psycopg_pool import AsyncConnectionPool

import delta_actors as delta
from delta_actors.db import job_sql
from delta_actors.model.limits import Limit
from delta_actors.queue.claimer import Claimer
from delta_actors.queue.floors import UNLIMITED, Floors, Sweeper
from tests.integration.workers import running_worker
from tests.objects import Keyed
from tests.waiting import wait_until_async


class Ping(delta.Job, kind="ping"):
    n: int


class SlowApi(delta.Job, kind="slow-api", concurrency=3):
    n: int


class Note(Keyed, kind="note"):
    body: str


async def _ping_done(client: delta.AsyncClient) -> bool:
    page = await client.list_jobs(kind="ping", state=delta.JobState.COMPLETED)
    return len(page.items) == 1


def claim_row(priority: int, epoch: float) -> tuple[Any, ...]:
    """A row as the claim statements return it, of what the floors read: the priority
    (column 6) and the scheduled_at in seconds since the epoch (7)."""
    return (1, "fx-job", b"", 1, 25, None, priority, epoch, None, "(0,1)")


def _claim_params() -> dict[str, object]:
    return {"namespace": "default", "limit": 10, "actor": 1}


async def test_a_job_committed_below_the_floor_is_found_by_the_sweep(dsn):
    """A job whose transaction began before the claims moved past it (and committed
    after) lies below the floor: the claims do not read it, the next sweep finds it and
    the claim after that takes it."""
    client = await delta.AsyncClient.connect(dsn)
    floors = Floors(margin=0.0)
    claimer = Claimer(dsn, "default", floors=floors)
    pool = AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False)
    await pool.open()
    sweeper = Sweeper(pool, "default", floors, list, lambda: None)
    try:
        async with await psycopg.AsyncConnection.connect(dsn) as late:
            await client.enqueue_tx(late, Ping(n=0))  # scheduled_at: its transaction's start
            await client.enqueue(Ping(n=1))
            assert len(await claimer.claim(_claim_params())) == 1  # n=1; the floor passes n=0
            await late.commit()
        assert await claimer.claim(_claim_params()) == []
        assert await sweeper.sweep() == 1
        (row,) = await claimer.claim(_claim_params())
        assert row[1] == "ping"
        assert await sweeper.sweep() == 0
    finally:
        await claimer.close()
        await pool.close()
        await client.close()


def _claim_buffers(
    conn: psycopg.Connection,
    floors: list[object],
    claim: LiteralString = job_sql.CLAIM_JOBS,
    **params: object,
) -> int:
    """Shared buffers the claim's read of the claim index (and the rows it points at)
    touches with `floors` (the claim run and rolled back)."""
    with conn.transaction(force_rollback=True):
        rows = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + claim,
            {**_claim_params(), **params, "floors": floors},
        ).fetchall()
    plan = "\n".join(row[0] for row in rows)
    match = re.search(r"using delta_job_claim_idx.*?Buffers: shared hit=(\d+)", plan, re.S)
    assert match, plan
    return int(match.group(1))


async def test_claims_do_not_read_dead_row_versions_behind_a_held_snapshot(dsn):
    """While a REPEATABLE READ snapshot is held, the entries of claimed rows stay in the
    claim index; a claim from the floors reads none of them, one from the start all."""
    client = await delta.AsyncClient.connect(dsn)
    claimer = Claimer(dsn, "default")
    try:
        with psycopg.connect(dsn) as holder, psycopg.connect(dsn, autocommit=True) as conn:
            holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT count(*) FROM delta_job").fetchone()
            await client.enqueue_many([Ping(n=i) for i in range(5000)])
            taken = 0
            while rows := await claimer.claim({**_claim_params(), "limit": 500}):
                taken += len(rows)
                conn.execute(
                    "UPDATE delta_job SET state = 'completed', finalized_at = now(),"
                    " claimed_by = NULL WHERE id = ANY(%s)",
                    ([row[0] for row in rows],),
                )
            assert taken == 5000
            await asyncio.sleep(1.1)  # past the floor's margin, then one more claim
            await client.enqueue(Ping(n=-2))
            assert len(await claimer.claim(_claim_params())) == 1
            await client.enqueue(Ping(n=-1))
            from_floors = _claim_buffers(conn, list(claimer.floors.of()))
            from_start = _claim_buffers(conn, list(Floors().of()))
            holder.rollback()
        # Pages, not rows: 5,000 dead versions lie on about a hundred heap pages.
        assert from_floors < 20, from_floors
        assert from_start > 60, from_start
    finally:
        await claimer.close()
        await client.close()


async def test_a_limited_kinds_backlog_costs_the_other_kinds_claims_nothing(dsn):
    """Jobs of a kind at its limit wait in the claim index ahead of the other kinds'.
    Once the other kinds' claim took a job queued after that backlog, its floors lie past
    it: its next claims read none of the backlog, where one from the start reads it all
    (a kind at its limit holds no other kind up)."""
    client = await delta.AsyncClient.connect(dsn)
    claimer = Claimer(dsn, "default", floors=Floors(margin=0.0))
    limits = {"slow-api": Limit(concurrency=3)}
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            await client.enqueue_many([SlowApi(n=i) for i in range(5000)])
            await client.enqueue_many([Ping(n=i) for i in range(5)])
            rows = await claimer.claim_limited(_claim_params(), limits)
            assert sorted(row[1] for row in rows) == ["ping"] * 5 + ["slow-api"] * 3
            await client.enqueue(Ping(n=5))
            params = {"claim": job_sql.CLAIM_UNLIMITED_JOBS, "limited": list(limits)}
            from_floors = _claim_buffers(conn, list(claimer.floors.of(UNLIMITED)), **params)
            from_start = _claim_buffers(conn, list(Floors().of()), **params)
            # Its limit reached (3 running), the limited kind takes nothing; the job queued
            # after its backlog is taken.
            rows = await claimer.claim_limited(_claim_params(), limits)
            assert [row[1] for row in rows] == ["ping"]
        assert from_floors < 25, (from_floors, from_start)
        assert from_start > 60, (from_floors, from_start)
    finally:
        await claimer.close()
        await client.close()


async def test_a_follow_up_work_below_the_floor_runs_when_its_previous_work_ends(dsn):
    """A work queued while its resource's work runs is skipped by claims (coalescing),
    which then move past it; once the running work's result is written, the floor moves
    back and the follow-up runs at once, without waiting for a sweep."""
    release = asyncio.Event()
    runs: list[str] = []

    class NoteController(delta.Controller[Note]):
        async def work(self, resource: delta.Resource[Note]) -> None:
            runs.append(resource.object.body)
            if resource.object.body == "v1":
                await release.wait()

    app = delta.App(controllers=[NoteController()], jobs={Ping: lambda job: None})
    client = await delta.AsyncClient.connect(dsn, app=app)
    try:
        async with running_worker(app, dsn, floor_margin=0.2, sweep_interval=3600.0):
            await client.inform(Note(key="n1", body="v1"))
            await wait_until_async(lambda: runs == ["v1"], 10, "the first work to start")
            await client.inform(Note(key="n1", body="v2"))  # queued; its resource is busy
            await asyncio.sleep(0.3)  # more than the margin: then the floor passes it
            await client.enqueue(Ping(n=1))

            await wait_until_async(lambda: _ping_done(client), 10, "the ping to complete")
            assert runs == ["v1"]
            release.set()
            await wait_until_async(lambda: runs == ["v1", "v2"], 5, "the follow-up work")
    finally:
        await client.close()


async def test_a_work_without_a_follow_up_leaves_the_floors_where_the_claims_put_them(dsn):
    """A work whose resource got no new work while it ran moves no floor back when its
    result is written: the claims after it do not read again what was claimed meanwhile
    (a held snapshot keeps all of it as dead row versions)."""
    release = asyncio.Event()
    runs: list[str] = []

    class NoteController(delta.Controller[Note]):
        async def work(self, resource: delta.Resource[Note]) -> None:
            runs.append(resource.object.body)
            await release.wait()

    app = delta.App(controllers=[NoteController()], jobs={Ping: lambda job: None})
    client = await delta.AsyncClient.connect(dsn, app=app)
    try:
        async with running_worker(app, dsn, floor_margin=0.2, sweep_interval=3600.0) as worker:
            await client.inform(Note(key="n1", body="v1"))
            await wait_until_async(lambda: runs == ["v1"], 10, "the work to start")
            await asyncio.sleep(0.3)  # more than the margin: the next claim passes it
            await client.enqueue(Ping(n=1))

            await wait_until_async(lambda: _ping_done(client), 10, "the ping to complete")
            floors = list(worker._floors.of())
            release.set()

            async def synced() -> bool:
                found = await client.get(Note, "n1")
                return found is not None and found.state == delta.State.SYNCED

            await wait_until_async(synced, 10, "the work's result")
            after = worker._floors.of()
            assert all(now >= before for now, before in zip(after, floors, strict=True))
    finally:
        await client.close()


async def test_the_sweep_survives_its_connection_being_killed(dsn):
    """A sweep whose connection is terminated fails, is logged and counted; the loop goes
    on and the next sweep succeeds on a new connection."""
    floors = Floors()
    pool = AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False)
    await pool.open()
    sweeper = Sweeper(pool, "default", floors, list, lambda: None, interval=0.05)
    task = asyncio.create_task(sweeper.run(), name="test:sweep")
    try:
        await wait_until_async(lambda: sweeper.sweeps >= 1, 10, "a first sweep")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        await wait_until_async(lambda: sweeper.failures >= 1, 10, "the sweep to fail")
        swept = sweeper.sweeps
        await wait_until_async(lambda: sweeper.sweeps > swept, 10, "a sweep after the kill")
        assert not task.done()
        assert sweeper.progress.snapshot().failures == 0  # progress since the failure
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.close()


async def test_the_sweep_keeps_an_idle_producers_floors_near_the_present(dsn):
    """A producer that claims nothing (another took every job) still has its floors
    raised: by each sweep, to the oldest claimable job, or with none to the present."""
    client = await delta.AsyncClient.connect(dsn)
    floors = Floors(margin=0.0)
    pool = AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False)
    await pool.open()
    sweeper = Sweeper(pool, "default", floors, list, lambda: None)
    try:
        start = floors.of()[0]
        assert await sweeper.sweep() == 0
        emptied = floors.of()
        assert all(floor > start for floor in emptied)
        await client.enqueue(Ping(n=1), priority=2)
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT scheduled_at FROM delta_job")
            (queued_at,) = await cur.fetchone()
        assert await sweeper.sweep() == 0  # above: the floor goes up to it
        assert floors.of()[1] == queued_at
        assert floors.of()[0] >= emptied[0]
    finally:
        await pool.close()
        await client.close()


def test_the_claims_floor_parameter_reads_as_the_floors_and_follows_them(dsn):
    """The claims take the floors as an array literal, kept from claim to claim: it reads
    in PostgreSQL as the floors themselves, and is made again once a floor moves, by a
    claim, a rewind or a sweep; a claim that moves nothing keeps it."""
    floors = Floors(margin=0.0)
    start = floors.of()[0]
    at = datetime(2026, 12, 2, 5, 6, 7, 891011, tzinfo=UTC)
    with psycopg.connect(dsn) as conn:

        def read(shape: str = UNLIMITED) -> list[datetime]:
            row = conn.execute("SELECT %s::timestamptz[]", (floors.literal(shape),)).fetchone()
            assert row is not None
            return list(row[0])

        def taken(priority: int, at: datetime) -> tuple[Any, ...]:
            """A claim's row of `priority` scheduled `at`: what the floors read of it."""
            row = conn.execute("SELECT date_part('epoch', %s::timestamptz)", (at,)).fetchone()
            assert row is not None
            return claim_row(priority, float(row[0]))

        assert read() == [start] * 4
        kept = floors.literal()
        floors.claimed(UNLIMITED, [])
        assert floors.literal() is kept
        floors.claimed(UNLIMITED, [taken(2, at + timedelta(seconds=3)), taken(2, at)])
        assert read() == [start, at, start, start]  # the oldest, to the microsecond
        kept = floors.literal()
        floors.claimed(UNLIMITED, [taken(2, at - timedelta(seconds=1))])  # never down
        assert read() == [start, at, start, start]
        assert floors.literal() is kept
        mixed = Floors(margin=0.0)  # a claim across priorities raises each to its oldest
        later = at + timedelta(minutes=5)
        mixed.claimed(UNLIMITED, [taken(3, later), taken(1, later), taken(3, at), taken(1, at)])
        assert mixed.of() == [at, start, at, start]
        floors.rewind(UNLIMITED, 2, at - timedelta(hours=1))
        assert read() == [start, at - timedelta(hours=1), start, start]
        floors.swept(UNLIMITED, 4, None, at)
        assert read() == [start, at - timedelta(hours=1), start, at]
        assert read("fx-limited") == [start] * 4  # each shape has its own


def test_a_claims_epoch_gives_back_the_stored_time_to_the_microsecond(dsn):
    """The claims return scheduled_at as seconds since the epoch (a float8), and the floors
    make it a time again (Floors.claimed): exactly the stored time, for times from 1834 to
    2106 (an epoch within 2^32 seconds of 1970)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT t, date_part('epoch', t) FROM ("
            " SELECT timestamptz '1970-01-01 00:00:00+00' + make_interval(secs => s)"
            "        + make_interval(secs => s * 7919 % 1000000 / 1000000.0) AS t"
            " FROM generate_series(-4294967295, 4294967295, 858993) AS s) AS times"
        ).fetchall()
    assert len(rows) == 10_001
    made = []
    for _, epoch in rows:
        floors = Floors(margin=0.0)
        floors.claimed(UNLIMITED, [claim_row(1, epoch)])
        made.append(floors.of()[0])
    assert made == [t for t, _ in rows]


def test_a_claims_raise_is_made_later_yet_every_look_sees_it_made_first():
    """A claim's raise waits for settle() (the worker settles once the runs started), but
    every read and every other change settles first: a rewind or a sweep after a claim
    acts on the floors that claim raised, as if the raise had been made at once."""
    at = datetime(2026, 12, 3, 15, 0, 0, 123456, tzinfo=UTC)
    before = at - timedelta(hours=1)

    rewound = Floors(margin=0.0)
    rewound.claimed(UNLIMITED, [claim_row(1, at.timestamp())])
    rewound.rewind(UNLIMITED, 1, before)  # a work claimed earlier read from `before`
    assert rewound.of()[0] == before  # not raised back past it afterwards

    swept = Floors(margin=0.0)
    swept.claimed(UNLIMITED, [claim_row(2, at.timestamp())])
    assert swept.swept(UNLIMITED, 2, before, at) is True  # below the claim's raise: down
    assert swept.of()[1] == before

    settled = Floors(margin=0.0)
    start = settled.of()[0]
    settled.claimed(UNLIMITED, [claim_row(3, at.timestamp())])
    settled.settle()
    assert settled.of() == [start, start, at, start]
    assert settled.literal() == "{" + ",".join(f.isoformat() for f in settled.of()) + "}"
    read_first = Floors(margin=0.0)
    read_first.claimed(UNLIMITED, [claim_row(3, at.timestamp())])
    assert read_first.literal() == settled.literal()  # the claims' parameter, too
    assert read_first.lowest() == settled.lowest()
