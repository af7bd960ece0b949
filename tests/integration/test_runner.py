"""The inline test Runner (delta.testing) drives the real claim, run and result paths, its
clock moved by the test; these tests use the plugin's fixtures (`delta_app` overridden)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

import delta_actors as delta
from delta_actors.testing import AsyncRunner, NotIdleError, Runner
from delta_actors.testing.databases import UnpooledAsyncPool


class Order(delta.Object, kind="order"):
    key: str
    total: int = 0
    at: datetime | None = None

    def id(self) -> str:
        return self.key

    def created_at(self) -> datetime | None:
        return self.at


class Invoice(delta.Object, kind="invoice"):
    order: str

    def id(self) -> str:
        return self.order


class Receipt(delta.Job, kind="send-receipt"):
    order: str


class Orders(delta.Controller[Order]):
    """Runs what `plan` says for a key (an exception, a callable), else syncs and informs
    an invoice and enqueues a receipt, as effects; lists `listing` as its informer."""

    max_attempts = 3
    timeout = 5.0
    inform_interval = 600.0

    def __init__(self) -> None:
        self.plan: dict[str, object] = {}
        self.seen: list[tuple[str, int, int]] = []  # (key, generation, attempt)
        self.finalized: list[str] = []
        self.listing: list[Order] = []
        self.asked: list[delta.InformOptions] = []

    async def work(self, resource: delta.Resource[Order]) -> None:
        self.seen.append((resource.object_id, resource.generation, resource.attempt))
        step = self.plan.get(resource.object_id)
        if isinstance(step, BaseException):
            raise step
        if callable(step):
            await step()
        ctx = delta.work_context()
        ctx.inform(Invoice(order=resource.object_id))
        ctx.enqueue(Receipt(order=resource.object_id))

    async def finalize(self, resource: delta.Resource[Order]) -> None:
        self.finalized.append(resource.object_id)

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Order]:
        self.asked.append(options)
        for order in self.listing:
            yield order


class Invoices(delta.Controller[Invoice]):
    def work(self, resource: delta.Resource[Invoice]) -> None:  # a plain def, in a thread
        return None


receipts: list[str] = []
DAY = 86400.0  # seconds


def send_receipt(job: Receipt) -> None:
    receipts.append(job.order)


@pytest.fixture
def orders() -> Orders:
    return Orders()


@pytest.fixture
def delta_app(orders: Orders) -> delta.App:
    """Overrides the plugin's: its clients route and limit objects by this app."""
    return delta.App(controllers=[orders, Invoices()], jobs={Receipt: send_receipt})


def test_a_work_syncs_and_its_effects_run_in_the_same_call(delta_app, delta_client):
    receipts.clear()
    runner = Runner(delta_app, delta_client)
    delta_client.inform(Order(key="o1", total=10))
    results = runner.run_until_idle()
    assert results.synced == ["order/o1", "invoice/o1"]
    assert results.completed == [Receipt(order="o1")]
    assert receipts == ["o1"]
    assert [type(r).__name__ for r in results.runs] == ["WorkRun", "WorkRun", "JobRun"]
    resource = delta_client.get(Invoice, "o1")
    assert resource is not None and resource.state is delta.State.SYNCED
    assert runner.run_until_idle().runs == []


def test_a_failed_work_writes_no_effects_and_fails_twice_then_degrades(
    orders, delta_app, delta_client
):
    orders.plan = {"o1": RuntimeError("provider down")}
    # A day between attempts: only the test's clock gets through it, never a sleep.
    runner = Runner(delta_app, delta_client, retry_policy=lambda attempt: DAY)
    delta_client.inform(Order(key="o1"))
    first = runner.run_until_idle()
    assert first.failed == ["order/o1"]
    assert first.errors == ["RuntimeError: provider down"]
    # Due in a day: not before (real time passes too; 10 s is this test's margin for it).
    assert runner.advance(DAY - 10.0).runs == []
    assert 0 < (runner.next_due_in() or 0) <= 10.0
    assert runner.advance(10.0).failed == ["order/o1"]
    last = runner.advance(DAY)
    assert (last.failed, last.degraded) == ([], ["order/o1"])
    assert runner.advanced == 2 * DAY
    assert [attempt for _, _, attempt in orders.seen] == [0, 1, 2]
    assert delta_client.get(Invoice, "o1") is None
    assert delta_client.list_jobs(Receipt).items == []
    assert runner.advance(3600.0).runs == []
    assert runner.next_due_in() is None


class Refund(delta.Object, kind="refund"):
    key: str

    def id(self) -> str:
        return self.key


class Refunds(delta.Controller[Refund]):
    namespace = "billing"
    max_attempts = 2

    async def work(self, resource: delta.Resource[Refund]) -> None:
        if resource.object_id == "bad":
            raise RuntimeError("the bank is down")


def test_a_client_without_an_app_takes_the_runners_so_its_objects_run_as_deployed(delta_dsn):
    """The issue's example as written (no `delta_app`): the Runner gives the client its
    app, so an object lands in its controller's namespace with its `max_attempts`."""
    app = delta.App(controllers=[Refunds()], namespaces={"billing": delta.Namespace()})
    with delta.Client.connect(delta_dsn) as client:
        runner = Runner(app, client, retry_policy=lambda attempt: 60.0)
        assert client.app is app
        client.inform_many([Refund(key="ok"), Refund(key="bad")])
        results = runner.run_until_idle()
        assert (results.synced, results.failed) == (["refund/ok"], ["refund/bad"])
        assert runner.advance(60.0).degraded == ["refund/bad"]  # its 2nd attempt: the last
        bad = client.get(Refund, "bad")
        assert bad is not None and (bad.namespace, bad.max_attempts) == ("billing", 2)
    other = delta.App(controllers=[Refunds()], namespaces={"billing": delta.Namespace()})
    with delta.Client.connect(delta_dsn, app=other) as client:
        Runner(app, client)
        assert client.app is other  # a client's own app is left alone
    async_client = delta.AsyncClient(UnpooledAsyncPool(delta_dsn))  # the plugin's kind
    AsyncRunner(app, async_client)
    assert async_client.app is app


class Sale(delta.Object, kind="sale"):
    id: str  # the id as a field, instead of an id() method
    total: int


class Sales(delta.Controller[Sale]):
    async def work(self, resource: delta.Resource[Sale]) -> None:
        assert resource.object.total == 10


def test_the_issues_example_as_written_with_an_id_field(delta_dsn):
    """`Sale(id="s1", total=10)`: an object whose id is its `id` field, informed by a
    client without an app and run by the Runner (this module's `delta_client` has one)."""
    with delta.Client.connect(delta_dsn) as client:
        runner = Runner(delta.App(controllers=[Sales()]), client)
        client.inform(Sale(id="s1", total=10))
        results = runner.run_until_idle()
        assert results.synced == ["sale/s1"]
        stored = client.get(Sale, "s1")
        assert stored is not None and stored.object == Sale(id="s1", total=10)
        with pytest.raises(delta.ConfigError, match=r"Sale\.id must return a string"):
            client.inform(Sale(id="", total=1))


def test_a_requeue_runs_again_when_the_clock_reaches_it_uncounted(orders, delta_app, delta_client):
    orders.plan = {"o1": delta.Requeue(after=120)}
    runner = Runner(delta_app, delta_client)
    delta_client.inform(Order(key="o1"))
    assert runner.run_until_idle().requeued == ["order/o1"]
    assert runner.advance(100.0).runs == []
    orders.plan.clear()
    assert runner.advance(20.0).synced == ["order/o1", "invoice/o1"]
    assert [attempt for _, _, attempt in orders.seen] == [0, 0]


def test_permanent_error_degrades_and_delete_runs_the_finalizer(orders, delta_app, delta_client):
    orders.plan = {"bad": delta.PermanentError("no such account"), "gone": delta.Delete("closed")}
    runner = Runner(delta_app, delta_client)
    delta_client.inform_many([Order(key="bad"), Order(key="gone"), Order(key="kept")])
    results = runner.run_until_idle()
    assert results.degraded == ["order/bad"]
    assert results.deleting == ["order/gone"]
    assert results.deleted == ["order/gone"]
    assert [run.finalize for run in results.works if run.key == "order/gone"] == [False, True]
    assert orders.finalized == ["gone"]
    delta_client.delete(Order, "kept")
    assert runner.run_until_idle().deleted == ["order/kept"]
    assert orders.finalized == ["gone", "kept"]
    kept = delta_client.get(Order, "kept")
    assert kept is not None and kept.state is delta.State.DELETED


def test_a_change_during_a_work_gets_one_follow_up_with_the_newest_object(
    orders, delta_app, delta_client
):
    async def change() -> None:
        if len(orders.seen) == 1:
            async with await delta.AsyncClient.connect(delta_client_dsn(delta_client)) as other:
                await other.inform(Order(key="o1", total=2))

    orders.plan = {"o1": change}
    runner = Runner(delta_app, delta_client)
    delta_client.inform(Order(key="o1", total=1))
    results = runner.run_until_idle()
    assert [key for key, _, _ in orders.seen] == ["o1", "o1"]
    assert [generation for _, generation, _ in orders.seen] == [1, 2]
    assert results.synced.count("order/o1") == 2


def delta_client_dsn(client: delta.Client) -> str:
    return str(client._pool.conninfo)


class Hasty(Orders):
    timeout = 0.2


def test_a_work_past_its_timeout_fails_and_the_runner_goes_on(delta_client):
    async def hang() -> None:
        await asyncio.sleep(60)

    orders = Hasty()
    orders.plan = {"slow": hang}
    app = delta.App(controllers=[orders, Invoices()], jobs={Receipt: send_receipt})
    runner = Runner(app, delta_client, retry_policy=lambda attempt: 10.0)
    delta_client.inform_many([Order(key="slow"), Order(key="fast")])
    results = runner.run_until_idle()
    assert results.failed == ["order/slow"]
    assert "timed out after 0.2s" in results.works[0].error
    assert "order/fast" in results.synced


def test_a_requeue_loop_stops_at_max_runs_naming_it(orders, delta_app, delta_client):
    orders.plan = {"loop": delta.Requeue(after=0)}
    runner = Runner(delta_app, delta_client, max_runs=20)
    delta_client.inform(Order(key="loop"))
    with pytest.raises(NotIdleError, match=r"after 20 runs .*order/loop requeued"):
        runner.run_until_idle()


def test_informers_run_on_demand_and_when_due_on_the_clock(orders, delta_app, delta_client):
    early, late = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    orders.listing = [Order(key="a", at=early), Order(key="b", at=late)]
    runner = Runner(delta_app, delta_client)
    assert runner.run_until_idle().informers == []  # informers run only when asked
    first = runner.run_until_idle(informers=True)  # a first run is due at once
    assert [(r.kind, r.full, r.objects) for r in first.informers] == [("order", True, 2)]
    assert sorted(first.synced) == ["invoice/a", "invoice/b", "order/a", "order/b"]
    assert runner.run_until_idle(informers=True).informers == []  # next due in 600 s
    second = runner.advance(661.0, informers=True)  # the interval, plus its 10 % jitter
    assert [(r.full, r.objects) for r in second.informers] == [(False, 2)]
    assert orders.asked[1].after == late  # the cursor moved to the newest created_at
    assert second.synced == []  # unchanged objects make no work
    run = runner.run_informer(Order, full=True)
    assert (run.full, run.objects, run.error) == (True, 2, None)
    assert orders.asked[2] == delta.InformOptions(after=None, full=True)


def test_a_failing_informer_is_reported_and_keeps_its_cursor(orders, delta_app, delta_client):
    async def broken(options: delta.InformOptions) -> AsyncIterator[Order]:
        yield Order(key="a")
        raise RuntimeError("listing failed")

    orders.inform = broken  # type: ignore[method-assign]
    runner = Runner(delta_app, delta_client)
    run = runner.run_informer("order")
    assert (run.objects, run.error) == (1, "listing failed")
    assert runner.run_until_idle().synced == ["order/a", "invoice/a"]


def test_each_call_leaves_no_actor_lease_or_connection_behind(delta_app, delta_client, delta_dsn):
    runner = Runner(delta_app, delta_client)
    delta_client.inform(Order(key="o1"))
    runner.run_until_idle(informers=True)
    runner.run_informer(Order)
    with psycopg.connect(delta_dsn, autocommit=True) as conn:
        actors = conn.execute("SELECT count(*) FROM delta_actor").fetchone()
        leases = conn.execute("SELECT count(*) FROM delta_leader WHERE expires_at > now()")
        sessions = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE '%%test-runner%%'"
        ).fetchone()
        assert (actors, leases.fetchone(), sessions) == ((0,), (0,), (0,))


def test_bad_input_is_refused_naming_the_fix(delta_app, delta_client):
    with pytest.raises(delta.ConfigError, match=r"Client, a delta\.AsyncClient or a DSN"):
        Runner(delta_app, 42)  # type: ignore[arg-type]
    with pytest.raises(delta.ConfigError, match=r"needs a delta\.App"):
        Runner(object(), delta_client)  # type: ignore[arg-type]
    with pytest.raises(delta.UnknownNamespaceError):
        Runner(delta_app, delta_client, namespaces=["billing"])
    runner = Runner(delta_app, delta_client)
    with pytest.raises(delta.ConfigError, match="seconds >= 0"):
        runner.advance(-1)
    with pytest.raises(delta.UnknownKindError, match=r"informers: order"):
        runner.run_informer(Invoice)


def test_an_unreachable_database_is_a_database_error(delta_app, delta_postgres):
    runner = Runner(delta_app, delta_postgres.dsn("no_such_database"))
    with pytest.raises(delta.DatabaseError, match="start the test runner") as caught:
        runner.run_until_idle()
    assert isinstance(caught.value.__cause__, psycopg.Error)


async def test_the_async_runner_serves_async_tests_and_the_sync_one_says_so(
    delta_app, delta_async_client
):
    runner = AsyncRunner(delta_app, delta_async_client)
    await delta_async_client.inform(Order(key="o1"))
    results = await runner.run_until_idle()
    assert results.synced == ["order/o1", "invoice/o1"]
    resource = await delta_async_client.get(Order, "o1")
    assert resource is not None and resource.state is delta.State.SYNCED
    with pytest.raises(delta.ConfigError, match=r"use delta\.testing\.AsyncRunner"):
        Runner(delta_app, delta_async_client).run_until_idle()


class Call(delta.Job, kind="call-api", rate=(1, 60.0)):
    n: int


def test_scheduled_jobs_and_rate_windows_follow_the_clock(delta_dsn):
    calls: list[int] = []

    async def call(job: Call) -> None:
        calls.append(job.n)

    app = delta.App(jobs={Call: call})
    runner = Runner(app, delta_dsn)
    with delta.Client.connect(delta_dsn, app=app) as client:
        client.enqueue(Call(n=0), scheduled_at=datetime.now(UTC) + timedelta(hours=1))
        assert runner.run_until_idle().runs == []
        client.enqueue_many([Call(n=1), Call(n=2)])
    assert runner.run_until_idle().completed == [Call(n=1)]  # one start per minute
    assert runner.advance(30.0).runs == []
    assert runner.advance(30.0).completed == [Call(n=2)]
    assert runner.advance(3540.0).completed == [Call(n=0)]
    assert calls == [1, 2, 0]


def _raise(error: BaseException) -> None:
    raise error


@pytest.mark.parametrize(
    "error",
    [KeyboardInterrupt("from work"), SystemExit(3), GeneratorExit("from work"), None],
    ids=["interrupt", "exit", "generator-exit", "thrown-through-a-future"],
)
def test_a_base_exception_from_work_is_its_failure_and_the_runner_goes_on(
    orders, delta_app, delta_client, error
):
    async def fail() -> None:
        if error is not None:
            raise error
        loop = asyncio.get_running_loop()  # thrown into the task: closes the frames below
        await loop.run_in_executor(None, _raise, GeneratorExit("from a thread"))

    orders.plan = {"bad": fail}
    runner = Runner(delta_app, delta_client, retry_policy=lambda attempt: 10.0)
    delta_client.inform_many([Order(key="bad"), Order(key="good")])
    results = runner.run_until_idle()
    assert results.failed == ["order/bad"]
    assert "order/good" in results.synced
    assert (results.works[0].error or "").startswith(type(error or GeneratorExit()).__name__)
    assert delta_client.get(Invoice, "bad") is None  # a failure writes no effects
