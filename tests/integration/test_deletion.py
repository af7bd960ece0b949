"""Deletion that reaches the controller: one way out, finalize, revival, coalescing."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

import delta_actors as delta
from delta_actors.resources.informers import InformerScheduler
from tests.integration.test_leader import _lead
from tests.integration.workers import running_worker
from tests.objects import Keyed
from tests.waiting import wait_until_async


class Order(Keyed, kind="order"):
    body: str = ""


class Runs:
    """What the controller ran: (which, key, generation, start, end), and what to do."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str, int, float, float]] = []
        self.finalize_fails: dict[str, int] = {}  # key -> failures before it succeeds
        self.work_raises: dict[str, BaseException] = {}
        self.seconds = 0.0
        self.gate: asyncio.Event | None = None  # finalize waits on it when set
        self.listing: list[str] = []  # what the informer lists

    def of(self, which: str, key: str) -> list[tuple[str, str, int, float, float]]:
        return [run for run in self.runs if run[0] == which and run[1] == key]


class OrderController(delta.Controller[Order]):
    runs: ClassVar[Runs] = Runs()
    max_attempts = 3
    inform_interval = 3600.0
    tombstones: ClassVar[bool | str] = True  # type: ignore[misc]

    async def work(self, resource: delta.Resource[Order]) -> None:
        await self._run("work", resource)
        error = self.runs.work_raises.get(resource.object.key)
        if error is not None:
            raise error

    async def finalize(self, resource: delta.Resource[Order]) -> None:
        await self._run("finalize", resource)
        key = resource.object.key
        if self.runs.finalize_fails.get(key, 0) > 0:
            self.runs.finalize_fails[key] -= 1
            raise RuntimeError(f"the invoice of {key} is locked")

    async def _run(self, which: str, resource: delta.Resource[Order]) -> None:
        started = time.monotonic()
        try:
            if which == "finalize" and self.runs.gate is not None:
                await self.runs.gate.wait()
            await asyncio.sleep(self.runs.seconds)
        finally:
            self.runs.runs.append(
                (which, resource.object.key, resource.generation, started, time.monotonic())
            )

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Order]:
        for key in self.runs.listing:
            yield Order(key=key)


class Plain(Keyed, kind="plain-order"):
    pass


class PlainController(delta.Controller[Plain]):
    """No finalize: a deletion is final at once."""

    seen: ClassVar[list[str]] = []

    async def work(self, resource: delta.Resource[Plain]) -> None:
        type(self).seen.append(resource.object.key)
        await asyncio.sleep(0.3 if resource.object.key == "slow" else 0)


@pytest.fixture
def runs() -> Runs:
    OrderController.runs = Runs()
    OrderController.tombstones = True
    PlainController.seen = []
    return OrderController.runs


def make_app() -> delta.App:
    return delta.App(
        controllers=[OrderController(), PlainController()],
        namespaces={"default": delta.Namespace(max_workers=10)},
    )


async def state(client: delta.AsyncClient, object_type: Any, key: str) -> delta.State | None:
    resource = await client.get(object_type, key)
    return None if resource is None else resource.state


async def reaches(
    client: delta.AsyncClient, key: str, wanted: delta.State, object_type: Any = Order
) -> None:
    async def there() -> bool:
        return await state(client, object_type, key) is wanted

    await wait_until_async(there, 10, f"{key} {wanted}")


async def tombstone(dsn: str, app: delta.App) -> dict[str, Any]:
    """One full listing of the order informer, as the leader runs it."""
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        term = await _lead(dsn)
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO delta_informer (kind) VALUES ('order') ON CONFLICT DO NOTHING"
            )
            await conn.execute(
                "UPDATE delta_informer SET requested_at = now(), requested_full = true, "
                "next_run_at = now() WHERE kind = 'order'"
            )
        return await InformerScheduler(app, pool).run_informer("order", term, 1)


async def test_finalize_runs_once_for_each_of_the_three_ways_out(dsn, runs):
    runs.work_raises["raised"] = delta.Delete("gone upstream")
    runs.listing = ["kept"]
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        await client.inform_many([Order(key=k) for k in ("by-client", "raised", "gone", "kept")])
        async with running_worker(app, dsn):
            for key in ("by-client", "gone", "kept"):
                await reaches(client, key, delta.State.SYNCED)
            deleting = await client.delete(Order, "by-client")
            assert deleting is not None
            assert deleting.deletion_requested_at is not None
            await reaches(client, "raised", delta.State.DELETED)
            result = await tombstone(dsn, app)
            assert result["tombstoned"] == 1  # "gone": the other two are deleted already
            for key in ("by-client", "gone"):
                await reaches(client, key, delta.State.DELETED)
            await reaches(client, "kept", delta.State.SYNCED)
            await asyncio.sleep(0.3)  # nothing more runs
    assert sorted(run[1] for run in runs.runs if run[0] == "finalize") == [
        "by-client", "gone", "raised",
    ]  # fmt: skip


async def test_without_finalize_a_deletion_is_final_at_once_and_a_running_work_cannot_undo_it(
    dsn, runs
):
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        async with running_worker(app, dsn):
            await client.inform(Plain(key="slow"))
            await wait_until_async(lambda: "slow" in PlainController.seen, 5)
            deleted = await client.delete(Plain, "slow")  # while its work runs
            assert deleted is not None
            assert deleted.state is delta.State.RUNNING
            await reaches(client, "slow", delta.State.DELETED, Plain)
            await asyncio.sleep(0.5)  # the work's result arrives: generation moved on
            assert await state(client, Plain, "slow") is delta.State.DELETED
        await client.inform(Plain(key="queued"))
        queued = await client.delete(Plain, "queued")
        assert queued is not None
        assert queued.state is delta.State.DELETED
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT j.state::text FROM delta_job AS j JOIN delta_resource AS r "
            "ON r.id = j.resource_id WHERE r.object_id = 'queued'"
        )
        assert [row[0] for row in await cur.fetchall()] == ["cancelled"]


async def test_a_failing_finalize_retries_then_degrades_marked_and_a_retry_runs_it_again(dsn, runs):
    runs.finalize_fails["locked"] = 3
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        await client.inform(Order(key="locked"))
        async with running_worker(app, dsn):
            await reaches(client, "locked", delta.State.SYNCED)
            await client.delete(Order, "locked")
            await reaches(client, "locked", delta.State.DEGRADED)
            degraded = await client.get(Order, "locked")
            assert degraded is not None
            assert degraded.attempt == 3
            assert degraded.deletion_requested_at is not None
            assert degraded.errors[-1].error == "RuntimeError: the invoice of locked is locked"
            assert len(runs.of("finalize", "locked")) == 3
            again = await client.invalidate(Order, "locked")
            assert again is not None
            await reaches(client, "locked", delta.State.DELETED)
    assert len(runs.of("finalize", "locked")) == 4
    assert len(runs.of("work", "locked")) == 1


async def test_an_inform_of_a_newer_object_revives_during_and_after_deleting(dsn, runs):
    runs.gate = asyncio.Event()
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        await client.inform_many([Order(key="during"), Order(key="after")])
        async with running_worker(app, dsn):
            await reaches(client, "during", delta.State.SYNCED)
            await client.delete(Order, "during")
            await wait_until_async(lambda: runs.runs or runs.gate, 5)
            await reaches(client, "during", delta.State.RUNNING)  # finalize holds
            same = await client.inform(Order(key="during"))
            assert same.outcome is delta.InformOutcome.UNCHANGED  # not newer: no revival
            revived = await client.inform(Order(key="during", body="v2"))
            assert revived.outcome is delta.InformOutcome.UPDATED
            assert revived.resource.deletion_requested_at is None
            runs.gate.set()
            await reaches(client, "during", delta.State.SYNCED)
            await wait_until_async(lambda: len(runs.of("work", "during")) == 2, 5)
            assert runs.of("work", "during")[-1][2] == revived.resource.generation

            await client.delete(Order, "after")
            await reaches(client, "after", delta.State.DELETED)
            assert (await client.delete(Order, "after")) is not None  # a no-op
            back = await client.inform(Order(key="after", body="v2"))
            assert back.outcome is delta.InformOutcome.UPDATED
            await reaches(client, "after", delta.State.SYNCED)
            synced = await client.get(Order, "after")
            assert synced is not None
            assert synced.deletion_requested_at is None
    assert len(runs.of("finalize", "during")) == 1
    assert len(runs.of("finalize", "after")) == 1


async def test_never_a_work_and_a_finalize_of_one_resource_at_once(dsn, runs):
    """Informs and deletes of one resource race two workers: runs never overlap, and the
    last word wins (deleted after a last delete, synced after a last newer inform)."""
    runs.seconds = 0.02
    app = make_app()
    async with (
        await delta.AsyncClient.connect(dsn, app=app) as client,
        running_worker(app, dsn),
        running_worker(app, dsn),
    ):

        async def churn(start: int) -> None:
            for i in range(start, 40, 4):
                await client.inform(Order(key="hot", body=f"v{i:02d}"))
                await asyncio.sleep(0.01)
                await client.delete(Order, "hot")
                await asyncio.sleep(0.005)

        await asyncio.gather(*(churn(s) for s in range(4)))
        await reaches(client, "hot", delta.State.DELETED)
        last = await client.inform(Order(key="hot", body="final"))
        await reaches(client, "hot", delta.State.SYNCED)
    ordered = sorted(runs.of("work", "hot") + runs.of("finalize", "hot"), key=lambda r: r[3])
    for before, after in itertools.pairwise(ordered):
        assert before[4] <= after[3], f"{before[0]} and {after[0]} of one resource overlapped"
    assert {run[0] for run in ordered} == {"work", "finalize"}
    assert ordered[-1][0] == "work"
    assert ordered[-1][2] == last.resource.generation


async def test_delete_of_an_unknown_id_writes_nothing_and_delete_tx_rolls_back(dsn, runs):
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        assert await client.delete(Order, "nobody") is None
        await client.inform_many([Order(key="a"), Order(key="b")])
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            marked = await client.delete_tx(conn, Order, "a")
            assert marked is not None
            assert marked.state is delta.State.DELETING
            await conn.rollback()
        assert await state(client, Order, "a") is delta.State.SCHEDULED
        many = await client.delete_many(Order, ["b", "nobody", "a"])
        assert [r and (r.object_id, r.state) for r in many] == [
            ("b", delta.State.DELETING), None, ("a", delta.State.DELETING),
        ]  # fmt: skip
        with pytest.raises(delta.ConfigError, match="got the string 'a'"):
            await client.delete_many(Order, "a")
        with pytest.raises(delta.UnknownKindError, match="unknown kind 'plain-page'"):
            await client.delete(_Unregistered, "x")
    with delta.Client.connect(dsn) as bare:  # no app: deleting, a worker decides
        bare.inform(Plain(key="p"))
        deleting = bare.delete(Plain, "p")
        assert deleting is not None
        assert deleting.state is delta.State.DELETING
    async with (
        await delta.AsyncClient.connect(dsn, app=app) as client,
        running_worker(app, dsn),
    ):
        await reaches(client, "p", delta.State.DELETED, Plain)
    assert "p" not in PlainController.seen  # deleted without running its work
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM delta_resource WHERE object_id = 'nobody'")
        assert (await cur.fetchone()) == (0,)


class _Unregistered(Keyed, kind="plain-page"):
    pass


async def test_deleting_and_deleted_are_events_tombstones_included(dsn, runs):
    runs.listing = []
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        await client.inform_many([Order(key="x"), Order(key="y")])
        await client.inform(Plain(key="z"))
        async with (
            client.subscribe(events=["deleting", "deleted"]) as events,
            running_worker(app, dsn),
        ):
            await client.delete(Order, "x")
            await client.delete(Plain, "z")
            await reaches(client, "x", delta.State.DELETED)
            await tombstone(dsn, app)
            await reaches(client, "y", delta.State.DELETED)
            seen: list[tuple[str, str, str | None]] = []
            async for event in events:
                if isinstance(event, delta.Event):
                    seen.append((event.id, event.event.value, event.error))
                if len(seen) == 5:
                    break
    assert sorted(seen) == [
        ("x", "deleted", None),
        ("x", "deleting", None),
        ("y", "deleted", None),
        ("y", "deleting", "tombstoned: not in a full listing of its informer"),
        ("z", "deleted", None),
    ]


async def test_tombstones_listed_takes_only_what_an_informer_stored_or_listed(dsn, runs):
    OrderController.tombstones = "listed"
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        await client.inform_many([Order(key="by-app"), Order(key="both")])
        runs.listing = ["by-informer", "both"]
        first = await tombstone(dsn, app)
        assert first["tombstoned"] == 0  # by-app was never listed
        runs.listing = []
        second = await tombstone(dsn, app)
        assert second["tombstoned"] == 2
        assert await state(client, Order, "by-app") is delta.State.SCHEDULED
        for key in ("by-informer", "both"):
            assert await state(client, Order, key) is delta.State.DELETING
        OrderController.tombstones = True
        third = await tombstone(dsn, app)
        assert third["tombstoned"] == 1
        assert await state(client, Order, "by-app") is delta.State.DELETING
    OrderController.tombstones = "all"
    with pytest.raises(delta.ConfigError, match='tombstones must be False, True or "listed"'):
        make_app()
