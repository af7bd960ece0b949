"""Hostile conditions on the resource path (issue 6): user code that raises BaseExceptions
or never returns, informers that die midway, ids made of SQL, wrong passwords and a
database with no free connection. Each gets a clear error or a logged, counted event,
and loses nothing."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

import delta_actors as delta
from delta_actors.db import leader_sql
from delta_actors.resources.informers import InformerScheduler
from tests.integration.workers import running_worker
from tests.roles import PASSWORD
from tests.waiting import wait_until_async


class Item(delta.Object, kind="item"):
    """A resource whose work does what `Behaviour.by_key` says for its key."""

    key: str
    created: datetime | None = None

    def id(self) -> str:
        return self.key

    def created_at(self) -> datetime | None:
        return self.created


class Behaviour:
    """What works of each key do, and which keys were worked (shared by both controllers)."""

    by_key: ClassVar[dict[str, BaseException]] = {}
    worked: ClassVar[list[str]] = []
    gate: ClassVar[threading.Event] = threading.Event()

    @classmethod
    def reset(cls, **by_key: BaseException) -> None:
        cls.by_key = by_key
        cls.worked = []
        cls.gate = threading.Event()


def _raise(error: BaseException) -> None:
    raise error


class AsyncItems(delta.Controller[Item]):
    max_attempts = 1
    timeout = 0.3

    async def work(self, resource: delta.Resource[Item]) -> None:
        Behaviour.worked.append(resource.object.key)
        if resource.object.key.startswith("hang"):
            await asyncio.Event().wait()  # never set
        if resource.object.key == "thrown":  # through a future: thrown into the task
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, _raise, GeneratorExit("from a thread"))
        error = Behaviour.by_key.get(resource.object.key)
        if error is not None:
            raise error


class SyncItems(AsyncItems):
    def work(self, resource: delta.Resource[Item]) -> None:  # type: ignore[override]
        Behaviour.worked.append(resource.object.key)
        if resource.object.key.startswith("hang"):
            Behaviour.gate.wait(30)  # a blocking call that ignores its timeout
        if resource.object.key == "thrown":
            raise GeneratorExit("from a thread")
        error = Behaviour.by_key.get(resource.object.key)
        if error is not None:
            raise error


class GeneratorExitLike(BaseException):
    """A BaseException of the user's own, outside Exception."""


def base_exceptions() -> dict[str, BaseException]:
    return {
        "interrupt": KeyboardInterrupt("from work"),
        "exit": SystemExit(3),
        "generator-exit": GeneratorExit("from work"),
        "own": GeneratorExitLike("from work"),
        "thrown": GeneratorExit("from a thread"),
    }


async def states(client: delta.AsyncClient, keys: list[str]) -> dict[str, delta.State]:
    found = {}
    for key in keys:
        resource = await client.get(Item, key)
        if resource is not None:
            found[key] = resource.state
    return found


async def settled(client: delta.AsyncClient, keys: list[str]) -> bool:
    settled_states = {delta.State.SYNCED, delta.State.DEGRADED}
    return all(state in settled_states for state in (await states(client, keys)).values())


# ---------------------------------------------------------------- user code


@pytest.mark.parametrize("controller", [AsyncItems, SyncItems], ids=["async", "sync"])
async def test_base_exceptions_in_work_fail_the_attempt_and_the_worker_goes_on(dsn, controller):
    """KeyboardInterrupt, SystemExit, GeneratorExit and other BaseExceptions raised by a
    work are that work's failure, named in its errors; the worker keeps working."""
    Behaviour.reset(**base_exceptions())
    app = delta.App(controllers=[controller()])
    keys = [*base_exceptions(), "fine"]
    client = await delta.AsyncClient.connect(dsn, app=app)
    try:
        async with running_worker(app, dsn) as worker:
            await client.inform_many([Item(key=key) for key in keys])
            await wait_until_async(lambda: settled(client, keys), 10, "every work to settle")
            assert worker.stats.failed == 5
        got = {key: await client.get(Item, key) for key in keys}
        assert got["fine"] is not None and got["fine"].state is delta.State.SYNCED
        for key, error in base_exceptions().items():
            resource = got[key]
            assert resource is not None and resource.state is delta.State.DEGRADED
            assert resource.errors[-1].error == f"{type(error).__qualname__}: {error}"
    finally:
        await client.close()


@pytest.mark.parametrize("controller", [AsyncItems, SyncItems], ids=["async", "sync"])
async def test_works_that_never_return_time_out_and_do_not_starve_the_others(dsn, controller):
    """Works that hang past their timeout fail as timed out, even when every slot hung;
    the works after them still run (a hung plain def keeps its thread, not its slot)."""
    Behaviour.reset()
    app = delta.App(
        controllers=[controller()], namespaces={"default": delta.Namespace(max_workers=2)}
    )
    hung = ["hang-1", "hang-2"]
    client = await delta.AsyncClient.connect(dsn, app=app)
    try:
        async with running_worker(app, dsn, stop_timeout=0.5):
            await client.inform_many([Item(key=key) for key in hung])
            await wait_until_async(lambda: settled(client, hung), 10, "the hung works to fail")
            after = [f"after-{n}" for n in range(4)]
            await client.inform_many([Item(key=key) for key in after])
            await wait_until_async(lambda: settled(client, after), 10, "later works to settle")
        assert set((await states(client, hung)).values()) == {delta.State.DEGRADED}
        assert set((await states(client, after)).values()) == {delta.State.SYNCED}
        resource = await client.get(Item, "hang-1")
        assert resource is not None and "timed out after 0.3s" in resource.errors[-1].error
    finally:
        Behaviour.gate.set()
        await client.close()


class Charge(delta.Job, kind="charge"):
    """A job whose stored args a later deploy no longer reads."""

    cents: int


async def test_stored_job_args_that_no_longer_decode_fail_naming_the_type(dsn):
    """Schema changed under a queued job: its attempts fail naming the type and the
    decode error, the handler never sees garbage, the row and its args are kept."""
    handled: list[Charge] = []
    app = delta.App(jobs={Charge: handled.append})
    async with await delta.AsyncClient.connect(dsn) as client:
        job = await client.enqueue(Charge(cents=5), max_attempts=1)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(
                "UPDATE delta_job SET args = convert_to('{\"cents\": \"five\"}', 'UTF8')"
            )
        async with running_worker(app, dsn) as worker:
            await wait_until_async(lambda: _true(worker.stats.discarded), 10, "the discard")
        row = await client.get_job(job.id)
    assert handled == []
    assert row is not None and row.state is delta.JobState.DISCARDED
    assert "no longer decode into Charge" in row.errors[-1].error
    assert "Expected `int`, got `str`" in row.errors[-1].error


async def test_a_plain_job_raising_generator_exit_fails_once_and_the_worker_goes_on(dsn):
    """The job path too: a GeneratorExit from a plain def's thread fails the attempt
    (discarded at max_attempts, counted once) and frees its slot."""

    def handler(job: Ping) -> None:
        raise GeneratorExit("from a job")

    app = delta.App(jobs={Ping: handler}, namespaces={"default": delta.Namespace(max_workers=1)})
    async with await delta.AsyncClient.connect(dsn) as client:
        jobs = [await client.enqueue(Ping(), max_attempts=1) for _ in range(3)]
        async with running_worker(app, dsn) as worker:
            await wait_until_async(lambda: worker.stats.discarded == 3, 10, "three discards")
            assert worker.stats.failed == 3
        for job in jobs:
            row = await client.get_job(job.id)
            assert row is not None and row.state is delta.JobState.DISCARDED
            assert row.errors[-1].error == "GeneratorExit: from a job"


# ---------------------------------------------------------------- informers


class Listing(AsyncItems):
    """An informer that lists `objects`, raising `error` when it reaches index `fail_at`."""

    inform_interval = 3600.0
    objects: ClassVar[list[delta.Object]] = []
    fail_at: ClassVar[int | None] = None
    error: ClassVar[type[BaseException]] = RuntimeError

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Item]:
        for index, obj in enumerate(self.objects):
            if index == self.fail_at:
                raise self.error("the external system went away")
            yield obj  # type: ignore[misc]


async def _lead(pool: AsyncConnectionPool) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(
            leader_sql.ATTEMPT_ELECTION, {"actor": 1, "host": "test", "pid": 1, "ttl": 60}
        )
        row = await cur.fetchone()
        await conn.execute(leader_sql.ADD_INFORMERS, (["item"],))
    assert row is not None
    return int(row[0])


async def _informer(pool: AsyncConnectionPool) -> tuple[object, ...]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT cursor, last_error, runs, failures FROM delta_informer WHERE kind = 'item'"
        )
        row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def _make_due(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        await conn.execute("UPDATE delta_informer SET next_run_at = now()")


@pytest.mark.parametrize(
    "error",
    [KeyboardInterrupt, SystemExit, GeneratorExit, GeneratorExitLike],
    ids=["KeyboardInterrupt", "SystemExit", "GeneratorExit", "own-BaseException"],
)
async def test_an_informer_raising_a_base_exception_midway_keeps_its_cursor(dsn, error):
    """An informer dying midway with a BaseException is recorded like any failure: the
    cursor stays, the leader's loop goes on, and the next run stores everything."""
    created = datetime(2026, 1, 1, tzinfo=UTC)
    Listing.objects = [Item(key=f"i{n}", created=created + timedelta(minutes=n)) for n in range(6)]
    Listing.fail_at, Listing.error = 4, error
    app = delta.App(controllers=[Listing()])
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        informers = InformerScheduler(app, pool, interval=0.05)
        term = await _lead(pool)
        # Through the leader's loop, where a run is a task of its own.
        loop = asyncio.create_task(informers.run(term, 1))
        try:
            await wait_until_async(lambda: _failures(pool), 5, "the informer failure")
            cursor, last_error, runs, failures = await _informer(pool)
            assert cursor is None and runs == 0 and failures == 1
            assert error.__qualname__ in str(last_error)
            assert not loop.done()
            Listing.fail_at = None
            await _make_due(pool)
            await wait_until_async(lambda: _runs(pool), 5, "a clean informer run")
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
        cursor, last_error, runs, failures = await _informer(pool)
        assert cursor == created + timedelta(minutes=5) and last_error is None
        async with delta.AsyncClient(pool) as client:
            for n in range(6):
                assert await client.get(Item, f"i{n}") is not None


async def _failures(pool: AsyncConnectionPool) -> bool:
    return (await _informer(pool))[3] >= 1


async def _runs(pool: AsyncConnectionPool) -> bool:
    return (await _informer(pool))[2] >= 1


async def test_an_informer_listing_a_kind_with_no_controller_fails_naming_it(dsn):
    """An informer that yields objects of a kind the app does not register fails clearly,
    keeps its cursor, and stores nothing of the bad batch."""

    class Stray(delta.Object, kind="stray"):
        key: str

        def id(self) -> str:
            return self.key

    Listing.objects = [Item(key="good"), Stray(key="stray")]
    Listing.fail_at = None
    app = delta.App(controllers=[Listing()])
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        informers = InformerScheduler(app, pool)
        result = await informers.run_informer("item", await _lead(pool), 1)
        cursor, last_error, runs, failures = await _informer(pool)
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM delta_resource")
            stored = await cur.fetchone()
    assert "unknown kind 'stray'" in result["error"]
    assert cursor is None and runs == 0 and failures == 1
    assert "UnknownKindError" in str(last_error)
    assert stored == (0,)


# ---------------------------------------------------------------- hostile ids


HOSTILE_IDS = [
    "'; drop table delta_job; --",
    "x'); DELETE FROM delta_resource; --",
    '" OR 1=1 --',
    "%(kind)s %s $1 ?",
    "\\'\\\\ \t\n",
    "ünïcødé ✓ 🚀",
    "a" * 1024,
]


async def test_ids_made_of_sql_round_trip_and_are_worked(dsn):
    """Ids are user data: SQL metacharacters, placeholders, quotes and the longest id
    allowed are stored, read, worked and invalidated as they are, touching nothing else."""
    Behaviour.reset()
    app = delta.App(controllers=[AsyncItems()])
    client = await delta.AsyncClient.connect(dsn, app=app)
    try:
        results = await client.inform_many(
            [Item(key=key) for key in HOSTILE_IDS], tags=["'; drop table x; --"],
            metadata={"'; --": "%s $1"},
        )  # fmt: skip
        assert [r.resource.object_id for r in results] == HOSTILE_IDS
        async with running_worker(app, dsn):
            await wait_until_async(lambda: settled(client, HOSTILE_IDS), 10, "the works")
            assert sorted(Behaviour.worked) == sorted(HOSTILE_IDS)
            for key in HOSTILE_IDS:
                resource = await client.invalidate(Item, key)
                assert resource is not None and resource.object.key == key
            await wait_until_async(lambda: len(Behaviour.worked) == 2 * len(HOSTILE_IDS), 10)
        resource = await client.get(Item, HOSTILE_IDS[0])
        assert resource is not None
        assert resource.tags == ["'; drop table x; --"]
        assert resource.metadata == {"'; --": "%s $1"}
    finally:
        await client.close()
    async with await delta.AsyncClient.connect(dsn) as jobs:
        job = await jobs.enqueue(Ping(), unique_key=HOSTILE_IDS[0])
        again = await jobs.enqueue(Ping(), unique_key=HOSTILE_IDS[0])
        assert again.id == job.id
    with psycopg.connect(dsn, autocommit=True) as conn:
        count = conn.execute("SELECT count(*) FROM delta_resource").fetchone()
    assert count == (len(HOSTILE_IDS),)


class Ping(delta.Job, kind="ping"):
    """A plain job, to enqueue with hostile unique keys."""


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("a" * 1025, r"1\.\.1024 bytes in UTF-8 \(1025 given\)"),
        ("語" * 400, r"\(1200 given\)"),  # 400 characters, too big for the index
        ("nul\x00inside", "without NUL characters"),
    ],
    ids=["1025-ascii", "1200-bytes", "nul"],
)
def test_ids_over_the_limit_or_with_nul_are_refused_naming_the_rule(dsn, key, reason):
    """An id PostgreSQL cannot store or index is a ConfigError naming the rule, and
    nothing is written; reading it finds nothing or says why it cannot be sent."""
    with delta.Client.connect(dsn) as client:
        with pytest.raises(delta.ConfigError, match=reason):
            client.inform_many([Item(key="fine"), Item(key=key)])
        if "\x00" in key:
            with pytest.raises(delta.EncodeError, match=r"cannot store a value given.*0x00"):
                client.get(Item, key)
        else:
            assert client.get(Item, key) is None
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM delta_resource").fetchone() == (0,)


def test_values_postgres_refuses_are_delta_errors(dsn):
    """A NUL in a tag or a unique key, or a value too big to index, is a DeltaError that
    names the value's problem, never a raw psycopg error; nothing is written."""
    with delta.Client.connect(dsn) as client:
        with pytest.raises(delta.EncodeError, match=r"cannot store a value given.*\\u0000"):
            client.inform(Item(key="x"), tags=["nul\x00tag"])
        with pytest.raises(delta.EncodeError, match=r"cannot store a value given.*NUL"):
            client.enqueue(Ping(), unique_key="nul\x00key")
        with pytest.raises(delta.EncodeError, match="cannot store a value given: index row"):
            client.enqueue(Ping(), unique_key=random.Random(7).randbytes(5000).hex())  # noqa: S311
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM delta_resource").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM delta_job").fetchone() == (0,)


# ---------------------------------------------------------------- roles: passwords, limits


async def test_a_wrong_password_is_a_clear_error_that_never_shows_it(role, caplog):
    """Client.connect, AsyncClient.connect and Worker.start with a wrong password raise a
    DatabaseError saying authentication failed, quickly; no message or log shows it."""
    wrong = "Wr0ng-Battery-5512"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(delta.DatabaseError) as sync_error:
        delta.Client.connect(role.dsn(wrong))
    with pytest.raises(delta.DatabaseError) as async_error:
        await delta.AsyncClient.connect(role.dsn(wrong))
    worker = delta.Worker(delta.App(controllers=[AsyncItems()]), role.dsn(wrong))
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(delta.DatabaseError) as worker_error:
            await worker.start()
    finally:
        await worker.stop()
    assert loop.time() - started < 15, "Worker.start waited out its pool instead of failing"
    for caught in (sync_error, async_error, worker_error):
        message = str(caught.value)
        assert "password authentication failed" in message
        assert wrong not in message and PASSWORD not in message
    assert wrong not in caplog.text
    # The right password works through the same role.
    async with await delta.AsyncClient.connect(role.dsn(PASSWORD)) as client:
        assert await client.get(Item, "none") is None


async def test_no_free_connection_is_logged_counted_and_recovered(role, dsn, caplog):
    """A worker whose sessions die while the database refuses new ones logs and counts
    the failed claims, then recovers once connections free up; no work is lost."""
    Behaviour.reset()
    app = delta.App(controllers=[AsyncItems()])
    caplog.set_level(logging.WARNING)
    async with (
        await delta.AsyncClient.connect(dsn, app=app) as client,
        running_worker(app, role.dsn(PASSWORD), poll_interval=0.1) as worker,
    ):
        await client.inform(Item(key="before"))
        await wait_until_async(lambda: settled(client, ["before"]), 10, "the first work")
        role.set_connection_limit(0)
        assert role.terminate_sessions() >= 2
        await client.inform(Item(key="during"))
        await wait_until_async(lambda: _true(worker.stats.claim_failures), 20, "a claim failure")
        await wait_until_async(lambda: "too many connections" in caplog.text, 20, "the reason")
        assert (await states(client, ["during"])) == {"during": delta.State.SCHEDULED}
        role.set_connection_limit(-1)
        await wait_until_async(lambda: settled(client, ["during"]), 30, "recovery")
        assert (await states(client, ["during"])) == {"during": delta.State.SYNCED}
    assert Behaviour.worked == ["before", "during"]


def _true(value: object) -> bool:
    return bool(value)
