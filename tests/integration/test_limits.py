"""Cluster-wide limits of a kind, enforced in the claim: two workers (each with its own
claim connection, as two processes have) never run more than `concurrency` at once nor
start more than `rate` in a window, and a kind at its limit holds no other kind up."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import ClassVar

import psycopg
import pytest

import delta_actors as delta
from tests.integration.workers import running_worker
from tests.objects import Keyed
from tests.waiting import wait_until_async


class CallApi(delta.Job, kind="call-api", concurrency=3):
    n: int


class Quick(delta.Job, kind="quick"):
    n: int


class Throttled(delta.Job, kind="throttled", rate=(5, 1.0)):
    n: int


class Account(Keyed, kind="limited-account"):
    pass


class AccountController(delta.Controller[Account]):
    concurrency = 2
    seen: ClassVar[list[str]] = []

    async def work(self, resource: delta.Resource[Account]) -> None:
        await asyncio.sleep(0.03)
        type(self).seen.append(resource.object_id)


finished: list[tuple[str, float]] = []


async def call_api(job: CallApi) -> None:
    await asyncio.sleep(0.05)
    finished.append(("call-api", asyncio.get_running_loop().time()))


async def quick(job: Quick) -> None:
    finished.append(("quick", asyncio.get_running_loop().time()))


async def throttled(job: Throttled) -> None:
    return None


def make_app() -> delta.App:
    return delta.App(
        controllers=[AccountController()],
        jobs={CallApi: call_api, Quick: quick, Throttled: throttled},
        namespaces={"default": delta.Namespace(max_workers=10)},
    )


class Sampler:
    """The most rows of each kind seen running at once, sampled from another thread."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self.worst: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                for kind, n in conn.execute(
                    "SELECT kind, count(*) FROM delta_job WHERE state = 'running' GROUP BY kind"
                ).fetchall():
                    self.worst[kind] = max(self.worst.get(kind, 0), n)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(autouse=True)
def fresh() -> None:
    finished.clear()
    AccountController.seen = []


async def done(dsn: str, kind: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM delta_job WHERE kind = %s AND state = 'completed'", (kind,)
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_concurrency_holds_across_two_workers_and_blocks_no_other_kind(dsn):
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        await client.enqueue_many([CallApi(n=i) for i in range(60)], priority=1)
        await client.enqueue_many([Quick(n=i) for i in range(40)], priority=4)  # queued last
        await client.inform_many([Account(key=f"a{i}") for i in range(20)])
        with Sampler(dsn) as sampler:
            async with running_worker(app, dsn), running_worker(app, dsn):
                await wait_until_async(lambda: done(dsn, "call-api"), 30)

                async def all_done() -> bool:
                    return await done(dsn, "call-api") == 60 and await done(dsn, "quick") == 40

                await wait_until_async(all_done, 30, "every job to run")
                await wait_until_async(lambda: len(AccountController.seen) == 20, 30)
    assert sampler.worst["call-api"] == 3, sampler.worst  # reached, never passed
    assert sampler.worst["limited-account"] <= 2, sampler.worst
    # The quick jobs, queued after every limited one, did not wait for them.
    last_quick = max(at for kind, at in finished if kind == "quick")
    last_limited = max(at for kind, at in finished if kind == "call-api")
    assert last_quick < last_limited


async def test_rate_holds_in_every_window_across_two_workers(dsn):
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        await client.enqueue_many([Throttled(n=i) for i in range(17)])
        async with running_worker(app, dsn), running_worker(app, dsn):

            async def all_done() -> bool:
                return await done(dsn, "throttled") == 17

            await wait_until_async(all_done, 20, "every throttled job to run")
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT attempted_at FROM delta_job WHERE kind = 'throttled' ORDER BY attempted_at"
        )
        starts = [row[0] for row in await cur.fetchall()]
    window = timedelta(seconds=1.0)
    for i, start in enumerate(starts):
        in_window = [s for s in starts[i:] if s - start < window]
        assert len(in_window) <= 5, f"{len(in_window)} started within 1 s from {start}"
    assert starts[-1] - starts[0] >= 3 * window  # 17 at 5 a second: at least 3 s


def test_limit_declarations_are_checked_naming_the_fix():
    with pytest.raises(delta.ConfigError, match="concurrency must be an int >= 1"):

        class Zero(delta.Job, kind="zero", concurrency=0):
            pass

    with pytest.raises(delta.ConfigError, match=r"rate must be \(count, seconds\)"):

        class Fast(delta.Job, kind="fast", rate=100):  # type: ignore[arg-type]
            pass

    with pytest.raises(delta.ConfigError, match="an object's limits are its controller's"):

        class Limited(Keyed, kind="limited-object", concurrency=2):
            pass

    class Bad(Keyed, kind="bad-rate"):
        pass

    class BadController(delta.Controller[Bad]):
        rate = (5, -1.0)

        async def work(self, resource: delta.Resource[Bad]) -> None:
            return None

    with pytest.raises(delta.ConfigError, match="rate window must be > 0 seconds"):
        delta.App(controllers=[BadController()])


def test_the_limit_lock_serializes_claims_even_when_nothing_changes(dsn):
    """LOCK_LIMIT rewrites its row only when the settings change, yet always locks it:
    a second claimer of the kind waits for the first one's transaction."""
    from delta_actors.db import job_sql

    params = {"kind": "call-api", "concurrency": 3, "rate_count": None, "rate_window": 0.0}
    row_version = "SELECT xmin::text FROM delta_limit WHERE kind = 'call-api'"
    with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
        first.execute(job_sql.LOCK_LIMIT, params)
        first.commit()  # the row exists, with these settings
        (before,) = first.execute(row_version).fetchone()  # type: ignore[misc]
        first.execute(job_sql.LOCK_LIMIT, params)  # unchanged: no new row version...
        second.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            second.execute(job_sql.LOCK_LIMIT, params)  # ...but locked all the same
        second.rollback()
        first.commit()
        second.execute(job_sql.LOCK_LIMIT, params)
        second.commit()
        assert first.execute(row_version).fetchone() == (before,)
        second.execute(job_sql.LOCK_LIMIT, {**params, "concurrency": 4})  # changed: written
        second.commit()
        assert first.execute(row_version).fetchone() != (before,)


async def test_the_leader_reads_resources_paused_namespaces_and_limited_waiting(dsn):
    from psycopg_pool import AsyncConnectionPool

    from delta_actors.leader.gauges import GaugeReader

    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        await client.inform_many([Account(key=f"g{i}") for i in range(5)])
        await client.enqueue_many([CallApi(n=i) for i in range(4)] + [Quick(n=1)])
        await client.pause("default")
        async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
            reader = GaugeReader(app, pool)
            await reader.run_once()  # a full count
            first = reader.gauges
            async with pool.connection() as conn:
                await conn.execute(
                    "UPDATE delta_resource SET state = 'degraded' WHERE object_id IN ('g0', 'g1')"
                )
            await reader.run_once()  # failed and degraded only: the rest as of the full count
            second = reader.gauges
    assert first is not None
    assert second is not None
    assert first.resources == [("limited-account", "scheduled", 5)]
    assert second.resources == [
        ("limited-account", "degraded", 2), ("limited-account", "scheduled", 5),
    ]  # fmt: skip
    assert second.paused == ["default"]
    assert second.limited_waiting == [("call-api", 4), ("limited-account", 5), ("throttled", 0)]
