"""Periodic jobs: enqueued by the leader alone, durable across restarts, once per period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

import delta_actors as delta
from delta_actors.leader.periodic import PeriodicScheduler
from delta_actors.ops.status import read_status
from delta_actors.ops.tables import render_status
from tests.integration.test_leader import _lead


class SendReport(delta.Job, kind="send-report"):
    day: str


class Cleanup(delta.Job, kind="cleanup", namespace="ops"):
    pass


async def handle(job: delta.Job) -> None:
    return None


def make_app(*periodic: delta.Periodic) -> delta.App:
    return delta.App(
        jobs={SendReport: handle, Cleanup: handle},
        namespaces={"default": delta.Namespace(), "ops": delta.Namespace()},
        periodic=periodic,
    )


async def jobs(dsn: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT kind, namespace, unique_key FROM delta_job ORDER BY id")
        return [tuple(row) for row in await cur.fetchall()]


async def set_next_run(dsn: str, name: str, at: datetime) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("UPDATE delta_periodic SET next_run_at = %s WHERE name = %s", (at, name))


async def test_a_periodic_runs_once_per_period_across_leaders_and_restarts(dsn):
    report = delta.Periodic(SendReport(day="today"), every=3600.0)
    app = make_app(report)
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        term = await _lead(dsn)
        first = PeriodicScheduler(app, pool)
        assert await first.run_once(term, 1) == {"registered": 1, "enqueued": 0}
        assert await first.run_once(term, 1) == {"registered": 0, "enqueued": 1}  # due at once
        assert await first.run_once(term, 1) == {"registered": 0, "enqueued": 0}
        # A restarted leader (a new scheduler) finds the stored schedule: no double.
        again = PeriodicScheduler(app, pool)
        assert await again.run_once(term, 1) == {"registered": 0, "enqueued": 0}
        # A leader that lost its term enqueues nothing, even when the run is due.
        await set_next_run(dsn, report.name, datetime.now(UTC) - timedelta(seconds=1))
        assert await again.run_once(term - 1, 1) == {"registered": 0, "enqueued": 0}
        assert await again.run_once(term, 2) == {"registered": 0, "enqueued": 0}  # not ours
        assert await again.run_once(term, 1) == {"registered": 0, "enqueued": 1}
    found = await jobs(dsn)
    assert [(kind, ns) for kind, ns, _ in found] == [("send-report", "default")] * 2
    assert len({key for _, _, key in found}) == 2  # one unique key per period
    with psycopg.connect(dsn, autocommit=True) as conn:
        status = read_status(conn)
    (shown,) = status.periodic
    assert (shown.name, shown.kind, shown.schedule, shown.runs) == (
        report.name, "send-report", "every 3600s", 2,
    )  # fmt: skip
    assert "PERIODIC JOBS" in render_status(status)


async def test_missed_periods_run_once_and_every_keeps_its_phase(dsn):
    cleanup = delta.Periodic(Cleanup(), every=60.0)
    app = make_app(cleanup)
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        term = await _lead(dsn)
        scheduler = PeriodicScheduler(app, pool)
        await scheduler.run_once(term, 1)
        due = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60 * 5 + 30)
        await set_next_run(dsn, cleanup.name, due)  # the cluster was down for five periods
        assert await scheduler.run_once(term, 1) == {"registered": 0, "enqueued": 1}
        assert await scheduler.run_once(term, 1) == {"registered": 0, "enqueued": 0}
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT next_run_at, last_run_at, runs FROM delta_periodic WHERE name = %s",
                (cleanup.name,),
            )
            next_run_at, last_run_at, runs = await cur.fetchone()  # type: ignore[misc]
    assert last_run_at == due
    assert next_run_at == due + timedelta(seconds=60 * 6)  # the phase kept, past now
    assert runs == 1
    assert [(kind, ns) for kind, ns, _ in await jobs(dsn)] == [("cleanup", "ops")]


def test_cron_schedules_follow_the_expression_in_their_timezone():
    now = datetime(2026, 12, 1, 12, 7, tzinfo=UTC)
    quarter = delta.Periodic(Cleanup(), cron="*/15 * * * *")
    assert quarter.first_run(now) == datetime(2026, 12, 1, 12, 15, tzinfo=UTC)
    assert quarter.next_run(datetime(2026, 12, 1, 12, 0, tzinfo=UTC), now) == datetime(
        2026, 12, 1, 12, 15, tzinfo=UTC
    )
    berlin = delta.Periodic(SendReport(day="x"), cron="0 9 * * *", timezone="Europe/Berlin")
    assert berlin.first_run(now) == datetime(2026, 12, 2, 8, 0, tzinfo=UTC)  # 09:00 CET
    every = delta.Periodic(SendReport(day="x"), every=10)
    assert every.first_run(now) == now
    assert every.next_run(now, now) == now + timedelta(seconds=10)
    # Two periodics of one job type with other arguments are two schedules.
    assert delta.Periodic(SendReport(day="a"), every=10).name != every.name


def test_periodic_mistakes_are_refused_naming_the_fix():
    with pytest.raises(delta.ConfigError, match="one schedule: every=SECONDS or cron="):
        delta.Periodic(Cleanup())
    with pytest.raises(delta.ConfigError, match="every= must be > 0 seconds"):
        delta.Periodic(Cleanup(), every=0)
    with pytest.raises(delta.ConfigError, match="is not a cron expression"):
        delta.Periodic(Cleanup(), cron="every tuesday")
    with pytest.raises(delta.ConfigError, match="not a known IANA zone"):
        delta.Periodic(Cleanup(), cron="0 9 * * *", timezone="Mars/Olympus")
    with pytest.raises(delta.ConfigError, match=r"add SendReport to App\(jobs=\.\.\.\)"):
        delta.App(jobs={Cleanup: handle}, namespaces={"ops": delta.Namespace()},
                  periodic=[delta.Periodic(SendReport(day="x"), every=60)])  # fmt: skip
    with pytest.raises(delta.ConfigError, match="two periodics are named"):
        make_app(delta.Periodic(Cleanup(), every=60), delta.Periodic(Cleanup(), every=60))
    with pytest.raises(delta.UnknownNamespaceError, match="unknown namespace 'mail'"):
        make_app(delta.Periodic(Cleanup(), every=60, namespace="mail"))
