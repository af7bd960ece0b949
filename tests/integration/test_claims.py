"""Claiming: exactly once under concurrency, never beyond free slots, fenced results."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

import delta_actors as delta
from delta_actors.db import actor_sql, job_sql
from delta_actors.queue.claimer import Claimer
from delta_actors.queue.completer import Completer
from delta_actors.queue.floors import Floors
from delta_actors.queue.results import job_done, work_synced
from tests.integration.job_table import get_job, is_state, job_states, running_count
from tests.integration.workers import running_worker
from tests.waiting import wait_until_async

NO_FLOORS = {"floors": Floors().of()}  # the claim reads every priority from the start


class Note(delta.Job, kind="note"):
    n: int = 0


CLAIM_LIMIT = 7

# Loops claims as one actor, the way a worker's producer makes them (a generic plan on a
# connection of its own), until the queue is empty; prints each claim's ids on a line.
CLAIMER = f"""
import asyncio, sys
from delta_actors.queue.claimer import Claimer
dsn, actor = sys.argv[1], int(sys.argv[2])
async def main():
    claimer = Claimer(dsn, "default")
    await claimer.claim({{"namespace": "none", "limit": 1, "actor": actor}})  # connected
    print("ready", flush=True)
    sys.stdin.readline()  # every claimer starts at once
    while True:
        params = {{"namespace": "default", "limit": {CLAIM_LIMIT}, "actor": actor}}
        ids = [row[0] for row in await claimer.claim(params)]
        if not ids:
            break
        print(" ".join(map(str, ids)), flush=True)
    await claimer.close()
asyncio.run(main())
"""


def test_concurrent_claimer_processes_claim_every_job_exactly_once(dsn):
    """Four OS processes racing CLAIM_JOBS over 5,000 jobs: each job claimed by exactly one."""
    actors = [101, 102, 103, 104]
    with delta.Client.connect(dsn) as client:
        jobs = client.enqueue_many([Note(n=i) for i in range(5_000)])
    procs = {
        actor: subprocess.Popen(
            [sys.executable, "-c", CLAIMER, dsn, str(actor)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for actor in actors
    }
    try:
        for proc in procs.values():
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        claimed_by: dict[int, int] = {}
        duplicates: list[int] = []
        for actor, proc in procs.items():
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0
            for line in out.splitlines():
                ids = [int(x) for x in line.split()]
                assert 0 < len(ids) <= CLAIM_LIMIT
                for job_id in ids:
                    if job_id in claimed_by:
                        duplicates.append(job_id)
                    claimed_by[job_id] = actor
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    assert duplicates == []
    assert sorted(claimed_by) == [j.id for j in jobs]
    assert len(set(claimed_by.values())) > 1, "one claimer took everything: no race was tested"
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT id, state::text, attempt, claimed_by FROM delta_job").fetchall()
    assert {(state, attempt) for _, state, attempt, _ in rows} == {("running", 1)}
    assert {job_id: actor for job_id, _, _, actor in rows} == claimed_by


async def test_several_workers_run_every_job_exactly_once(dsn):
    """Three in-process workers over 2,500 jobs: each handled once, all completed, attempt 1."""
    count = 2_500
    handled: collections.Counter[int] = collections.Counter()

    async def record(job: Note) -> None:
        handled[job.n] += 1
        await asyncio.sleep(0)

    app = delta.App(jobs={Note: record})
    client = await delta.AsyncClient.connect(dsn)
    try:
        await client.enqueue_many([Note(n=i) for i in range(count)])
        async with (
            running_worker(app, dsn, max_workers=10) as a,
            running_worker(app, dsn, max_workers=10) as b,
            running_worker(app, dsn, max_workers=10) as c,
        ):
            await wait_until_async(
                lambda: job_states(dsn) == {"completed": count}, 60, "every job completed"
            )
        workers = (a, b, c)
        assert sorted(handled) == list(range(count))
        assert [n for n, times in handled.items() if times != 1] == []
        assert sum(w.stats.completed for w in workers) == count
        assert sum(w.stats.claimed for w in workers) == count
        assert all(w.stats.completed > 0 for w in workers), [w.stats for w in workers]
        with psycopg.connect(dsn, autocommit=True) as conn:
            summary = conn.execute(
                "SELECT min(attempt), max(attempt), count(claimed_by), count(finalized_at)"
                " FROM delta_job"
            ).fetchone()
        assert summary == (1, 1, 0, count)
    finally:
        await client.close()


async def test_claims_never_exceed_free_slots(dsn):
    """max_workers=3, 20 blocked jobs: 3 rows running, never more; all 20 complete once freed."""
    release = asyncio.Event()
    in_handler = 0
    most_in_handler = 0

    async def block(job: Note) -> None:
        nonlocal in_handler, most_in_handler
        in_handler += 1
        most_in_handler = max(most_in_handler, in_handler)
        try:
            await release.wait()
            await asyncio.sleep(0.01)  # keep runs overlapping while draining
        finally:
            in_handler -= 1

    app = delta.App(jobs={Note: block})
    client = await delta.AsyncClient.connect(dsn)
    samples: list[int] = []
    try:
        await client.enqueue_many([Note(n=i) for i in range(20)])
        async with (
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
            running_worker(app, dsn, max_workers=3, poll_interval=0.05) as worker,
        ):

            async def three_running() -> bool:
                samples.append(await running_count(conn))
                return samples[-1] == 3

            await wait_until_async(three_running, 10, "3 running")
            for _ in range(25):  # the slots stay full; 25 polls later still no overflow
                samples.append(await running_count(conn))
                await asyncio.sleep(0.01)
            assert max(samples) == 3
            assert worker.stats.claimed == 3
            release.set()
            await wait_until_async(
                lambda: job_states(dsn) == {"completed": 20}, 10, "all 20 completed"
            )
        assert most_in_handler == 3
        assert worker.stats.claimed == worker.stats.completed == 20
    finally:
        await client.close()


async def test_a_rescued_claim_cannot_overwrite_the_newer_state(dsn):
    """Re-claimed by another actor mid-run: the late result is fenced off and counted stale."""
    release = asyncio.Event()

    async def wait(job: Note) -> None:
        await release.wait()
        if job.n == 1:
            raise ValueError("late failure")

    app = delta.App(jobs={Note: wait})
    client = await delta.AsyncClient.connect(dsn)
    try:
        jobs = await client.enqueue_many([Note(n=0), Note(n=1)])
        async with running_worker(app, dsn, max_workers=2) as worker:
            for job in jobs:
                await wait_until_async(
                    lambda job=job: is_state(client, job.id, delta.JobState.RUNNING)
                )
            before = [await get_job(client, job.id) for job in jobs]
            assert {row.claimed_by for row in before} == {worker.actor_id}
            other_actor = (worker.actor_id or 0) + 1000
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(
                    "UPDATE delta_job SET claimed_by = %s, attempt = attempt + 1,"
                    " attempted_at = now() WHERE id = ANY(%s)",
                    (other_actor, [job.id for job in jobs]),
                )
            release.set()
            await wait_until_async(lambda: worker.stats.stale == 2, 5, "two stale results")
            assert (worker.stats.completed, worker.stats.failed) == (1, 1)
        for job in jobs:
            row = await get_job(client, job.id)
            assert row.state is delta.JobState.RUNNING
            assert row.claimed_by == other_actor
            assert row.attempt == 2
            assert row.errors == []
            assert row.finalized_at is None
    finally:
        await client.close()


class Gizmo(delta.Object, kind="gizmo"):
    key: str

    def id(self) -> str:
        return self.key


async def test_claims_whose_reply_was_lost_are_handed_back_and_run(dsn):
    """Claims that committed while the connection died are not held forever by a live actor.

    The rows say `running` under this actor, the actor never saw them and heartbeats on, so
    rescue would never come: after its next failed claim the worker hands them back,
    uncounted, and runs them.
    """
    ran: collections.Counter[str] = collections.Counter()

    async def note(job: Note) -> None:
        ran["note"] += 1

    class GizmoController(delta.Controller[Gizmo]):
        async def work(self, resource: delta.Resource[Gizmo]) -> None:
            ran["gizmo"] += 1

    app = delta.App(jobs={Note: note}, controllers=[GizmoController()])
    client = await delta.AsyncClient.connect(dsn, app=app)
    try:
        job = await client.enqueue(Note(n=1))
        informed = await client.inform(Gizmo(key="g1"))
    finally:
        await client.close()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(actor_sql.REGISTER_ACTOR, ("test", 1, "default", "worker"))
        actor_id = (await cur.fetchone())[0]
        # What a claim whose reply was lost leaves behind: rows claimed, nobody knows.
        cur = await conn.execute(
            job_sql.CLAIM_JOBS,
            {"namespace": "default", "limit": 10, "actor": actor_id, **NO_FLOORS},
        )
        assert len(await cur.fetchall()) == 2
        async with running_worker(app, dsn, actor_id=actor_id) as worker:
            assert worker.stats.claimed == 0
            for _ in range(10):  # kill the worker's connections until one of its claims fails
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                with contextlib.suppress(AssertionError):
                    await wait_until_async(lambda: ran == {"note": 1, "gizmo": 1}, 1.5, "runs")
                    break
            assert ran == {"note": 1, "gizmo": 1}
            assert worker.stats.handed_back == 2
        cur = await conn.execute(
            "SELECT state::text, attempt FROM delta_job WHERE id = %s", (job.id,)
        )
        assert await cur.fetchone() == ("completed", 1)  # the lost claim was not counted
        cur = await conn.execute(
            "SELECT state::text, attempt FROM delta_resource WHERE id = %s",
            (informed.resource.id,),
        )
        assert await cur.fetchone() == ("synced", 0)


async def _claim_plan(claimer: Claimer) -> str:
    """The plan the claimer's prepared claim runs now, as EXPLAIN prints it."""
    conn = await claimer._own.get()
    cur = await conn.execute("SELECT name FROM pg_prepared_statements")
    (name,) = [row[0] for row in await cur.fetchall()]
    floors = "{" + ",".join(at.isoformat() for at in Floors().of()) + "}"
    cur = await conn.execute(f"EXPLAIN (COSTS OFF) EXECUTE {name}('{floors}', 'default', 10, 1)")
    return "\n".join(row[0] for row in await cur.fetchall())


async def test_the_claim_plan_stays_on_indexes_and_is_remade(dsn):
    """The claim's generic plan, made on empty tables, looks every row up by index, so it
    stays sound as the tables grow; after the replan interval the next claim remakes it.
    (On empty tables PostgreSQL would otherwise plan a sequential scan of delta_resource,
    which made every claim of a resource work scan the whole table: 25x slower.)"""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("ALTER TABLE delta_resource SET (autovacuum_enabled = false)")
        claimer = Claimer(dsn, "default", replan_interval=1.0)
        claim = {"namespace": "default", "limit": 10, "actor": 1, **NO_FLOORS}
        try:
            await claimer.claim(claim)
            plan = await _claim_plan(claimer)
            assert "Seq Scan" not in plan, plan
            assert "on delta_resource_pkey" in plan, plan
            assert "using delta_job_claim_idx" in plan, plan
            assert "Tid Scan on delta_job" in plan, plan  # the update, by row version
            await conn.execute(
                "INSERT INTO delta_resource (kind, object_id, namespace, object, hash,"
                " max_attempts) SELECT 'gizmo', 'g' || i, 'default', '{}', '', 5"
                " FROM generate_series(1, 20000) AS i"
            )
            await asyncio.sleep(1.1)
            await claimer.claim(claim)  # the first claim past the interval remakes it
            assert claimer.replans == 1
            await claimer.claim(claim)  # and the next one, within it, does not
            assert claimer.replans == 1
            plan = await _claim_plan(claimer)
            assert "Seq Scan" not in plan, plan
        finally:
            await claimer.close()


# Two valid queue names with one hashtext(): they share a range of the claim index.
COLLIDING_QUEUES = ("q7169", "q122757")


async def test_queues_whose_hashes_collide_claim_only_their_own_jobs(dsn):
    """The claim index leads with hashtext(queue): a claim of one of two colliding queues
    gets that queue's jobs only, oldest first, and leaves the other's available."""
    mine, other = COLLIDING_QUEUES
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT hashtext(%s) = hashtext(%s)", COLLIDING_QUEUES)
        assert await cur.fetchone() == (True,), "pick two names that collide in this PostgreSQL"
    jobs = [Note(n=i) for i in range(6)]
    async with await delta.AsyncClient.connect(dsn) as client:
        await client.enqueue_many(jobs, namespace=other)  # older, in the same index range
        expected = [job.id for job in await client.enqueue_many(jobs, namespace=mine)]
        await client.enqueue_many(jobs, namespace=other)
    claimer = Claimer(dsn, mine)
    try:
        claimed = await claimer.claim({"namespace": mine, "limit": 10, "actor": 1})
    finally:
        await claimer.close()
    assert [row[0] for row in claimed] == expected
    states = job_states(dsn)
    assert states == {"running": 6, "available": 12}, states


@contextlib.asynccontextmanager
async def _noting_worker(
    dsn: str, ran: list[int]
) -> AsyncIterator[tuple[delta.AsyncClient, delta.Worker, psycopg.AsyncConnection[Any]]]:
    """A client, a worker whose notes append their n to `ran`, and an admin connection."""

    async def note(job: Note) -> None:
        ran.append(job.n)

    app = delta.App(jobs={Note: note})
    async with (
        await delta.AsyncClient.connect(dsn, app=app) as client,
        running_worker(app, dsn, poll_interval=0.1) as worker,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin,
    ):
        yield client, worker, admin


async def test_a_worker_replaces_its_claim_connection_when_it_dies(dsn):
    """Terminating the producer's own connection costs one failed claim at most: the next
    claim opens a new connection, and the jobs enqueued meanwhile run."""
    ran: list[int] = []
    async with _noting_worker(dsn, ran) as (client, worker, admin):
        await client.enqueue(Note(n=1))
        await wait_until_async(lambda: ran == [1], 10, "the first job")
        # This database's only: a test beside this one (pytest -n) may run a worker of
        # the same namespace on a database of its own in the same cluster.
        cur = await admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'delta-claim-default' AND datname = current_database()"
        )
        assert await cur.fetchone() == (1,)
        await client.enqueue(Note(n=2))
        await wait_until_async(lambda: ran == [1, 2], 10, "the job after")
        assert worker.stats.claim_failures <= 1
        cur = await admin.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = 'delta-claim-default' AND datname = current_database()"
        )
        assert await cur.fetchone() == (1,)


async def _results_backends(admin: psycopg.AsyncConnection[Any], terminate: bool = False) -> int:
    """The completer's own connections to this database, terminated if `terminate`."""
    count = "pg_terminate_backend(pid)" if terminate else "*"
    cur = await admin.execute(
        f"SELECT count({count}) FROM pg_stat_activity"
        " WHERE application_name = 'delta-results-default' AND datname = current_database()"
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_plain_jobs_results_run_a_generic_plan_on_a_connection_of_their_own(dsn):
    """The completer writes plain jobs' results on its own connection, where the statement
    by row version is prepared once with a generic plan (never planned per batch), and
    the statement by id is not prepared (it is planned for its parameters)."""
    ran: list[int] = []
    async with _noting_worker(dsn, ran) as (client, worker, admin):
        for n in range(3):
            await client.enqueue(Note(n=n))
            await wait_until_async(
                lambda n=n: job_states(dsn) == {"completed": n + 1}, 10, "a result written"
            )
        assert await _results_backends(admin) == 1
        assert worker._completer is not None and worker._completer._own is not None
        conn = await worker._completer._own.get()  # idle now: every result is written
        cur = await conn.execute(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
        )
        ((statement, generic, custom),) = await cur.fetchall()
        assert "j.ctid = ANY" in statement
        assert (generic, custom) == (3, 0)
    assert job_states(dsn) == {"completed": 3}


async def test_a_worker_replaces_its_results_connection_when_it_dies(dsn):
    """Terminating the completer's own connection costs one failed write at most, which is
    retried on a new connection: no result is lost, none is counted stale."""
    ran: list[int] = []
    async with _noting_worker(dsn, ran) as (client, worker, admin):
        await client.enqueue(Note(n=1))
        # Written, not only run: the completer opens its connection for its first write.
        await wait_until_async(lambda: job_states(dsn) == {"completed": 1}, 10, "written")
        assert await _results_backends(admin, terminate=True) == 1
        await client.enqueue_many([Note(n=2), Note(n=3)])
        await wait_until_async(lambda: worker.stats.completed == 3, 10, "the results after")
        await wait_until_async(lambda: job_states(dsn) == {"completed": 3}, 10, "written")
        assert worker.stats.stale == 0
        assert await _results_backends(admin) == 1


def _held_until(release: asyncio.Event) -> delta.App:
    """An app whose notes run until `release` is set."""

    async def wait(job: Note) -> None:
        await release.wait()

    return delta.App(jobs={Note: wait})


async def test_a_result_finds_its_claim_after_the_row_moved(dsn):
    """Results look for their rows where their claims left them (the row version), then
    by id: a running job whose row was updated meanwhile (by something that leaves the
    claim current, here a rewrite of its errors) is still written, and not counted stale."""
    release = asyncio.Event()
    client = await delta.AsyncClient.connect(dsn)
    try:
        moved, kept = await client.enqueue_many([Note(n=0), Note(n=1)])
        async with running_worker(_held_until(release), dsn, max_workers=2) as worker:
            for job in (moved, kept):
                await wait_until_async(
                    lambda job=job: is_state(client, job.id, delta.JobState.RUNNING)
                )
            claimed_at = worker._running[moved.id].tid
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                cur = await conn.execute(
                    "SELECT ctid::text FROM delta_job WHERE id = %s", (moved.id,)
                )
                assert await cur.fetchone() == (claimed_at,)  # the claim knows where its row is
                cur = await conn.execute(
                    "UPDATE delta_job SET errors = errors WHERE id = %s RETURNING ctid::text",
                    (moved.id,),
                )
                assert await cur.fetchone() != (claimed_at,)  # and now it is elsewhere
            release.set()
            await wait_until_async(lambda: worker.stats.completed == 2, 5, "both written")
            assert worker.stats.stale == 0
        assert job_states(dsn) == {"completed": 2}
    finally:
        await client.close()


async def test_results_take_no_other_row_than_their_own_where_their_claim_was(dsn):
    """A row version that now holds another row (vacuum freed the line pointer and a new
    row took it) must not take the result: the statement joins the rows it finds there
    on the result's id. Given another running job's row version, a result leaves that job
    running and is written by id; a result given none is written by id too."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            """INSERT INTO delta_job (kind, namespace, args, state, attempt, max_attempts,
                                      claimed_by, attempted_at)
               SELECT 'note', 'default', '\\x', 'running', 1, 5, 7, now()
               FROM generate_series(1, 3) RETURNING id, ctid::text"""
        )
        (a, _a_at), (b, b_at), (c, _c_at) = await cur.fetchall()
    written: list[set[int]] = []
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        completer = Completer(
            pool, 7, max_pending=10, on_written=lambda _, stale, _f: written.append(stale)
        )
        await completer.add(job_done(a, 1), b_at)  # where b is
        await completer.add(job_done(c, 1))
        await completer._write_pending()
        assert written == [set()]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT id, state::text FROM delta_job ORDER BY id")
        assert await cur.fetchall() == [(a, "completed"), (b, "running"), (c, "completed")]


class Tracked(delta.Object, kind="tracked"):
    key: str

    def id(self) -> str:
        return self.key


async def test_a_batch_whose_works_fail_after_its_jobs_committed_retries_only_the_works(
    dsn, caplog
):
    """A batch of a plain job's result and a work's: the job's commits on the completer's
    own connection, the work's write then fails (a lock held past the pool's statement
    timeout). The job's result is reported written at once and not written again (it
    would be found stale: a false warning, a wrong count); the work's is retried."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "INSERT INTO delta_job (kind, namespace, args, state, attempt, max_attempts,"
            " claimed_by, attempted_at) VALUES ('note', 'default', '\\x', 'running', 1, 5,"
            " 7, now()) RETURNING id"
        )
        (job,) = await cur.fetchone() or ()
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        await delta.AsyncClient(pool).inform(Tracked(key="t"))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "UPDATE delta_job SET state = 'running', attempt = 1, claimed_by = 7,"
            " attempted_at = now() WHERE resource_id IS NOT NULL RETURNING id"
        )
        (work,) = await cur.fetchone() or ()
    written: list[tuple[list[int], set[int]]] = []
    timeout = {"options": "-c statement_timeout=300"}
    async with (
        AsyncConnectionPool(dsn, kwargs={"autocommit": True, **timeout}) as pool,
        await psycopg.AsyncConnection.connect(dsn) as blocker,
    ):
        await blocker.execute("SELECT 1 FROM delta_job WHERE id = %s FOR UPDATE", (work,))
        completer = Completer(
            pool, 7, max_pending=10, dsn=dsn,
            on_written=lambda results, stale, _f: written.append(([r.id for r in results], stale)),
        )  # fmt: skip
        await completer.add(job_done(job, 1))
        await completer.add(work_synced(work, 1, 1))
        running = asyncio.create_task(completer.run())
        await wait_until_async(
            lambda: any(
                getattr(r, "event", None) == "completer.retry"
                for r in caplog.records
            ),
            10, "the works' write failed",
        )  # fmt: skip
        await blocker.rollback()
        try:
            assert await completer.flush(10)
        finally:
            running.cancel()  # run() closes its own connection on the way out
            await asyncio.gather(running, return_exceptions=True)
    assert written == [([job], set()), ([work], set())]
    assert job_states(dsn) == {"completed": 2}
