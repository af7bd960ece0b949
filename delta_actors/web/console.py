"""The console's state shared by its pages: the pool, the client, the templates.

States: closed (created) -> open (first request or the app's lifespan start) -> closed
(lifespan end, or `close()` by an app that mounts the console). Opening checks that the
database is reachable and migrated, so a wrong DSN fails the first request, and a start
through `delta-actors web`, with a DatabaseError naming the fix; the DSN's password is
never part of a message (db/connection redacts it) nor of any page (pages show
`redact_dsn`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any
from urllib.parse import urlencode

import jinja2
import psycopg
from psycopg_pool import AsyncConnectionPool

from delta_actors.client import AsyncClient
from delta_actors.db import status_sql
from delta_actors.db.connection import (
    HEAL_WAIT,
    connect_async,
    make_async_pool,
    redact_dsn,
    translate_errors,
)
from delta_actors.db.migrations import check_schema_async
from delta_actors.web.reads import FINISHED_CAP, FinishedChart

POOL_SIZE = 8  # connections: pages, actions and each open live stream's subscription aside


class Console:
    """What every request of one console app uses."""

    def __init__(self, dsn: str, *, read_only: bool) -> None:
        self.dsn = dsn
        self.where = describe_database(dsn)
        self.read_only = read_only
        self.chart = FinishedChart()
        self.templates = _environment()
        self._pool: AsyncConnectionPool | None = None
        self._client: AsyncClient | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Check the database and open the pool (idempotent)."""
        async with self._lock:
            if self._pool is not None:
                return
            async with await connect_async(self.dsn, action="open the console") as probe:
                with translate_errors("open the console", self.dsn):
                    await check_schema_async(probe)
            pool = make_async_pool(
                self.dsn, min_size=1, max_size=POOL_SIZE, name="delta-web", heal_wait=HEAL_WAIT
            )
            with translate_errors("open the console's pool", self.dsn):
                await pool.open(wait=True, timeout=30)
            self._pool = pool
            self._client = AsyncClient(pool)

    async def close(self) -> None:
        """Close the pool (idempotent, safe before open)."""
        async with self._lock:
            pool, self._pool, self._client = self._pool, None, None
        if pool is not None:
            await pool.close()

    @contextlib.asynccontextmanager
    async def connection(self, action: str) -> AsyncIterator[psycopg.AsyncConnection]:
        """A connection of the pool for `action`, the console's one seam for psycopg errors.

        Whatever psycopg raises while it is taken or used, a connection that PostgreSQL
        ended included, becomes the DatabaseError (or SchemaError, EncodeError) of
        `translate_errors`, naming `action`, its message redacted; the app turns it into
        an error page. The pool discards a broken connection when it comes back, and the
        idle ones that broke with it, so the next request gets a working one.
        """
        await self.open()
        with translate_errors(action, self.dsn):
            async with self.pool.connection() as conn:
                yield conn

    @property
    def pool(self) -> AsyncConnectionPool:
        assert self._pool is not None, "Console.open() first"
        return self._pool

    @property
    def client(self) -> AsyncClient:
        assert self._client is not None, "Console.open() first"
        return self._client


def describe_database(dsn: str) -> str:
    """`dbname on host:port` for the page's header: never the password, nor a local
    socket's folder; the redacted DSN if it does not parse."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return redact_dsn(dsn)
    host = str(params.get("host") or "")
    where = "a local socket" if not host or host.startswith("/") else host
    port = params.get("port")
    if port and where != "a local socket":
        where += f":{port}"
    return f"{params.get('dbname') or params.get('user') or 'database'} on {where}"


def _environment() -> jinja2.Environment:
    source = files("delta_actors.web") / "templates"
    templates = {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in source.iterdir()
        if entry.name.endswith(".html")
    }
    env = jinja2.Environment(
        loader=jinja2.DictLoader(templates),
        autoescape=True,  # every value is text: an id holding <script> renders as text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["age"] = age
    env.filters["when"] = when
    env.filters["number"] = lambda n: f"{n:,}"
    env.globals["query"] = query
    env.globals["queue_cap"] = status_sql.QUEUE_COUNT_CAP
    env.globals["finished_cap"] = FINISHED_CAP
    return env


def query(**params: Any) -> str:
    """A query string of the non-empty parameters (lists repeat their key)."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        pairs += [(key, str(v)) for v in values if v not in (None, "")]
    return "?" + urlencode(pairs) if pairs else ""


def age(seconds: float | None) -> str:
    """`3.2s`, `4m`, `2h`: a duration for a table cell."""
    if seconds is None:
        return "-"
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    if seconds < 60:
        return f"{sign}{seconds:.1f}s"
    if seconds < 3600:
        return f"{sign}{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{sign}{seconds / 3600:.1f}h"
    return f"{sign}{seconds / 86400:.1f}d"


def when(moment: datetime | None, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> str:
    """A timestamp with its age: `2026-01-02 03:04:05 (4m ago)`."""
    if moment is None:
        return "-"
    ago = (now() - moment).total_seconds()
    suffix = f"{age(ago)} ago" if ago >= 0 else f"in {age(-ago)}"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} ({suffix})"
