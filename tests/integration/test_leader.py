"""The leader's election and duties, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Generator
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg_pool import AsyncConnectionPool

import delta_actors as delta
from delta_actors.db import job_sql, leader_sql, resource_sql
from delta_actors.db.connection import Rows, Statement, drive_async
from delta_actors.leader.election import Elector
from delta_actors.leader.maintenance import Cleaner, Expirer, Rescuer
from delta_actors.leader.rescue import rescue_actors
from delta_actors.queue.floors import Floors
from delta_actors.resources.informers import InformerScheduler
from tests.waiting import wait_until_async

NO_FLOORS = {"floors": Floors().of()}  # the claim reads every priority from the start

NO_EVENTS = {"events": 0, "subscribers": 0, "informer_runs": 0}
FAST = {"ttl": 1.5, "renew_interval": 0.3, "elect_interval": 0.2, "margin": 0.3}


class Elected:
    """Records what an elector's callbacks saw."""

    def __init__(self) -> None:
        self.terms: list[int] = []
        self.lost = 0

    async def elected(self, term: int) -> None:
        self.terms.append(term)

    async def on_lost(self) -> None:
        self.lost += 1


def make_elector(dsn: str, actor_id: int, **overrides: float) -> tuple[Elector, Elected]:
    seen = Elected()
    options = {**FAST, **overrides}
    elector = Elector(dsn, actor_id, on_elected=seen.elected, on_lost=seen.on_lost, **options)
    return elector, seen


async def test_competing_electors_have_one_leader_at_a_time(dsn):
    """Three candidates: exactly one leads at every sampled moment, also across expiries."""
    electors = [make_elector(dsn, actor_id)[0] for actor_id in (1, 2, 3)]
    tasks = [asyncio.create_task(e.run()) for e in electors]
    try:
        await wait_until_async(lambda: _true(any(e.is_leader for e in electors)), 5, "a leader")
        leader = next(e for e in electors if e.is_leader)
        # Crash the leader's session: its lease must expire before anyone else leads.
        await execute(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE '%%delta_leader%%' "
            "AND pid <> pg_backend_pid()",
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 4
        leaders_seen = set()
        while loop.time() < deadline:
            current = [e.actor_id for e in electors if e.is_leader]
            assert len(current) <= 1, f"two leaders at once: {current}"
            leaders_seen.update(current)
            await asyncio.sleep(0.01)
        assert leaders_seen, "nobody led after the crash"
        assert leader.term is None or leader.is_leader or leaders_seen
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def execute(dsn: str, statement: str) -> None:
    """Run one statement on a connection of its own, as another session would."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        await admin.execute(statement)  # type: ignore[arg-type]


async def _true(value: object) -> bool:
    return bool(value)


async def test_clean_resignation_hands_over_at_once(dsn, caplog):
    """A leader that stops resigns, without a warning, and wakes a candidate at once."""
    first, first_seen = make_elector(
        dsn, 1, elect_interval=5.0, renew_interval=1.0, ttl=15, margin=2
    )
    second, second_seen = make_elector(
        dsn, 2, elect_interval=5.0, renew_interval=1.0, ttl=15, margin=2
    )
    first_task = asyncio.create_task(first.run())
    await wait_until_async(lambda: _true(first.is_leader), 5, "the first leader")
    second_task = asyncio.create_task(second.run())
    try:
        await asyncio.sleep(0.5)  # the second is a candidate, sleeping up to 5 s
        assert not second.is_leader
        loop = asyncio.get_running_loop()
        resigned_at = loop.time()
        caplog.set_level(logging.INFO, logger="delta_actors.leader.election")
        first_task.cancel()
        await asyncio.gather(first_task, return_exceptions=True)
        await wait_until_async(lambda: _true(second.is_leader), 2, "the hand-over")
        assert loop.time() - resigned_at < 1.0
        assert second_seen.terms == [first_seen.terms[0] + 1]
        assert first_seen.lost == 1
        stopping = [r for r in caplog.records if r.name == "delta_actors.leader.election"]
        assert any("resigned leadership" in r.getMessage() for r in stopping)
        assert all(r.levelno < logging.WARNING for r in stopping), "a clean stop warned"
    finally:
        second_task.cancel()
        await asyncio.gather(second_task, return_exceptions=True)


async def test_lease_is_not_trusted_past_its_deadline(dsn):
    """A leader that cannot renew (its renewal never arrives) stops leading at its deadline."""
    elector, seen = make_elector(dsn, 1)
    task = asyncio.create_task(elector.run())
    try:
        await wait_until_async(lambda: _true(elector.is_leader), 5, "leadership")
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
            # Another actor takes the lease over: the renewal matches no row.
            await admin.execute(
                "UPDATE delta_leader SET actor_id = 99, term = term + 1, "
                "expires_at = now() + interval '1 minute'"
            )
        await wait_until_async(lambda: _true(not elector.is_leader), 3, "the loss")
        assert seen.lost >= 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_renewal_that_gets_no_answer_loses_the_lease_at_its_deadline(dsn):
    """A renewal the server does not answer (here: another session locks the lease row;
    a one-way cut does the same) ends the leader's duties at the trust deadline, while
    the statement is still waiting; once the row is free the elector leads again."""
    elector, seen = make_elector(dsn, 1)
    task = asyncio.create_task(elector.run())
    try:
        await wait_until_async(lambda: _true(elector.is_leader), 5, "leadership")
        async with await psycopg.AsyncConnection.connect(dsn) as blocker:
            await blocker.execute("SELECT 1 FROM delta_leader FOR UPDATE")
            # Held for three times the lease: before, the renewal waited all that time
            # and on_lost came only after it.
            await wait_until_async(lambda: _true(seen.lost == 1), 3 * FAST["ttl"], "the loss")
            assert not elector.is_leader
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as look:

                async def renewal_gone() -> bool:  # cancelled, not left waiting
                    cur = await look.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND application_name = 'delta-lease'"
                    )
                    return await cur.fetchone() == (0,)

                await wait_until_async(renewal_gone, 5, "the renewal cancelled")
            await blocker.rollback()
        await wait_until_async(lambda: _true(len(seen.terms) == 2), 10, "leading again")
        assert seen.terms[1] > seen.terms[0]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class Listing(delta.Object, kind="listing"):
    key: str
    created: datetime | None = None

    def id(self) -> str:
        return self.key

    def created_at(self) -> datetime | None:
        return self.created


class ListingController(delta.Controller[Listing]):
    inform_interval = 3600.0
    tombstones = True
    fail_after: int | None = None
    objects: list[Listing] = []  # noqa: RUF012 (set per test)
    seen_options: list[delta.InformOptions] = []  # noqa: RUF012

    async def work(self, resource: delta.Resource[Listing]) -> None:
        return None

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Listing]:
        type(self).seen_options.append(options)
        for index, obj in enumerate(self.objects):
            if self.fail_after is not None and index == self.fail_after:
                raise RuntimeError("the external system went away")
            yield obj


async def _lead(dsn: str, actor_id: int = 1) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            leader_sql.ATTEMPT_ELECTION, {"actor": actor_id, "host": "test", "pid": 1, "ttl": 60}
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def _informer_row(dsn: str) -> tuple[object, ...]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT cursor, last_error, runs, failures, objects FROM delta_informer "
            "WHERE kind = 'listing'"
        )
        row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def test_informer_cursor_does_not_advance_when_it_raises(dsn):
    """An informer failing midway keeps its cursor; what it listed is stored; a clean run
    then advances the cursor to the newest created_at."""
    created = datetime(2026, 1, 1, tzinfo=UTC)
    ListingController.objects = [
        Listing(key=f"k{i}", created=created + timedelta(minutes=i)) for i in range(5)
    ]
    ListingController.fail_after = 3
    ListingController.seen_options = []
    app = delta.App(controllers=[ListingController()])
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        informers = InformerScheduler(app, pool)
        term = await _lead(dsn)
        async with pool.connection() as conn:
            await conn.execute(leader_sql.ADD_INFORMERS, (["listing"],))
        result = await informers.run_informer("listing", term, 1)
        assert result["error"] == "the external system went away"
        cursor, error, runs, failures, _ = await _informer_row(dsn)
        assert cursor is None and runs == 0 and failures == 1
        assert "went away" in str(error)
        async with delta.AsyncClient(pool) as client:
            assert await client.get(Listing, "k2") is not None  # written before the failure
        async with pool.connection() as conn:
            await conn.execute("UPDATE delta_informer SET next_run_at = now()")
        ListingController.fail_after = None
        result = await informers.run_informer("listing", term, 1)
        assert result == {
            "kind": "listing",
            "ran": True,
            "full": True,
            "objects": 5,
            "tombstoned": 0,
        }
        cursor, error, runs, failures, _ = await _informer_row(dsn)
        assert cursor == created + timedelta(minutes=4)
        assert error is None and runs == 1
        assert [o.after for o in ListingController.seen_options] == [None, None]
        assert all(o.full for o in ListingController.seen_options)


async def test_full_listing_tombstones_unlisted_resources(dsn):
    """After a full listing, resources the listing did not name are marked deleted."""
    ListingController.objects = [Listing(key="kept")]
    ListingController.fail_after = None
    app = delta.App(controllers=[ListingController()])
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        client = delta.AsyncClient(pool)
        await client.inform_many([Listing(key="kept"), Listing(key="gone")])
        async with pool.connection() as conn:
            await conn.execute("UPDATE delta_resource SET updated_at = now() - interval '1 minute'")
            await conn.execute(leader_sql.ADD_INFORMERS, (["listing"],))
        term = await _lead(dsn)
        result = await InformerScheduler(app, pool).run_informer("listing", term, 1)
        assert result["tombstoned"] == 1
        gone = await client.get(Listing, "gone")
        kept = await client.get(Listing, "kept")
        assert gone is not None and gone.state is delta.State.DELETED
        assert kept is not None and kept.state is not delta.State.DELETED


async def test_stale_leader_cannot_run_informers_or_advance_cursors(dsn):
    """A term that no longer holds the lease starts nothing, and its cursor write is fenced."""
    ListingController.objects = [Listing(key="x")]
    app = delta.App(controllers=[ListingController()])
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        old_term = await _lead(dsn, actor_id=1)
        async with pool.connection() as conn:
            await conn.execute(leader_sql.ADD_INFORMERS, (["listing"],))
            await conn.execute("UPDATE delta_leader SET expires_at = now() - interval '1 s'")
        new_term = await _lead(dsn, actor_id=2)
        assert new_term == old_term + 1
        result = await InformerScheduler(app, pool).run_informer("listing", old_term, 1)
        assert result == {"kind": "listing", "ran": False}
        async with pool.connection() as conn:
            cur = await conn.execute(
                leader_sql.FINISH_INFORMER,
                {"kind": "listing", "term": old_term, "actor": 1, "cursor": datetime.now(UTC),
                 "objects": 1, "next_in": 1.0, "full": False, "run": None},
            )  # fmt: skip
            assert cur.rowcount == 0
            cur = await conn.execute(
                resource_sql.TOMBSTONE_UNLISTED,
                {"kind": "listing", "term": old_term, "actor": 1,
                 "started": datetime.now(UTC), "listed": [], "only_listed": False,
                 "finalize": False, "reason": "tombstoned"},
            )  # fmt: skip
            assert cur.rowcount == 0
        cursor, *_ = await _informer_row(dsn)
        assert cursor is None


class Plain(delta.Job, kind="plain"):
    n: int = 0


async def test_rescue_returns_dead_actors_claims_but_not_fresh_results(dsn):
    """Claims of an actor whose heartbeat expired go back to work, counted; a claim whose
    result was written meanwhile is left alone."""
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        client = delta.AsyncClient(pool)
        jobs = await client.enqueue_many([Plain(n=i) for i in range(3)])
        async with pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO delta_actor (host, pid, namespace, role, heartbeat_at) "
                "VALUES ('gone', 1, 'default', 'worker', now() - interval '1 minute') RETURNING id"
            )
            row = await cur.fetchone()
            assert row is not None
            dead = row[0]
            await conn.execute(
                job_sql.CLAIM_JOBS,
                {"namespace": "default", "limit": 3, "actor": dead, **NO_FLOORS},
            )
            # The dead actor managed to write one result before dying.
            await conn.execute(
                "UPDATE delta_job SET state = 'completed', finalized_at = now(), "
                "claimed_by = NULL WHERE id = %s",
                (jobs[0].id,),
            )
        did = await Rescuer(pool, ttl=10).run_once()
        assert did == {"actors": 1, "claims": 2}
        first = await client.get_job(jobs[0].id)
        second = await client.get_job(jobs[1].id)
        assert first is not None and first.state is delta.JobState.COMPLETED
        assert second is not None and second.state is delta.JobState.AVAILABLE
        assert second.attempt == 1 and "rescued" in second.errors[-1].error
        assert await Rescuer(pool, ttl=10).run_once() == {"actors": 0, "claims": 0}


async def test_rescue_looks_for_claims_of_actors_without_a_row_at_once_then_less_often(dsn):
    """A claim whose actor has no row (a safety net) is rescued at the first look; the
    next look for such claims waits `orphan_interval` (it reads the whole running index),
    while expired actors are looked for every time."""
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        client = delta.AsyncClient(pool)
        jobs = await client.enqueue_many([Plain(n=i) for i in range(2)])

        async def orphan(job_id: int) -> None:
            async with pool.connection() as conn:
                await conn.execute(
                    "UPDATE delta_job SET state = 'running', attempt = 1, claimed_by = 999999,"
                    " attempted_at = now() WHERE id = %s",
                    (job_id,),
                )

        rescuer = Rescuer(pool, ttl=10, orphan_interval=0.5)
        await orphan(jobs[0].id)
        assert await rescuer.run_once() == {"actors": 1, "claims": 1}
        await orphan(jobs[1].id)
        assert await rescuer.run_once() == {"actors": 0, "claims": 0}  # not looked for yet
        await asyncio.sleep(0.6)
        assert await rescuer.run_once() == {"actors": 1, "claims": 1}
        for job in jobs:
            row = await client.get_job(job.id)
            assert row is not None and row.state is delta.JobState.AVAILABLE


async def _dead_actors_holding_claims(
    conn: psycopg.AsyncConnection, client: delta.AsyncClient, count: int, tag: str
) -> tuple[list[int], list[int], list[int]]:
    """`count` dead actors, each holding two plain jobs and one resource work; return
    the actors, the jobs and the works."""
    actors, jobs, works = [], [], []
    for i in range(count):
        cur = await conn.execute(
            "INSERT INTO delta_actor (host, pid, namespace, role, heartbeat_at) VALUES"
            " ('gone', %s, 'default', 'worker', now() - interval '1 minute') RETURNING id",
            (i,),
        )
        row = await cur.fetchone()
        assert row is not None
        actors.append(row[0])
        held = [job.id for job in await client.enqueue_many([Plain(n=i), Plain(n=i)])]
        await client.inform(Cached(key=f"{tag}{i}"))
        cur = await conn.execute(
            "SELECT j.id FROM delta_job AS j JOIN delta_resource AS r ON r.id = j.resource_id"
            " WHERE r.object_id = %s",
            (f"{tag}{i}",),
        )
        work = await cur.fetchone()
        assert work is not None
        await conn.execute(
            "UPDATE delta_job SET state = 'running', attempt = 1, claimed_by = %s,"
            " attempted_at = now() WHERE id = ANY(%s)",
            (row[0], [*held, work[0]]),
        )
        jobs += held
        works.append(work[0])
    return actors, jobs, works


async def test_a_rescue_costs_as_many_statements_for_many_dead_actors_as_for_one(dsn):
    """Rescue finishes the claims of every dead actor at once: on a leader 200 ms from
    its server, a statement per actor made a pass of ten dead actors outlast its
    deadline, pass after pass. The claims of a live actor are left alone; counted or
    handed back, each dead actor's claims go back to work."""
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        client = delta.AsyncClient(pool)
        async with pool.connection() as conn:
            live, live_jobs, live_works = await _dead_actors_holding_claims(conn, client, 1, "l")
            await conn.execute("UPDATE delta_actor SET heartbeat_at = now()")
            statements: dict[tuple[int, bool], list[str]] = {}
            for count, counted in ((1, True), (12, True), (1, False), (12, False)):
                dead, jobs, works = await _dead_actors_holding_claims(
                    conn, client, count, f"{count}{counted}"
                )
                seen = statements[count, counted] = []
                async with conn.transaction():
                    rescued = await drive_async(
                        conn, _recording(rescue_actors(dead, "died", counted=counted), seen)
                    )
                assert rescued == 3 * count
                cur = await conn.execute(
                    "SELECT state::text, attempt, claimed_by FROM delta_job WHERE id = ANY(%s)",
                    (jobs,),
                )
                attempt = 1 if counted else 0
                assert await cur.fetchall() == [("available", attempt, None)] * len(jobs)
                cur = await conn.execute(
                    "SELECT count(*) FROM delta_job WHERE id = ANY(%s) AND state = %s",
                    (works, "discarded" if counted else "cancelled"),
                )
                assert await cur.fetchone() == (count,)
                cur = await conn.execute(  # each resource's next work, queued
                    "SELECT count(*) FROM delta_job AS q JOIN delta_job AS w"
                    " ON q.resource_id = w.resource_id AND q.id <> w.id"
                    " WHERE w.id = ANY(%s) AND q.state = 'available'",
                    (works,),
                )
                assert await cur.fetchone() == (count,)
                cur = await conn.execute(
                    "SELECT count(*) FROM delta_actor WHERE id = ANY(%s)", (dead,)
                )
                assert await cur.fetchone() == (0,)
            cur = await conn.execute(
                "SELECT count(*) FROM delta_job WHERE id = ANY(%s) AND state = 'running'"
                " AND claimed_by = %s",
                ([*live_jobs, *live_works], live[0]),
            )
            assert await cur.fetchone() == (3,)
        assert statements[1, True] == statements[12, True]
        assert statements[1, False] == statements[12, False]
        assert len(statements[12, True]) == 4


def _recording(
    steps: Generator[Statement, Rows, int], seen: list[str]
) -> Generator[Statement, Rows, int]:
    """`steps`, noting each statement it yields in `seen`."""
    try:
        statement = next(steps)
        while True:
            seen.append(statement[0])
            statement = steps.send((yield statement))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


class Cached(delta.Object, kind="cached"):
    key: str

    def id(self) -> str:
        return self.key


async def test_expiry_reworks_exactly_the_expired_resources(dsn):
    """Synced resources older than resource_expiry get one new work each; others none."""
    app = delta.App(namespaces={"default": delta.Namespace(resource_expiry=60)})
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        client = delta.AsyncClient(pool)
        await client.inform_many([Cached(key=k) for k in ("old1", "old2", "fresh")])
        async with pool.connection() as conn:
            await conn.execute("DELETE FROM delta_job")
            await conn.execute("UPDATE delta_resource SET state = 'synced', synced_at = now()")
            await conn.execute(
                "UPDATE delta_resource SET updated_at = now() - interval '2 minutes' "
                "WHERE object_id LIKE 'old%%'"
            )
        expirer = Expirer(app, pool)
        assert await expirer.run_once() == {"expired": 2}
        assert await expirer.run_once() == {"expired": 0}
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT r.object_id, r.state::text, count(j.id) FROM delta_resource r "
                "LEFT JOIN delta_job j ON j.resource_id = r.id GROUP BY 1, 2 ORDER BY 1"
            )
            rows = await cur.fetchall()
        assert rows == [("fresh", "synced", 0), ("old1", "expired", 1), ("old2", "expired", 1)]


async def test_cleanup_respects_retention_and_batch_limits(dsn):
    """Only finished jobs past retention go; a run deletes batch after batch until none is
    due (a run out of time stops after a batch per category); deleted resources too."""
    app = delta.App(namespaces={"default": delta.Namespace(retention=3600,
                                                           completed_retention=3600)})  # fmt: skip
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        client = delta.AsyncClient(pool)
        await client.enqueue_many([Plain(n=i) for i in range(2510)])
        await client.inform_many([Cached(key="dead"), Cached(key="alive")])
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE delta_job SET state = 'completed', "
                "finalized_at = now() - interval '2 hours' WHERE id IN ("
                "SELECT id FROM delta_job WHERE resource_id IS NULL ORDER BY id LIMIT 2500)"
            )
            await conn.execute(
                "UPDATE delta_job SET state = 'completed', finalized_at = now() "
                "WHERE resource_id IS NULL AND state = 'available'"
            )
            await conn.execute(
                "UPDATE delta_job SET state = 'completed', finalized_at = now() "
                "WHERE resource_id IS NOT NULL"
            )
            await conn.execute(
                "UPDATE delta_resource SET state = 'deleted', "
                "updated_at = now() - interval '2 hours' WHERE object_id = 'dead'"
            )
        hurried = Cleaner(app, pool, limit=1000, interval=0.0)  # no time: a batch each
        assert await hurried.run_once() == {"jobs": 1000, "resources": 1, **NO_EVENTS}
        cleaner = Cleaner(app, pool, limit=1000)
        assert await cleaner.run_once() == {"jobs": 1500, "resources": 0, **NO_EVENTS}
        assert await cleaner.run_once() == {"jobs": 0, "resources": 0, **NO_EVENTS}
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM delta_job")
            assert await cur.fetchone() == (12,)
        assert await client.get(Cached, "alive") is not None
        assert await client.get(Cached, "dead") is None


async def test_each_kind_of_finished_row_keeps_its_own_retention(dsn):
    """Works an hour, completed jobs a day, cancelled and discarded ones a week (the
    defaults), each past its own cutoff and not before."""
    app = delta.App()
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        client = delta.AsyncClient(pool)
        jobs = await client.enqueue_many([Plain(n=i) for i in range(6)])
        await client.inform_many([Cached(key="w1"), Cached(key="w2")])
        ages = [  # (state, age) for the six plain jobs
            ("completed", "2 hours"), ("completed", "25 hours"), ("discarded", "2 days"),
            ("cancelled", "8 days"), ("discarded", "8 days"), ("completed", "1 minute"),
        ]  # fmt: skip
        async with pool.connection() as conn:
            for job, (state, age) in zip(jobs, ages, strict=True):
                await conn.execute(
                    "UPDATE delta_job SET state = %s::delta_job_state, "
                    "finalized_at = now() - %s::interval WHERE id = %s",
                    (state, age, job.id),
                )
            await conn.execute(
                "UPDATE delta_job SET state = 'completed', finalized_at = now() - CASE "
                "WHEN id = (SELECT min(id) FROM delta_job WHERE resource_id IS NOT NULL) "
                "THEN interval '2 hours' ELSE interval '10 minutes' END "
                "WHERE resource_id IS NOT NULL"
            )
        assert (await Cleaner(app, pool).run_once())["jobs"] == 4
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT state::text, resource_id IS NOT NULL FROM delta_job ORDER BY id"
            )
            kept = await cur.fetchall()
    # Kept: the 2-hour and 1-minute completed jobs, the 2-day discarded one, the fresh work.
    assert kept == [("completed", False), ("discarded", False), ("completed", False),
                    ("completed", True)]  # fmt: skip


async def test_a_leader_whose_election_connection_breaks_takes_its_lease_back_at_once(dsn):
    """Its term ends at once (no duties on a lease it cannot renew), and the reconnected
    elector wins its own unexpired lease under a new term, well before the lease lapses."""
    elector, seen = make_elector(dsn, 1, ttl=15, renew_interval=5, elect_interval=5, margin=2)
    task = asyncio.create_task(elector.run())
    try:
        await wait_until_async(lambda: _true(elector.is_leader), 5, "leadership")
        await execute(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'delta-lease'",
        )
        await wait_until_async(lambda: _true(seen.lost == 1), 5, "the term to end")
        await wait_until_async(lambda: _true(elector.is_leader), 3, "the lease taken back")
        assert seen.terms == [1, 2]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
