"""Informers under control: run on request, bounded by a timeout, every run recorded."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

import delta_actors as delta
from delta_actors.leader.duties import Leader
from delta_actors.ops.status import read_status
from delta_actors.ops.tables import render_status
from delta_actors.resources.informers import InformerScheduler
from delta_actors.runtime import protocol
from delta_actors.runtime.metrics import SupervisorMetrics
from tests.integration.test_leader import _lead
from tests.objects import Keyed
from tests.unit.test_metrics import samples
from tests.waiting import wait_until_async

CLI = [sys.executable, "-c", "from delta_actors.ops.cli import main; main()"]


class Page(Keyed, kind="page"):
    pass


class PageController(delta.Controller[Page]):
    """Lists two pages an hour, or hangs when told to; records what it was asked."""

    inform_interval = 3600.0
    inform_timeout = 0.3
    hang = False
    seen: ClassVar[list[delta.InformOptions]] = []

    async def work(self, resource: delta.Resource[Page]) -> None:
        return None

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Page]:
        type(self).seen.append(options)
        yield Page(key="p1")
        if self.hang:
            await asyncio.sleep(3600)
        yield Page(key="p2")


class Plain(Keyed, kind="plain-page"):
    pass


class PlainController(delta.Controller[Plain]):
    async def work(self, resource: delta.Resource[Plain]) -> None:
        return None


def make_app(*, hang: bool = False) -> delta.App:
    PageController.seen = []
    PageController.hang = hang
    return delta.App(controllers=[PageController(), PlainController()])


async def one(dsn: str, query: str, *params: Any) -> tuple[Any, ...]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        row = await (await conn.execute(query, params)).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return tuple(row)


async def test_a_hung_informer_times_out_its_cursor_stays_and_the_run_is_recorded(dsn):
    app = make_app(hang=True)
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        term = await _lead(dsn)
        scheduler = InformerScheduler(app, pool)
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO delta_informer (kind) VALUES ('page')")
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await scheduler.run_informer("page", term, 1)
        assert loop.time() - started < 2.0, "the timeout did not stop the run"
    assert "ran past its inform_timeout of 0.3s" in result["error"]
    assert result["objects"] == 1, "what was listed before the timeout is kept"
    cursor, failures, error = await one(
        dsn, "SELECT cursor, failures, last_error FROM delta_informer WHERE kind = 'page'"
    )
    assert cursor is None and failures == 1
    assert "InformerTimeout" in error
    finished, objects, run_error, full = await one(
        dsn, "SELECT finished_at, objects, error, full_listing FROM delta_informer_run"
    )
    assert finished is not None and objects == 1 and full
    assert "InformerTimeout: informer page ran past its inform_timeout" in run_error
    with psycopg.connect(dsn, autocommit=True) as conn:
        status = read_status(conn)
    (informer,) = status.informers
    assert informer.kind == "page" and informer.failures == 1 and informer.runs == 0
    assert informer.last_error.startswith("delta_actors.resources.informers.InformerTimeout")
    assert "INFORMERS" in render_status(status) and "InformerTimeout" in render_status(status)
    assert scheduler.runs == {"page": {"error": 1}}


async def test_run_informer_from_a_client_without_an_app_runs_it_now_full_or_not(dsn):
    leader = Leader(make_app(), dsn, heartbeat_interval=0.2, lease_ttl=3.0)
    await leader.start()
    client = await delta.AsyncClient.connect(dsn)  # no app: the request goes by name
    try:
        await wait_until_async(lambda: len(PageController.seen) == 1, 10, "the first run")
        assert PageController.seen[0].full  # the first run lists everything
        await client.run_informer("page")  # due in an hour: runs now, after its cursor
        await wait_until_async(lambda: len(PageController.seen) == 2, 5, "the requested run")
        assert not PageController.seen[1].full
        await client.run_informer(Page, full=True)
        await wait_until_async(lambda: len(PageController.seen) == 3, 5, "the full run")
        assert PageController.seen[2].full
        await asyncio.sleep(1.5)  # two checks of the scheduler: a request runs once
        assert len(PageController.seen) == 3
        requested = await one(
            dsn, "SELECT count(*) FILTER (WHERE requested), count(*) FROM delta_informer_run"
        )
        assert requested == (2, 3)
        await wait_until_async(
            lambda: dict(leader.informer_runs()[0][1]) == {"success": 3}, 5, "the counts"
        )
        ((kind, _, last_success),) = leader.informer_runs()
        assert kind == "page" and last_success is not None
        with pytest.raises(delta.UnknownKindError, match=r"no informer of kind 'nope'.*page"):
            await client.run_informer("nope")
    finally:
        await client.close()
        await leader.stop()


async def test_run_informer_refuses_a_kind_whose_controller_lists_nothing(dsn):
    client = await delta.AsyncClient.connect(dsn, app=make_app())
    try:
        with pytest.raises(delta.UnknownKindError, match=r"no informer of kind 'plain-page'"):
            await client.run_informer(Plain)
    finally:
        await client.close()


def test_the_inform_command_asks_for_a_run_and_names_unknown_kinds(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO delta_informer (kind) VALUES ('page')")
    done = subprocess.run(
        [*CLI, "inform", "page", "--full", "--dsn", dsn], capture_output=True, text=True,
        check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "asked the leader to run the page informer now (a full listing)" in done.stdout
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT requested_at IS NOT NULL, requested_full FROM delta_informer"
        ).fetchone()
    assert row == (True, True)
    unknown = subprocess.run(
        [*CLI, "inform", "nope", "--dsn", dsn], capture_output=True, text=True, check=False,
        timeout=60,
    )  # fmt: skip
    assert unknown.returncode == 1
    assert "no informer of kind 'nope' in this database (informers: page)" in unknown.stderr


def test_informer_metrics_count_runs_and_keep_them_across_restarts():
    metrics = SupervisorMetrics()
    metrics.actor_started("leader", "leader")

    def beat(ok: int, failed: int, at: float | None) -> protocol.Heartbeat:
        tally = protocol.InformerTally("page", {"success": ok, "error": failed}, at)
        message = protocol.Heartbeat(0, 0, 0, 0, 0, informers=[tally])
        (decoded,) = protocol.FrameReader().feed(protocol.encode(message))
        assert isinstance(decoded, protocol.Heartbeat)
        return decoded

    metrics.actor_heartbeat("leader", beat(3, 1, 1000.0))
    metrics.actor_ended("leader")  # a restart: the counts of the ended process stay
    metrics.actor_started("leader", "leader")
    metrics.actor_heartbeat("leader", beat(1, 0, 2000.0))
    found = samples(metrics)
    assert (
        found[("delta_informer_runs_total", frozenset({("kind", "page"), ("result", "success")}))]
        == 4
    )
    assert (
        found[("delta_informer_runs_total", frozenset({("kind", "page"), ("result", "error")}))]
        == 1
    )
    key = ("delta_informer_last_success_timestamp_seconds", frozenset({("kind", "page")}))
    assert found[key] == 2000.0


async def test_a_tombstoned_resource_is_a_deleted_event_for_subscribers(dsn):
    """The full listing that tombstones writes the event, as a work's result would."""
    app = make_app()
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        client = delta.AsyncClient(pool)
        await client.inform_many([Page(key="p1"), Page(key="gone")])
        async with pool.connection() as conn:
            await conn.execute("UPDATE delta_resource SET updated_at = now() - interval '1 minute'")
            await conn.execute("INSERT INTO delta_informer (kind) VALUES ('page')")
        term = await _lead(dsn)
        PageController.tombstones = True
        try:
            async with client.subscribe(kinds=[Page], events=["deleted"]) as subscription:
                result = await InformerScheduler(app, pool).run_informer("page", term, 1)
                assert result["tombstoned"] == 1
                event = await asyncio.wait_for(anext(aiter(subscription)), 10)
        finally:
            PageController.tombstones = False
    assert isinstance(event, delta.Event)
    assert (event.kind, event.id, event.event) == ("page", "gone", delta.State.DELETED)
    assert event.error is not None and "tombstoned" in event.error
