"""Resource events: `Client.subscribe` and `AsyncClient.subscribe`.

What a subscriber gets
    An `Event` for every work result that set a resource's state to synced, failed,
    degraded, deleting or deleted, from every actor on every host, including failures
    that rescue writes for a dead actor, and for every deletion (`delete*`, a tombstone):
    `deleting` when its controller has a `finalize` to run, else `deleted`. Each result
    is delivered once, in commit order per resource.
    Coverage starts when `subscribe()` returns (async: when the subscription is entered
    or first iterated): every result written by a statement that starts after that is
    delivered or counted in a `Gap`; results from just before may also appear.
    A resource whose generation changed while its work ran takes no state from that work,
    and so has no event for it; neither do requeues. A tombstone's event says so in its
    error; each deletion's event is written by the statement that marks it.

How events travel
    The statement that writes a work's result (resource_sql.COMPLETE_WORKS) also inserts one
    `delta_event` row per result, in the same transaction, but only while a live
    subscription's filters want it (a `delta_subscriber` row with an unexpired lease).
    Subscribers poll the table: nothing is pushed, so no subscriber can ever make a
    worker wait.

    Rows are read in (xid, id) order, and only rows whose writing transaction id is below
    the xmin of the reading statement's snapshot: every such transaction has ended, so no
    row can later appear before the cursor. (A plain `id > cursor` read skips the rows of
    a transaction that took its ids early and committed late.) Per resource, xid order is
    commit order: a resource runs one work at a time, its next work is claimed only after
    the previous result committed, so the next result's transaction gets a larger xid.
    The price is latency: a transaction that has written and stays open anywhere in the
    PostgreSQL cluster (any database) holds the horizon back, and events wait (never
    lost) until it ends. Open read-only transactions do not.

Why a table and not NOTIFY
    NOTIFY payloads are commit-ordered and reach every host, but a notifying commit takes
    a cluster-wide lock, and one listener that stops reading lets the shared 8 GB queue
    fill, after which every NOTIFY, and so every work's completion, fails. A table costs
    an insert per result and needs retention, so events are written only while someone
    subscribes (with nobody subscribed the completion pays one probe of an empty table),
    and the leader's Cleaner deletes every event that all live subscribers have read.

Slow subscribers
    Each subscription has a reader (a thread, or an asyncio task) that polls the table into
    a local buffer of at most `buffer_size` events, whatever the consumer does. When the
    buffer is full, further events are dropped and counted, and the consumer gets a
    `Gap(missed=n)` where they would have been, then the events after them. The reader
    records its progress with its lease; the Cleaner keeps everything after it. A reader
    that could not renew its lease for `SUBSCRIBER_TTL` seconds (its process paused) may
    have lost events to the Cleaner: it registers again and reports `Gap(missed=None)`.

A reader that loses its connection (PostgreSQL restarted, backend terminated) reconnects
with backoff and goes on from its cursor; any other error ends the iteration with a
DatabaseError.

Closing a subscription (leave its `with` block, or call `close()`) stops the reader,
deletes its lease, so results stop producing events for it, and closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import psycopg

from delta_actors.app import App
from delta_actors.db import event_sql
from delta_actors.db.connection import (
    Rows,
    Statement,
    connect,
    connect_async,
    drive,
    drive_async,
    translate_errors,
)
from delta_actors.errors import ConfigError, DatabaseError, UnknownKindError
from delta_actors.model.kinds import Kinded, kind_of
from delta_actors.model.names import validate_name
from delta_actors.model.resource import State

logger = logging.getLogger(__name__)

SUBSCRIBER_TTL = 30.0  # seconds a subscription's lease lasts without renewal
RENEW_INTERVAL = SUBSCRIBER_TTL / 6
READ_BATCH = 1000  # events per read
RECONNECT_BACKOFF = (0.1, 5.0)  # seconds: first and longest wait before reconnecting
EVENT_STATES = (State.SYNCED, State.FAILED, State.DEGRADED, State.DELETING, State.DELETED)


class Event(msgspec.Struct, frozen=True, tag="event"):
    """A work result that set a resource's state.

    `id` is the object's id, `event` the state it set (synced, failed, degraded,
    deleting or deleted), `generation` the resource generation the work reconciled (or
    the deletion made), `error` the failure's message (or a deletion's reason), `at` the
    database time the result was written.
    """

    kind: str
    id: str
    event: State
    generation: int
    error: str | None
    at: datetime


class Gap(msgspec.Struct, frozen=True, tag="gap"):
    """Events this subscription did not deliver, in place of them.

    `missed` counts them; None when the count is unknown (the subscription's lease
    lapsed while its process was paused).
    """

    missed: int | None


@dataclass(frozen=True, slots=True)
class Filters:
    """What a subscription wants; None: everything."""

    kinds: frozenset[str] | None
    events: frozenset[State] | None

    def wants(self, kind: str, event: State) -> bool:
        """Whether an event of `kind` and `event` passes the filters."""
        return (self.kinds is None or kind in self.kinds) and (
            self.events is None or event in self.events
        )


def make_filters(
    kinds: Iterable[str | type[Kinded]] | None,
    events: Iterable[str | State] | None,
    app: App | None,
) -> Filters:
    """Validate subscribe()'s arguments; raise ConfigError naming the valid values."""
    return Filters(_kinds(kinds, app), _events(events))


def _kinds(kinds: Iterable[str | type[Kinded]] | None, app: App | None) -> frozenset[str] | None:
    if kinds is None:
        return None
    if isinstance(kinds, str):
        raise ConfigError(f"kinds must be a list of kinds, got the string {kinds!r}")
    names = frozenset(
        kind if isinstance(kind, str) else kind_of(kind) for kind in _listed(kinds, "kinds")
    )
    for name in sorted(names):
        validate_name(name, "kind")
        if app is not None and name not in app.controllers:
            registered = ", ".join(sorted(app.controllers)) or "none"
            raise UnknownKindError(f"unknown kind {name!r} (registered: {registered})")
    return names


def _events(events: Iterable[str | State] | None) -> frozenset[State] | None:
    if events is None:
        return None
    if isinstance(events, str):
        raise ConfigError(f"events must be a list of event names, got the string {events!r}")
    valid = {state.value: state for state in EVENT_STATES}
    chosen = set()
    for name in _listed(events, "events"):
        if name not in valid:
            raise ConfigError(f"unknown event {name!r} (valid: {', '.join(sorted(valid))})")
        chosen.add(valid[name])
    return frozenset(chosen)


def _listed(values: Iterable[Any], what: str) -> list[Any]:
    try:
        listed = list(values)
    except TypeError:
        raise ConfigError(f"{what} must be a list, got {type(values).__name__}") from None
    if not listed:
        raise ConfigError(f"{what} is empty: pass None to subscribe to all")
    return listed


class Buffer:
    """The local, bounded buffer between a reader and its consumer; counts what it drops."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ConfigError(f"buffer_size must be at least 1, got {size!r}")
        self._items: deque[Event | Gap] = deque()
        self._size = size
        self._dropped = 0  # dropped since the last Gap was queued
        self._lapsed = False  # a lapse since the last Gap: the count is unknown
        self.missed = 0  # events dropped in all

    def put(self, event: Event) -> None:
        """Queue `event`, or count it as missed when the buffer is full."""
        if len(self._items) >= self._size:
            self._dropped += 1
            self.missed += 1
            return
        gap = self._take_gap()
        if gap is not None:
            self._items.append(gap)
        self._items.append(event)

    def lapse(self) -> None:
        """Note that events may have been lost uncounted."""
        self._lapsed = True

    def take(self) -> Event | Gap | None:
        """The next item, or None when there is nothing to deliver."""
        if self._items:
            return self._items.popleft()
        return self._take_gap()

    def _take_gap(self) -> Gap | None:
        if not (self._dropped or self._lapsed):
            return None
        gap = Gap(None if self._lapsed else self._dropped)
        self._dropped, self._lapsed = 0, False
        return gap


@dataclass(frozen=True, slots=True)
class Read:
    """What one poll read: the wanted events, whether the lease lapsed, whether to go on."""

    events: list[Event]
    lapsed: bool
    more: bool


class Reader:
    """The protocol of one subscription, as statement generators (run sync or async)."""

    def __init__(self, filters: Filters) -> None:
        self.filters = filters
        self.subscriber_id: int | None = None
        self.polls = 0
        self._xid = 0
        self._id = 0
        self._renew_at = 0.0

    def register(self) -> Generator[Statement, Rows, None]:
        """Take a lease; the first registration sets the cursor at the xmin horizon."""
        rows = yield (
            event_sql.REGISTER_SUBSCRIBER,
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "kinds": sorted(self.filters.kinds) if self.filters.kinds is not None else None,
                "events": sorted(e.value for e in self.filters.events)
                if self.filters.events is not None
                else None,
                "after_xid": str(self._xid) if self.subscriber_id is not None else None,
                "ttl": SUBSCRIBER_TTL,
            },
        )
        self.subscriber_id, xid = rows[0]
        self._xid = max(self._xid, int(xid))
        self._renew_at = time.monotonic() + RENEW_INTERVAL

    def poll(self) -> Generator[Statement, Rows, Read]:
        """Read the next batch of ended transactions' events; renew the lease when due."""
        rows = yield event_sql.SELECT_EVENTS, {
            "xid": str(self._xid), "id": self._id, "limit": READ_BATCH
        }  # fmt: skip
        self.polls += 1
        events = []
        for xid, id_, kind, object_id, event, generation, error, at in rows:
            self._xid, self._id = xid, id_
            state = State(event)
            if self.filters.wants(kind, state):
                events.append(Event(kind, object_id, state, generation, error, at))
        lapsed = False
        if time.monotonic() >= self._renew_at:
            lapsed = yield from self.renew()
        return Read(events, lapsed, more=len(rows) == READ_BATCH)

    def renew(self) -> Generator[Statement, Rows, bool]:
        """Renew the lease, or register again if it lapsed; return whether it had."""
        renewed = yield event_sql.RENEW_SUBSCRIBER, {
            "id": self.subscriber_id, "cursor_xid": str(self._xid), "ttl": SUBSCRIBER_TTL
        }  # fmt: skip
        self._renew_at = time.monotonic() + RENEW_INTERVAL
        if renewed:
            return False
        logger.warning(
            "subscription %s lost its lease (paused or disconnected longer than %.0fs?); "
            "events may have been missed",
            self.subscriber_id, SUBSCRIBER_TTL, extra={"event": "subscriber.lapsed"},
        )  # fmt: skip
        yield from self.register()
        return True

    def unregister(self) -> Generator[Statement, Rows, None]:
        """Give the lease up: results stop producing events for this subscription."""
        if self.subscriber_id is not None:
            yield event_sql.UNREGISTER_SUBSCRIBER, (self.subscriber_id,)


APPLICATION_NAME = "delta-subscriber"  # how a subscription shows in pg_stat_activity


def _subscriber_conninfo(conninfo: str) -> str:
    return psycopg.conninfo.make_conninfo(conninfo, application_name=APPLICATION_NAME)


def _check_poll_interval(poll_interval: float) -> float:
    if not poll_interval > 0:
        raise ConfigError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
    return float(poll_interval)


def _log_reconnect(exc: BaseException, delay: float) -> None:
    logger.warning(
        "subscription lost its connection, reconnecting in %.1fs: %s", delay, exc,
        extra={"event": "subscriber.reconnect"},
    )  # fmt: skip


def _lost(exc: BaseException) -> DatabaseError:
    return DatabaseError(f"subscription stopped reading events: {exc}")


class Subscription:
    """A blocking iterator of `Event` and `Gap` items; close it (or use `with`) when done.

    A reader thread polls PostgreSQL every `poll_interval` seconds into a buffer of at
    most `buffer_size` events; iteration waits for the next item. `missed` counts every
    event dropped because the consumer fell behind.
    """

    def __init__(
        self, conninfo: str, filters: Filters, *, buffer_size: int, poll_interval: float
    ) -> None:
        self._poll_interval = _check_poll_interval(poll_interval)
        self._buffer = Buffer(buffer_size)
        self._reader = Reader(filters)
        self._changed = threading.Condition()
        self._closing = threading.Event()
        self._error: BaseException | None = None
        self._conninfo = _subscriber_conninfo(conninfo)
        self._conn = connect(self._conninfo, action="subscribe")
        try:
            with translate_errors("subscribe"):
                drive(self._conn, self._reader.register())
        except BaseException:
            self._conn.close()
            raise
        self._thread = threading.Thread(target=self._run, name="delta-subscriber", daemon=True)
        self._thread.start()

    @property
    def missed(self) -> int:
        """Events dropped so far because the consumer fell behind."""
        return self._buffer.missed

    def _run(self) -> None:
        backoff = RECONNECT_BACKOFF[0]
        while not self._closing.is_set():
            try:
                lapsed = False
                if self._conn.closed:
                    self._conn = connect(self._conninfo, action="subscribe")
                    lapsed = drive(self._conn, self._reader.renew())
                read = drive(self._conn, self._reader.poll())
            except (psycopg.OperationalError, DatabaseError) as exc:
                self._conn.close()
                _log_reconnect(exc, backoff)
                self._closing.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF[1])
                continue
            except Exception as exc:  # noqa: BLE001 (handed to the consumer, not lost)
                with self._changed:
                    self._error = exc
                    self._changed.notify_all()
                return
            backoff = RECONNECT_BACKOFF[0]
            with self._changed:
                if lapsed or read.lapsed:
                    self._buffer.lapse()
                for event in read.events:
                    self._buffer.put(event)
                self._changed.notify_all()
            if not read.more:
                self._closing.wait(self._poll_interval)

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Event | Gap:
        with self._changed:
            while True:
                item = self._buffer.take()
                if item is not None:
                    return item
                if self._closing.is_set():
                    raise StopIteration
                if self._error is not None:
                    raise _lost(self._error) from self._error
                self._changed.wait()

    def close(self) -> None:
        """Stop the reader, give up the lease and close the connection (idempotent)."""
        if self._closing.is_set():
            return
        with self._changed:
            self._closing.set()
            self._changed.notify_all()
        self._thread.join()
        if self._conn.closed:
            return  # the lease lapses by itself
        try:
            drive(self._conn, self._reader.unregister())
        except psycopg.Error as exc:
            # The lease lapses by itself within SUBSCRIBER_TTL.
            logger.warning(
                "could not end subscription: %s", exc, extra={"event": "subscriber.close"}
            )
        finally:
            self._conn.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class AsyncSubscription:
    """An async iterator of `Event` and `Gap` items (see Subscription).

    It starts when entered (`async with`) or first iterated; close it with `aclose()` or
    by leaving the `async with` block.
    """

    def __init__(
        self, conninfo: str, filters: Filters, *, buffer_size: int, poll_interval: float
    ) -> None:
        self._conninfo = _subscriber_conninfo(conninfo)
        self._poll_interval = _check_poll_interval(poll_interval)
        self._buffer = Buffer(buffer_size)
        self._reader = Reader(filters)
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._conn: psycopg.AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._closed = False

    @property
    def missed(self) -> int:
        """Events dropped so far because the consumer fell behind."""
        return self._buffer.missed

    async def start(self) -> None:
        """Take the lease and start the reader; coverage starts when this returns."""
        if self._conn is not None or self._closed:
            return
        conn = await connect_async(self._conninfo, action="subscribe")
        try:
            with translate_errors("subscribe"):
                await drive_async(conn, self._reader.register())
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._task = asyncio.create_task(self._run(), name="delta:subscriber")

    async def _run(self) -> None:
        # Stopped between reads, never cancelled within one: the connection stays usable
        # for giving the lease up.
        backoff = RECONNECT_BACKOFF[0]
        while not self._stopping.is_set():
            try:
                lapsed = False
                if self._conn is None or self._conn.closed:
                    self._conn = await connect_async(self._conninfo, action="subscribe")
                    lapsed = await drive_async(self._conn, self._reader.renew())
                read = await drive_async(self._conn, self._reader.poll())
            except (psycopg.OperationalError, DatabaseError) as exc:
                if self._conn is not None:
                    await self._conn.close()
                _log_reconnect(exc, backoff)
                await self._wait_stopping(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF[1])
                continue
            except Exception as exc:  # noqa: BLE001 (handed to the consumer, not lost)
                self._error = exc
                self._changed.set()
                return
            backoff = RECONNECT_BACKOFF[0]
            if lapsed or read.lapsed:
                self._buffer.lapse()
            for event in read.events:
                self._buffer.put(event)
            self._changed.set()
            if not read.more:
                await self._wait_stopping(self._poll_interval)

    async def _wait_stopping(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout)

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> Event | Gap:
        await self.start()
        while True:
            item = self._buffer.take()
            if item is not None:
                return item
            if self._closed:
                raise StopAsyncIteration
            if self._error is not None:
                raise _lost(self._error) from self._error
            self._changed.clear()
            await self._changed.wait()

    async def aclose(self) -> None:
        """Stop the reader, give up the lease and close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._changed.set()
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self._conn is not None and not self._conn.closed:
            try:
                await drive_async(self._conn, self._reader.unregister())
            except psycopg.Error as exc:
                logger.warning(
                    "could not end subscription: %s", exc, extra={"event": "subscriber.close"}
                )
            finally:
                await self._conn.close()

    async def __aenter__(self) -> AsyncSubscription:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
