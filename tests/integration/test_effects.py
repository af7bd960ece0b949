"""Effects: what a work informs and enqueues through `work_context()` commits with its
result, exactly once, and a work that does not succeed leaves none of it."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import psycopg
import pytest

import delta_actors as delta
from tests.integration.workers import running_worker
from tests.objects import Keyed
from tests.waiting import wait_until_async


class Order(Keyed, kind="fx-order"):
    email: str = "a@example.com"


class Invoice(Keyed, kind="fx-invoice"):
    pass


class SendEmail(delta.Job, kind="fx-send-email"):
    to: str


class Behaviour:
    def __init__(self) -> None:
        self.fail_first: set[str] = set()  # keys whose first attempt fails after its effects
        self.attempts: dict[str, int] = {}
        self.sent: list[str] = []
        self.read: list[Any] = []
        self.hang: set[str] = set()


class OrderController(delta.Controller[Order]):
    b: ClassVar[Behaviour] = Behaviour()
    timeout = 0.5

    async def work(self, resource: delta.Resource[Order]) -> None:
        key = resource.object.key
        ctx = delta.work_context()
        self.b.attempts[key] = self.b.attempts.get(key, 0) + 1
        ctx.inform(Invoice(key=f"inv-{key}"))
        ctx.enqueue(SendEmail(to=resource.object.email))
        self.b.read.append(await ctx.client.get(Order, key))
        if key in self.b.hang:
            await asyncio.sleep(3600)
        if key in self.b.fail_first and self.b.attempts[key] == 1:
            raise RuntimeError("the shop is down")
        if key == "bad":
            ctx.inform(Invoice(key=""))  # an id that cannot be stored: raises here
        if key.startswith("poison"):
            ctx.enqueue(Poison())  # valid, but the test's trigger refuses it


class Poison(delta.Job, kind="fx-poison"):
    pass


class InvoiceController(delta.Controller[Invoice]):
    def work(self, resource: delta.Resource[Invoice]) -> None:
        # A plain def: the context is this thread's too.
        delta.work_context().enqueue(SendEmail(to=f"books-{resource.object.key}"))


async def send_email(job: SendEmail) -> None:
    OrderController.b.sent.append(job.to)


@pytest.fixture
def behaviour() -> Behaviour:
    OrderController.b = Behaviour()
    return OrderController.b


def make_app() -> delta.App:
    return delta.App(
        controllers=[OrderController(), InvoiceController()],
        jobs={SendEmail: send_email, Poison: send_email},
    )


async def rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return [tuple(row) for row in await (await conn.execute(query)).fetchall()]


async def test_a_failed_work_leaves_nothing_and_the_retry_that_succeeds_leaves_one_of_each(
    dsn, behaviour
):
    behaviour.fail_first = {"o1"}
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        await client.inform(Order(key="o1"))
        # A slow retry, so that what the failed attempt left can be looked at first.
        async with running_worker(app, dsn, retry_policy=lambda attempt: 1.0):
            await wait_until_async(lambda: behaviour.attempts.get("o1") == 1, 5)
            await wait_until_async(
                lambda: _state(client, Order, "o1", delta.State.FAILED), 5, "o1 failed"
            )
            assert await client.get(Invoice, "inv-o1") is None
            assert await rows(dsn, "SELECT id FROM delta_job WHERE kind = 'fx-send-email'") == []
            await wait_until_async(lambda: _state(client, Order, "o1", delta.State.SYNCED), 5)
            await wait_until_async(lambda: _state(client, Invoice, "inv-o1", delta.State.SYNCED), 5)
            await wait_until_async(lambda: len(behaviour.sent) == 2, 5)
    assert behaviour.attempts == {"o1": 2}
    assert sorted(behaviour.sent) == ["a@example.com", "books-inv-o1"]
    jobs = await rows(dsn, "SELECT args FROM delta_job WHERE kind = 'fx-send-email'")
    assert len(jobs) == 2
    invoices = await rows(dsn, "SELECT object_id FROM delta_resource WHERE kind = 'fx-invoice'")
    assert invoices == [("inv-o1",)]
    assert behaviour.read[0] is not None  # the context's client reads
    assert behaviour.read[0].object_id == "o1"


async def test_a_timed_out_work_and_a_bad_effect_leave_nothing(dsn, behaviour):
    behaviour.hang = {"hung"}
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        await client.inform_many([Order(key="hung"), Order(key="bad")], max_attempts=1)
        async with running_worker(app, dsn):
            for key in ("hung", "bad"):
                await wait_until_async(
                    lambda key=key: _state(client, Order, key, delta.State.DEGRADED), 5, key
                )
        bad = await client.get(Order, "bad")
        assert bad is not None
        assert "Invoice.id() must return a string of 1..1024 bytes" in bad.errors[-1].error
        hung = await client.get(Order, "hung")
        assert hung is not None
        assert "timed out after 0.5s" in hung.errors[-1].error
    assert await rows(dsn, "SELECT id FROM delta_job WHERE kind = 'fx-send-email'") == []
    assert await rows(dsn, "SELECT id FROM delta_resource WHERE kind = 'fx-invoice'") == []


async def test_effects_the_database_refuses_fail_their_work_and_spare_the_rest(dsn, behaviour):
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'no poison here'; END $$"
        )
        await conn.execute(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON delta_job FOR EACH ROW "
            "WHEN (NEW.kind = 'fx-poison') EXECUTE FUNCTION refuse_poison()"
        )
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        await client.inform_many(
            [Order(key=f"poison-{i}") for i in range(3)] + [Order(key=f"ok-{i}") for i in range(5)],
            max_attempts=2,
        )
        async with running_worker(app, dsn):
            for i in range(3):
                await wait_until_async(
                    lambda i=i: _state(client, Order, f"poison-{i}", delta.State.DEGRADED), 10
                )
            for i in range(5):
                await wait_until_async(
                    lambda i=i: _state(client, Order, f"ok-{i}", delta.State.SYNCED), 10
                )
        poisoned = await client.get(Order, "poison-0")
        assert poisoned is not None
        assert poisoned.errors[-1].error.startswith(
            "its effects were refused by the database: RaiseException: no poison here"
        )
    assert behaviour.attempts["poison-0"] == 2
    invoices = await rows(dsn, "SELECT object_id FROM delta_resource WHERE kind = 'fx-invoice'")
    assert sorted(invoices) == [(f"inv-ok-{i}",) for i in range(5)]


def test_work_context_outside_a_work_names_where_it_is_available():
    with pytest.raises(delta.ConfigError, match=r"only available inside a controller's work\(\)"):
        delta.work_context()


async def _state(
    client: delta.AsyncClient, object_type: Any, key: str, wanted: delta.State
) -> bool:
    resource = await client.get(object_type, key)
    return resource is not None and resource.state is wanted


async def test_a_stale_result_writes_none_of_its_effects_and_a_current_one_all(dsn, behaviour):
    """Two results in one batch: one whose claim was taken from us meanwhile (rescued),
    one still ours. Only the current one's effects are written."""
    from psycopg_pool import AsyncConnectionPool

    from delta_actors.context import WorkContext
    from delta_actors.queue import results
    from delta_actors.queue.completer import Completer

    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        stale, current = await client.inform_many([Order(key="stale"), Order(key="current")])
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            # Claimed: `stale` by another actor (ours was rescued), `current` by actor 7.
            for found, actor in ((stale, 8), (current, 7)):
                await conn.execute(
                    "UPDATE delta_job SET state = 'running', attempt = 1, claimed_by = %s "
                    "WHERE resource_id = %s",
                    (actor, found.resource.id),
                )
            cur = await conn.execute(
                "SELECT resource_id, id FROM delta_job WHERE state = 'running'"
            )
            job_of = dict(await cur.fetchall())
        batch = []
        for found in (stale, current):
            ctx = WorkContext(client, app)
            ctx.enqueue(SendEmail(to=f"{found.resource.object_id}@example.com"))
            ctx.inform(Invoice(key=f"inv-{found.resource.object_id}"))
            synced = results.work_synced(job_of[found.resource.id], 1, found.resource.generation)
            batch.append(results.with_effects(synced, ctx.close()))
        written: list[set[int]] = []
        async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
            completer = Completer(
                pool,
                7,
                max_pending=10,
                on_written=lambda _, stale_ids, _f: written.append(stale_ids),
            )
            for result in batch:
                await completer.add(result)
            await completer._write_pending()
        assert written == [{job_of[stale.resource.id]}]
        emails = await rows(dsn, "SELECT args FROM delta_job WHERE kind = 'fx-send-email'")
        assert [bytes(args) for (args,) in emails] == [b'{"to":"current@example.com"}']
        assert await client.get(Invoice, "inv-stale") is None
        assert await client.get(Invoice, "inv-current") is not None
