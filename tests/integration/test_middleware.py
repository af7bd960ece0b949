"""`App(middleware=[...])`: both forms wrap every work, finalize and plain job, in order,
inside the run's context, see its outcome, and a middleware that raises fails the run
without hurting the worker."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

import delta_actors as delta
from tests.integration.workers import running_worker
from tests.objects import Keyed
from tests.waiting import wait_until_async

TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")
LOG: list[Any] = []


class Shop(Keyed, kind="mw-shop"):
    pass


class Till(Keyed, kind="mw-till"):
    pass


class Ping(delta.Job, kind="mw-ping"):
    n: int


class ShopController(delta.Controller[Shop]):
    timeout = 0.3

    async def work(self, resource: delta.Resource[Shop]) -> None:
        key = resource.object.key
        LOG.append(("work", key, TENANT.get(), delta.work_context() is not None))
        if key == "boom":
            raise RuntimeError("the shop burned")
        if key == "later":
            raise delta.Requeue(after=3600)
        if key == "slow":
            await asyncio.sleep(5)

    async def finalize(self, resource: delta.Resource[Shop]) -> None:
        LOG.append(("finalize", resource.object.key, TENANT.get()))


class TillController(delta.Controller[Till]):
    def work(self, resource: delta.Resource[Till]) -> None:  # a plain def: in a thread
        LOG.append(("sync work", resource.object.key, TENANT.get(), delta.work_context()))


async def ping(job: Ping) -> None:
    LOG.append(("job", job.n, TENANT.get()))


@contextlib.asynccontextmanager
async def tenancy(call: delta.Call) -> AsyncIterator[None]:
    LOG.append(("enter tenancy", call.handler, call.kind, call.id, call.attempt, call.generation))
    token = TENANT.set(f"tenant-of-{call.id}")
    try:
        yield
    finally:
        TENANT.reset(token)
        LOG.append(("exit tenancy", call.id))


async def report(call: delta.Call, proceed: Any) -> None:
    assert call.handler == "job" or delta.work_context() is not None
    try:
        await proceed()
    except BaseException as exc:
        LOG.append(("reported", call.id, type(exc).__name__))
        raise
    LOG.append(("returned", call.id))


def _app(*middleware: Any) -> delta.App:
    return delta.App(
        controllers=[ShopController(), TillController()], jobs={Ping: ping},
        middleware=list(middleware),
    )  # fmt: skip


def _entries(name: str) -> list[Any]:
    return [entry for entry in LOG if entry[0] == name]


async def _state(client: delta.AsyncClient, key: str) -> delta.State | None:
    resource = await client.get(Shop, key)
    return None if resource is None else resource.state


async def test_both_forms_wrap_each_run_in_order_inside_its_context(dsn):
    LOG.clear()
    async with (
        running_worker(_app(tenancy, report), dsn) as worker,
        await delta.AsyncClient.connect(dsn) as client,
    ):
        await client.inform(Shop(key="s1"))
        await client.inform(Till(key="t1"))
        job = await client.enqueue(Ping(n=7))
        await wait_until_async(lambda: worker.stats.completed >= 3)
        await client.delete(Shop, "s1")
        await wait_until_async(lambda: worker.stats.deleted >= 1)
    shop = [e for e in LOG if e[1] == "s1" or (len(e) > 3 and e[3] == "s1")]
    assert shop[:4] == [
        ("enter tenancy", "work", "mw-shop", "s1", 1, 1),
        ("work", "s1", "tenant-of-s1", True),   # the middleware's contextvar, work_context open
        ("returned", "s1"),                     # inner middleware exits first
        ("exit tenancy", "s1"),
    ]  # fmt: skip
    assert ("enter tenancy", "finalize", "mw-shop", "s1", 1, 2) in LOG
    assert ("finalize", "s1", "tenant-of-s1") in LOG
    (sync_work,) = _entries("sync work")
    assert sync_work[2] == "tenant-of-t1" and sync_work[3] is not None  # in the thread too
    assert ("job", 7, f"tenant-of-{job.id}") in LOG
    assert ("enter tenancy", "job", "mw-ping", str(job.id), 1, None) in LOG


async def test_middleware_sees_every_outcome_as_the_handler_ended(dsn):
    LOG.clear()
    async with (
        running_worker(_app(report), dsn) as worker,
        await delta.AsyncClient.connect(dsn) as client,
    ):
        await client.inform_many([Shop(key="boom"), Shop(key="later"), Shop(key="slow")])
        await wait_until_async(lambda: len(_entries("reported")) >= 3, timeout=10)
        assert await _state(client, "later") is delta.State.SCHEDULED
        assert worker.stats.failed >= 2
    reported = {entry[1]: entry[2] for entry in _entries("reported")}
    assert reported == {"boom": "RuntimeError", "later": "Requeue", "slow": "HandlerTimeout"}
    assert issubclass(delta_timeout_type(), TimeoutError)


def delta_timeout_type() -> type[BaseException]:
    from delta_actors.queue.runner import HandlerTimeout

    return HandlerTimeout


async def test_a_middleware_that_raises_fails_the_run_and_the_worker_goes_on(dsn):
    LOG.clear()
    refuse = {"s1", "s2"}

    @contextlib.asynccontextmanager
    async def gate(call: delta.Call) -> AsyncIterator[None]:
        if call.id in refuse:
            raise PermissionError(f"tenant of {call.id} is suspended")
        yield

    async def after(call: delta.Call, proceed: Any) -> None:
        await proceed()
        if call.id == "s2":
            raise ValueError("the metrics backend is down")

    def not_a_manager(call: delta.Call) -> object:
        return object() if call.id == "s3" else contextlib.nullcontext()

    refuse.discard("s2")
    async with (
        running_worker(_app(gate, after, not_a_manager), dsn) as worker,
        await delta.AsyncClient.connect(dsn) as client,
    ):
        await client.inform_many([Shop(key=k) for k in ("s1", "s2", "s3", "s4")])
        await wait_until_async(lambda: _states_are(dsn, {"failed": 3, "synced": 1}))
        resources = {k: await client.get(Shop, k) for k in ("s1", "s2", "s3", "s4")}
        assert worker.stats.failed >= 3  # retried at once (no backoff in tests)
    errors = {k: r.errors[-1].error if r and r.errors else None for k, r in resources.items()}
    assert "PermissionError: tenant of s1 is suspended" in str(errors["s1"])
    assert "ValueError: the metrics backend is down" in str(errors["s2"])
    assert "not an async context manager" in str(errors["s3"])
    assert resources["s4"] is not None and resources["s4"].state is delta.State.SYNCED
    assert [e[1] for e in _entries("work")].count("s1") == 0  # the gate kept it out


async def _states_are(dsn: str, expected: dict[str, int]) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT state::text, count(*) FROM delta_resource GROUP BY 1")
        return dict(await cur.fetchall()) == expected


def test_mistaken_middleware_is_refused_when_the_app_is_made():
    async def one_argument(call: delta.Call) -> None:
        pass

    with pytest.raises(delta.ConfigError, match=r"must take \(call, proceed\)"):
        _app(one_argument)
    with pytest.raises(delta.ConfigError, match=r"is not callable"):
        _app("tenancy")
    with pytest.raises(delta.ConfigError, match=r"middleware must be a list"):
        delta.App(middleware=tenancy)  # type: ignore[arg-type]


async def test_an_app_without_middleware_runs_as_before(dsn):
    """No chain: the handler is called directly, and the deadline still holds."""
    LOG.clear()
    app = delta.App(controllers=[ShopController()])
    own = [wrap for wrap in app.middleware if wrap.function is not _tracing_middleware()]
    assert own == []
    async with (
        running_worker(app, dsn) as worker,
        await delta.AsyncClient.connect(dsn) as client,
    ):
        await client.inform(Shop(key="slow"))
        await wait_until_async(lambda: _states_are(dsn, {"failed": 1}), timeout=10)
        slow = await client.get(Shop, "slow")
        assert worker.stats.failed == 1
    # Cancelled at its 0.3 s deadline: a work that ran out its 5 s sleep would be synced.
    assert slow is not None and "timed out after 0.3s" in slow.errors[-1].error


def _tracing_middleware() -> Any:
    from delta_actors import tracing

    return tracing.trace_run
