"""Nothing dies silently: supervised leader duties, healing pools, health as progress."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import msgspec
import psycopg
import pytest

import delta_actors as delta
from delta_actors.db.connection import HEAL_WAIT, make_async_pool, make_pool
from delta_actors.health import ComponentHealth, Progress
from delta_actors.leader import duties as leader_module
from delta_actors.leader.duties import Leader
from delta_actors.ops.status import read_status
from delta_actors.ops.tables import render_status
from tests.objects import Keyed
from tests.waiting import wait_until, wait_until_async

LEASE_TTL = 3.0  # renewals every second, a fast hand-over


class Probe(Keyed, kind="probe"):
    pass


class ProbeController(delta.Controller[Probe]):
    """An informer that lists nothing and records when it ran."""

    inform_interval = 0.3
    runs: ClassVar[list[float]] = []

    async def work(self, resource: delta.Resource[Probe]) -> None:
        return None

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Probe]:
        self.runs.append(time.monotonic())
        for _ in ():
            yield Probe(key="never")


class Tick(delta.Job, kind="tick"):
    pass


def make_app() -> delta.App:
    ProbeController.runs = []
    return delta.App(
        controllers=[ProbeController()],
        jobs={Tick: lambda job: None},
        namespaces={"default": delta.Namespace(retention=0.0, completed_retention=0.0)},
    )


def make_leader(dsn: str, **intervals: float) -> Leader:
    """A leader candidate with fast duties (`rescuer=0.1`: seconds between passes)."""
    leader = Leader(make_app(), dsn, heartbeat_interval=0.2, lease_ttl=LEASE_TTL)
    for name, interval in intervals.items():
        getattr(leader, name).interval = interval
    return leader


async def started_leader(dsn: str, leader: Leader | None = None, **intervals: float) -> Leader:
    """`leader` (or a new one), started and, as the only candidate, leading."""
    leader = leader or make_leader(dsn, **intervals)
    await leader.start()
    await wait_until_async(lambda: leader.is_leader, 10, "leadership")
    return leader


def progress_of(leader: Leader, name: str) -> Progress:
    return next(d.progress for d in leader.duties if d.name == name)


async def count(dsn: str, query: str, *params: Any) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_crashed_duty_is_restarted_with_its_traceback_and_the_others_keep_going(
    dsn, monkeypatch, caplog
):
    monkeypatch.setattr(leader_module, "RESTART_DELAYS", (0.05, 0.2))
    leader = make_leader(dsn, rescuer=0.1)
    real_run = leader.promoter.run
    crashes = 0

    async def crashing_run(progress: Progress | None = None) -> None:
        nonlocal crashes
        if crashes < 2:
            crashes += 1
            raise RuntimeError(f"injected promoter crash {crashes}")
        await real_run(progress)

    rescuer_passes = 0
    real_rescue = leader.rescuer.run_once

    async def counting_rescue() -> dict[str, int]:
        nonlocal rescuer_passes
        rescuer_passes += 1
        return await real_rescue()

    leader.promoter.run = crashing_run  # type: ignore[method-assign]
    leader.rescuer.run_once = counting_rescue  # type: ignore[method-assign]
    caplog.set_level(logging.ERROR, logger="delta_actors.leader.duties")
    await started_leader(dsn, leader)
    try:
        passes_before = rescuer_passes
        await wait_until_async(lambda: crashes == 2, 5, "two crashes")
        client = await delta.AsyncClient.connect(dsn)
        try:
            job = await client.enqueue(Tick(), scheduled_at=datetime.now(UTC))
            await wait_until_async(
                lambda: count(dsn, "SELECT count(*) FROM delta_job WHERE id = %s AND "
                          "state = 'available'", job.id),
                5, "the restarted promoter to promote the due job",
            )  # fmt: skip
        finally:
            await client.close()
        await wait_until_async(
            lambda: rescuer_passes > passes_before + 3, 3, "the rescuer to keep going"
        )
        promoter = progress_of(leader, "promoter")
        assert promoter.restarts == 2
        assert promoter.crashes_in_a_row == 0, "progress after the restart resets the count"
        assert leader.is_leader, "two crashes must not make the leader resign"
        logged = [r for r in caplog.records if "leader duty promoter crashed" in r.getMessage()]
        assert len(logged) == 2
        assert all(r.exc_info is not None for r in logged), "crashes logged without traceback"
        assert "injected promoter crash 2" in logged[-1].getMessage()
    finally:
        await leader.stop()


async def test_a_pass_that_raises_anything_is_logged_and_the_duty_goes_on(dsn, caplog):
    leader = make_leader(dsn, expirer=0.1)
    real_expire = leader.expirer.run_once
    calls = 0

    async def failing_once() -> dict[str, int]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyError("not a database error")
        return await real_expire()

    leader.expirer.run_once = failing_once  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="delta_actors.leader.maintenance")
    await started_leader(dsn, leader)
    try:
        await wait_until_async(lambda: calls >= 4, 5, "passes after the failure")
        expirer = progress_of(leader, "expirer")
        assert expirer.restarts == 0, "a failed pass is not a crash"
        assert expirer.failures == 0, "progress after the failure resets the count"
        assert "KeyError" in expirer.last_error
        (record,) = [r for r in caplog.records if "leader.expirer failed" in r.getMessage()]
        assert record.levelno == logging.ERROR and record.exc_info is not None
    finally:
        await leader.stop()


async def test_a_duty_that_keeps_crashing_makes_the_leader_step_down_and_sit_out(dsn, monkeypatch):
    monkeypatch.setattr(leader_module, "RESTART_DELAYS", (0.01, 0.02))
    leader = make_leader(dsn)

    async def always_crashing(progress: Progress | None = None) -> None:
        raise RuntimeError("broken for good")

    leader.promoter.run = always_crashing  # type: ignore[method-assign]
    await leader.start()
    try:
        await wait_until_async(lambda: leader.terms_lost == 1, 10, "the leader to step down")
        stepped_down_at = time.monotonic()
        assert not leader.is_leader
        crashes = progress_of(leader, "promoter").crashes_in_a_row
        assert crashes == leader_module.RESIGN_AFTER_CRASHES
        # The lease was resigned (expired in the row), not left to lapse.
        await wait_until_async(
            lambda: count(dsn, "SELECT count(*) FROM delta_leader WHERE expires_at < now()"),
            3, "the lease to be resigned",
        )  # fmt: skip
        # It sits out one TTL, then campaigns again (and, alone, wins).
        await wait_until_async(lambda: leader.terms_led == 2, LEASE_TTL + 5, "a second term")
        assert time.monotonic() - stepped_down_at >= LEASE_TTL * 0.9
    finally:
        await leader.stop()


KILL_LEADER_POOL = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'delta-leader'
"""


async def test_every_duty_recovers_after_its_pool_connections_are_killed(dsn):
    """Kill the leader's pool connections for seconds: the lease stays; every duty, the
    informers and the cleaner included, makes progress again within a few intervals."""
    leader = await started_leader(dsn, rescuer=0.3, expirer=0.3, cleaner=0.3, gauges=0.3)
    term = leader.elector.term  # type: ignore[union-attr]
    client = await delta.AsyncClient.connect(dsn)
    try:
        await wait_until_async(lambda: len(ProbeController.runs) >= 2, 5, "informer runs")
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
            for _ in range(8):
                await admin.execute(KILL_LEADER_POOL)
                await asyncio.sleep(0.4)
        kills_ended = time.monotonic()
        assert leader.is_leader and leader.elector.term == term  # type: ignore[union-attr]
        # Cleanup: a finished job past retention goes; promotion: a due job is promoted.
        done = await client.enqueue(Tick())
        due = await client.enqueue(Tick(), scheduled_at=datetime.now(UTC) + timedelta(seconds=0.2))
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(
                "UPDATE delta_job SET state = 'completed', finalized_at = now() - interval '1h' "
                "WHERE id = %s",
                (done.id,),
            )

        async def cleaned() -> bool:
            return await count(dsn, "SELECT count(*) FROM delta_job WHERE id = %s", done.id) == 0

        await wait_until_async(cleaned, 5, "the cleaner to delete the finished job")
        await wait_until_async(
            lambda: count(dsn, "SELECT count(*) FROM delta_job WHERE id = %s "
                      "AND state = 'available'", due.id),
            5, "the promoter to promote the due job",
        )  # fmt: skip
        await wait_until_async(
            lambda: any(at > kills_ended for at in ProbeController.runs), 5, "an informer run"
        )
        await wait_until_async(
            lambda: all(h.since_progress < 1.0 and h.failures == 0 for h in leader.health()),
            5, "every duty to make progress",
        )  # fmt: skip
        assert all(h.restarts == 0 for h in leader.health()), leader.health()
        assert leader._pool.heals >= 1  # type: ignore[attr-defined]
    finally:
        await client.close()
        await leader.stop()


async def test_leader_health_reaches_status_and_a_stall_shows(dsn):
    leader = await started_leader(dsn)
    try:

        async def reported() -> bool:
            with psycopg.connect(dsn, autocommit=True) as conn:
                status = read_status(conn)
            return any(h.name == "informers" for a in status.actors for h in a.health)

        await wait_until_async(reported, 5, "the leader's health in delta_actor")
        with psycopg.connect(dsn, autocommit=True) as conn:
            status = read_status(conn)
        (actor,) = status.actors
        assert {h.name for h in actor.health} == {
            "promoter",
            "informers",
            "rescuer",
            "expirer",
            "cleaner",
            "gauges",
        }
        assert actor.stalled == []
        assert " ok" in render_status(status).split("ACTORS")[1].splitlines()[2]
        # A stall, as a heartbeat would report it: the table names it and its error.
        stalled = ComponentHealth(
            name="informers", interval=1.0, stall_after=10.0, since_progress=42.0,
            failures=7, restarts=0, last_error="TimeoutError: informers: a pass took longer",
        )  # fmt: skip
        as_stalled = msgspec.structs.replace(actor, health=[stalled])
        table = render_status(msgspec.structs.replace(status, actors=[as_stalled]))
        assert "informers stalled" in table and "TimeoutError" in table
    finally:
        await leader.stop()


async def test_an_async_pool_discards_all_dead_idle_connections_after_one_failure(dsn):
    size = 3
    pool = make_async_pool(
        dsn, min_size=size, max_size=size, name="delta-test-heal", heal_wait=HEAL_WAIT
    )
    await pool.open(wait=True)
    try:
        await wait_until_async(lambda: pool.get_stats()["pool_available"] == size, 5, "idle")
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'delta-test-heal'"
            )
        with pytest.raises(psycopg.OperationalError):
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
        # The failed caller came back only once the check was done (heal_wait), so every
        # connection the pool hands out next works: all three at once.
        assert pool._healing is not None and pool._healing.done()  # type: ignore[attr-defined]
        async with pool.connection() as a, pool.connection() as b, pool.connection() as c:
            for conn in (a, b, c):
                await conn.execute("SELECT 1")
        assert pool.get_stats().get("connections_lost", 0) == size - 1
    finally:
        await pool.close()


def test_a_sync_pool_discards_all_dead_idle_connections_after_one_failure(dsn):
    size = 3
    pool = make_pool(dsn, min_size=size, max_size=size, name="delta-test-heal-sync")
    pool.open(wait=True)
    try:
        wait_until(lambda: pool.get_stats()["pool_available"] == size, 5, "idle connections")
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'delta-test-heal-sync'"
            )
        with pytest.raises(psycopg.OperationalError), pool.connection() as conn:
            conn.execute("SELECT 1")
        with pool.connection() as a, pool.connection() as b, pool.connection() as c:
            for conn in (a, b, c):
                conn.execute("SELECT 1")
    finally:
        pool.close()
