"""Resource events (Client.subscribe): what arrives, in which order, and what a slow
subscriber gets; the protocol is in delta_actors/events.py."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, ClassVar

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

import delta_actors as delta
from delta_actors import events as events_module
from delta_actors.db import job_sql
from delta_actors.leader.maintenance import Cleaner, Rescuer
from delta_actors.queue.floors import Floors
from tests.integration.workers import running_worker
from tests.waiting import wait_until, wait_until_async

NO_FLOORS = {"floors": Floors().of()}  # the claim reads every priority from the start

SYNCED, FAILED = delta.State.SYNCED, delta.State.FAILED
DEGRADED, DELETED = delta.State.DEGRADED, delta.State.DELETED


class Item(delta.Object, kind="item"):
    key: str
    version: int = 0

    def id(self) -> str:
        return self.key


class Other(delta.Object, kind="other"):
    key: str

    def id(self) -> str:
        return self.key


class ItemController(delta.Controller[Item]):
    """Behaviour by key prefix: ok, flaky (first attempt of each generation fails), bad
    (permanent error), gone (deleted), broken (always fails)."""

    max_attempts = 3
    attempts: ClassVar[dict[tuple[str, int], int]] = defaultdict(int)

    async def work(self, resource: delta.Resource[Item]) -> None:
        key = resource.object.key
        tries = self.attempts[key, resource.generation] = (
            self.attempts[key, resource.generation] + 1
        )
        if key.startswith("flaky") and tries == 1:
            raise RuntimeError(f"first try of {key} fails")
        if key.startswith("bad"):
            raise delta.PermanentError("no such account")
        if key.startswith("gone"):
            raise delta.Delete("closed upstream")
        if key.startswith("broken"):
            raise ValueError("still broken")


class OtherController(delta.Controller[Other]):
    def work(self, resource: delta.Resource[Other]) -> None:
        return None


def make_app() -> delta.App:
    ItemController.attempts = defaultdict(int)
    return delta.App(
        controllers=[ItemController(), OtherController()],
        namespaces={"default": delta.Namespace(max_workers=20)},
    )


def count(dsn: str, query: str, *params: object) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return int(row[0]) if row else 0


async def collect(
    subscription: delta.AsyncSubscription, until: int, timeout: float = 15.0
) -> list[delta.Event | delta.Gap]:
    """Take items from `subscription` until `until` of them arrived."""
    items: list[delta.Event | delta.Gap] = []

    async def take() -> None:
        async for item in subscription:
            items.append(item)
            if len(items) >= until:
                return

    try:
        await asyncio.wait_for(take(), timeout)
    except TimeoutError:
        raise AssertionError(f"got {len(items)} of {until} items: {items}") from None
    return items


def outcomes(items: list[Any]) -> dict[str, list[tuple[delta.State, int]]]:
    by_id: dict[str, list[tuple[delta.State, int]]] = defaultdict(list)
    for item in items:
        assert isinstance(item, delta.Event), item
        by_id[item.id].append((item.event, item.generation))
    return dict(by_id)


async def test_synced_failed_degraded_and_deleted_results_arrive_as_events(dsn):
    """One event per result that set a state, with its generation and error message."""
    app = make_app()
    client = await delta.AsyncClient.connect(dsn, app=app)
    try:
        async with client.subscribe() as subscription, running_worker(app, dsn):
            await client.inform_many(
                [Item(key="ok"), Item(key="flaky"), Item(key="bad"), Item(key="gone")]
            )
            items = await collect(subscription, 5)
            assert outcomes(items) == {
                "ok": [(SYNCED, 1)],
                "flaky": [(FAILED, 1), (SYNCED, 1)],
                "bad": [(DEGRADED, 1)],
                "gone": [(DELETED, 1)],
            }
            errors = {(e.id, e.event): e.error for e in items if isinstance(e, delta.Event)}
            assert errors[("flaky", FAILED)] == "RuntimeError: first try of flaky fails"
            assert errors[("bad", DEGRADED)] == "permanent error: no such account"
            assert errors[("gone", DELETED)] == "deleted: closed upstream"
            assert errors[("ok", SYNCED)] is None
            assert all(e.kind == "item" and e.at is not None for e in items)  # type: ignore[union-attr]
    finally:
        await client.close()


async def test_rescue_of_a_dead_actors_claim_is_a_failed_event(dsn):
    """An actor died holding a work: rescue fails the attempt, and subscribers see it."""
    client = await delta.AsyncClient.connect(dsn, app=make_app())
    pool = AsyncConnectionPool(dsn, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False)
    await pool.open()
    try:
        await client.inform(Item(key="orphan"))
        async with client.subscribe(poll_interval=0.02) as subscription:
            async with pool.connection() as conn:
                cur = await conn.execute(
                    "INSERT INTO delta_actor (host, pid, namespace, role, heartbeat_at) VALUES"
                    " ('gone', 1, 'default', 'worker', now() - interval '1 minute') RETURNING id"
                )
                row = await cur.fetchone()
                assert row is not None
                await conn.execute(
                    job_sql.CLAIM_JOBS,
                    {"namespace": "default", "limit": 1, "actor": row[0], **NO_FLOORS},
                )
            assert (await Rescuer(pool, ttl=10).run_once())["claims"] == 1
            (event,) = await collect(subscription, 1)
        assert isinstance(event, delta.Event)
        assert (event.id, event.event, event.generation) == ("orphan", FAILED, 1)
        assert event.error is not None and event.error.startswith("rescued: actor")
    finally:
        await pool.close()
        await client.close()


async def test_failed_until_out_of_attempts_ends_in_degraded(dsn):
    """max_attempts=3, always failing: failed, failed, then degraded."""
    app = make_app()
    client = await delta.AsyncClient.connect(dsn, app=app)
    try:
        async with client.subscribe() as subscription, running_worker(app, dsn):
            await client.inform(Item(key="broken"))
            items = await collect(subscription, 3)
        assert outcomes(items) == {"broken": [(FAILED, 1), (FAILED, 1), (DEGRADED, 1)]}
    finally:
        await client.close()


async def test_events_of_each_resource_arrive_in_commit_order(dsn):
    """Many resources changed while their works run: per resource, generations never go
    back, a generation's failure comes before its success, and the last event is the
    newest generation synced."""
    app = make_app()
    client = await delta.AsyncClient.connect(dsn, app=app)
    keys = [f"flaky-{i}" for i in range(30)]
    try:
        async with client.subscribe() as subscription, running_worker(app, dsn):
            for version in range(4):
                await client.inform_many([Item(key=k, version=version) for k in keys])
                await asyncio.sleep(0.05)

            async def all_synced() -> bool:
                for key in keys:
                    resource = await client.get(Item, key)
                    if resource is None or resource.state is not SYNCED:
                        return False
                return True

            await wait_until_async(all_synced, 30)
            final = {k: (await client.get(Item, k)).generation for k in keys}  # type: ignore[union-attr]
            items: list[delta.Event | delta.Gap] = []

            async def settled() -> bool:
                while (item := subscription._buffer.take()) is not None:
                    items.append(item)
                got = outcomes(items)
                return all(got.get(k, [(None, 0)])[-1] == (SYNCED, final[k]) for k in keys)

            await wait_until_async(settled, 15)
        rank = {FAILED: 0, SYNCED: 1}
        for key, events in outcomes(items).items():
            assert events == sorted(events, key=lambda e: (e[1], rank[e[0]])), key
            assert len(set(events)) == len(events), key  # each result once
    finally:
        await client.close()


def test_reader_never_skips_a_transaction_that_commits_after_a_later_one(dsn):
    """A transaction that wrote its event first but commits last is delivered, first:
    the reader waits for the xmin horizon instead of reading past it by id."""
    insert = (
        "INSERT INTO delta_event (resource_id, kind, object_id, namespace, event, generation)"
        " VALUES (1, 'item', %s, 'default', 'synced', 1)"
    )
    with (
        delta.Client.connect(dsn) as client,
        client.subscribe(poll_interval=0.02) as subscription,
        psycopg.connect(dsn) as early,
        psycopg.connect(dsn, autocommit=True) as late,
    ):
        early.execute(insert, ("early",))
        late.execute(insert, ("late",))
        # The reader polls while "early" is still open: it must neither deliver "late"
        # (that would be out of order) nor move its cursor past "early".
        polls = subscription._reader.polls
        wait_until(lambda: subscription._reader.polls >= polls + 3, 5)
        assert subscription._buffer.take() is None
        early.commit()
        first, second = next(subscription), next(subscription)
    assert [first.id, second.id] == ["early", "late"]  # type: ignore[union-attr]


def test_a_blocking_reader_reconnects_after_its_connection_dies(dsn):
    """The sync reader thread survives pg_terminate_backend and goes on from its cursor."""
    insert = (
        "INSERT INTO delta_event (resource_id, kind, object_id, namespace, event, generation)"
        " VALUES (1, 'item', %s, 'default', 'synced', 1)"
    )
    with (
        delta.Client.connect(dsn) as client,
        client.subscribe(poll_interval=0.02) as subscription,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        conn.execute(insert, ("before",))
        assert next(subscription).id == "before"  # type: ignore[union-attr]
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (events_module.APPLICATION_NAME,),
        )
        conn.execute(insert, ("after",))
        assert next(subscription).id == "after"  # type: ignore[union-attr]
        assert subscription._buffer.take() is None  # nothing twice, no gap


async def test_filters_deliver_only_the_kinds_and_events_asked_for(dsn):
    """kinds=[Item], events=["failed", "degraded"]: nothing of Other, no synced."""
    app = make_app()
    client = await delta.AsyncClient.connect(dsn, app=app)
    try:
        async with (
            client.subscribe(kinds=[Item], events=["failed", "degraded"]) as failures,
            client.subscribe(kinds=["other"]) as others,
            running_worker(app, dsn),
        ):
            await client.inform_many([Item(key="ok"), Item(key="flaky"), Item(key="bad")])
            await client.inform(Other(key="o"))
            got_failures = await collect(failures, 2)
            got_others = await collect(others, 1)
            await wait_until_async(
                lambda: (
                    count(dsn, "SELECT count(*) FROM delta_job WHERE state = 'running'") == 0
                    and count(dsn, "SELECT count(*) FROM delta_resource WHERE state = 'synced'")
                    == 3
                )
            )
        assert outcomes(got_failures) == {"flaky": [(FAILED, 1)], "bad": [(DEGRADED, 1)]}
        assert outcomes(got_others) == {"o": [(SYNCED, 1)]}
        # Results no subscription wanted were never written.
        wanted = "SELECT count(*) FROM delta_event WHERE kind = 'item' AND event = 'synced'"
        assert count(dsn, wanted) == 0
        # Nothing more came for either subscription.
        assert failures._buffer.take() is None
        assert others._buffer.take() is None
    finally:
        await client.close()


def test_subscribe_rejects_unknown_kinds_and_events_naming_the_valid_ones(dsn):
    with delta.Client.connect(dsn, app=make_app()) as client:
        with pytest.raises(delta.ConfigError, match=r"unknown event 'sync' \(valid: degraded, "
                           r"deleted, deleting, failed, synced\)"):  # fmt: skip
            client.subscribe(events=["sync"])
        with pytest.raises(delta.UnknownKindError, match=r"'itme' \(registered: item, other\)"):
            client.subscribe(kinds=["itme"])
        with pytest.raises(delta.ConfigError, match="got the string 'item'"):
            client.subscribe(kinds="item")
        with pytest.raises(delta.ConfigError, match="events is empty: pass None"):
            client.subscribe(events=[])
        with pytest.raises(delta.ConfigError, match="buffer_size must be at least 1"):
            client.subscribe(buffer_size=0)
        with pytest.raises(delta.ConfigError, match="poll_interval must be > 0"):
            client.subscribe(poll_interval=0)
    with delta.Client.connect(dsn) as bare:  # no app: kinds are checked as names only
        with pytest.raises(delta.ConfigError, match="invalid kind 'Items'"):
            bare.subscribe(kinds=["Items"])
        bare.subscribe(kinds=["anything"]).close()
    assert count(dsn, "SELECT count(*) FROM delta_subscriber") == 0


async def test_a_slow_subscriber_gets_a_counted_gap_and_work_goes_on(dsn):
    """buffer_size=5 and a consumer that reads nothing: all 25 works still sync; then the
    consumer gets the 5 buffered events and Gap(missed=20), and later events again."""
    app = make_app()
    client = await delta.AsyncClient.connect(dsn, app=app)
    try:
        async with (
            client.subscribe(buffer_size=5, poll_interval=0.02) as slow,
            running_worker(app, dsn),
        ):
            await client.inform_many([Item(key=f"ok-{i}") for i in range(25)])
            await wait_until_async(
                lambda: (
                    count(dsn, "SELECT count(*) FROM delta_resource WHERE state = 'synced'") == 25
                ),
                what="every work synced while the subscriber read nothing",
            )
            await wait_until_async(lambda: slow.missed == 20, what="the reader to count 20")
            items = await collect(slow, 6)
            assert [type(i) for i in items] == [delta.Event] * 5 + [delta.Gap]
            assert items[-1] == delta.Gap(missed=20)
            await client.inform(Item(key="ok-late"))
            (late,) = await collect(slow, 1)
            assert isinstance(late, delta.Event) and late.id == "ok-late"
            assert slow.missed == 20
    finally:
        await client.close()


async def test_no_events_are_written_while_nobody_subscribes(dsn):
    """Without a live subscription, results cost no event rows."""
    app = make_app()
    client = await delta.AsyncClient.connect(dsn, app=app)
    try:
        async with running_worker(app, dsn):
            await client.inform_many([Item(key=f"ok-{i}") for i in range(10)])
            await wait_until_async(
                lambda: (
                    count(dsn, "SELECT count(*) FROM delta_resource WHERE state = 'synced'") == 10
                )
            )
        assert count(dsn, "SELECT count(*) FROM delta_event") == 0
    finally:
        await client.close()


def subscriber_backends(dsn: str) -> int:
    return count(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
        events_module.APPLICATION_NAME,
    )


async def test_closing_releases_the_connection_and_the_lease(dsn):
    """After close (sync and async), no subscriber row, no connection, no new events."""
    app = make_app()
    client = await delta.AsyncClient.connect(dsn, app=app)
    try:
        async with client.subscribe() as subscription:
            assert count(dsn, "SELECT count(*) FROM delta_subscriber") == 1
            assert subscriber_backends(dsn) == 1
        await subscription.aclose()  # idempotent
        assert count(dsn, "SELECT count(*) FROM delta_subscriber") == 0
        await wait_until_async(lambda: subscriber_backends(dsn) == 0)
        with delta.Client.connect(dsn) as sync_client:
            with sync_client.subscribe(kinds=["item"]) as sync_subscription:
                assert count(dsn, "SELECT count(*) FROM delta_subscriber") == 1
                assert subscriber_backends(dsn) == 1
            sync_subscription.close()  # idempotent
            assert list(sync_subscription) == []  # a closed subscription ends
        assert count(dsn, "SELECT count(*) FROM delta_subscriber") == 0
        await wait_until_async(lambda: subscriber_backends(dsn) == 0)
        async with running_worker(app, dsn):
            await client.inform(Item(key="ok"))
            await wait_until_async(
                lambda: (
                    count(dsn, "SELECT count(*) FROM delta_resource WHERE state = 'synced'") == 1
                )
            )
        assert count(dsn, "SELECT count(*) FROM delta_event") == 0
    finally:
        await client.close()


async def test_a_lapsed_lease_is_reported_as_a_gap_of_unknown_size(dsn, monkeypatch):
    """The lease row vanished (the Cleaner removed a lapsed lease): the reader registers
    again and the consumer gets Gap(missed=None), then events again."""
    monkeypatch.setattr(events_module, "RENEW_INTERVAL", 0.0)
    app = make_app()
    client = await delta.AsyncClient.connect(dsn, app=app)
    try:
        async with client.subscribe(poll_interval=0.02) as subscription:
            first = subscription._reader.subscriber_id
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("DELETE FROM delta_subscriber")
            (gap,) = await collect(subscription, 1)
            assert gap == delta.Gap(missed=None)
            assert subscription._reader.subscriber_id != first
            assert count(dsn, "SELECT count(*) FROM delta_subscriber") == 1
            async with running_worker(app, dsn):
                await client.inform(Item(key="ok"))
                (event,) = await collect(subscription, 1)
            assert isinstance(event, delta.Event) and event.id == "ok"
    finally:
        await client.close()


async def test_a_reader_whose_connection_dies_reconnects_and_misses_nothing(dsn):
    """pg_terminate_backend on the subscription's connection: it reconnects, keeps its
    lease and cursor, and delivers the results written meanwhile without a gap."""
    app = make_app()
    client = await delta.AsyncClient.connect(dsn, app=app)
    try:
        async with client.subscribe(poll_interval=0.02) as subscription:
            lease = subscription._reader.subscriber_id
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s",
                    (events_module.APPLICATION_NAME,),
                )
            async with running_worker(app, dsn):
                await client.inform_many([Item(key=f"ok-{i}") for i in range(5)])
                items = await collect(subscription, 5)
            assert sorted(outcomes(items)) == [f"ok-{i}" for i in range(5)]
            assert subscription._reader.subscriber_id == lease
            assert subscriber_backends(dsn) == 1
    finally:
        await client.close()


async def test_cleaner_keeps_unread_events_and_deletes_the_rest(dsn, monkeypatch):
    """Events after a live subscriber's stored cursor stay; once it closes they go, and
    so do leases that lapsed."""
    app = make_app()
    client = await delta.AsyncClient.connect(dsn, app=app)
    pool = AsyncConnectionPool(dsn, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False)
    await pool.open()
    try:
        cleaner = Cleaner(app, pool, limit=3)
        async with client.subscribe() as subscription, running_worker(app, dsn):
            await client.inform_many([Item(key=f"ok-{i}") for i in range(10)])
            await collect(subscription, 10)
            # The lease's cursor is where the subscription started: all 10 are kept.
            assert (await cleaner.run_once())["events"] == 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO delta_subscriber (host, pid, cursor_xid, expires_at) "
                "VALUES ('h', 1, '1', now() - interval '1 hour')"
            )
        did = await cleaner.run_once()
        assert (did["events"], did["subscribers"]) == (10, 1)
        assert count(dsn, "SELECT count(*) FROM delta_event") == 0
    finally:
        await pool.close()
        await client.close()
