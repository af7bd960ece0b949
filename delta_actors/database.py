"""The one seam where psycopg errors become delta_actors errors, and DSN handling."""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from delta_actors.errors import ConfigError, DatabaseError, EncodeError, SchemaError

DSN_ENV = "DELTA_DATABASE_URL"

# Logic that runs several statements is written once, as a generator that yields
# (statement, params) and receives the rows, and driven by a sync or an async connection.
Statement = tuple[LiteralString, Any]
Rows = list[tuple[Any, ...]]
_R = TypeVar("_R")

_PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:)[^@]*@")
_PASSWORD_IN_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """Return `dsn` with any password replaced by `***`, for messages and logs."""
    return _PASSWORD_IN_KV.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1***@", dsn))


def resolve_dsn(dsn: str | None) -> str | None:
    """Return the DSN given, else `$DELTA_DATABASE_URL`, else None."""
    return dsn or os.environ.get(DSN_ENV) or None


def check_dsn(dsn: str) -> None:
    """Raise ConfigError, password redacted, if libpq cannot parse `dsn`."""
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        detail = str(exc).strip()
        for pattern in (_PASSWORD_IN_URL, _PASSWORD_IN_KV):
            for found in pattern.finditer(dsn):
                secret = found.group(0)[len(found.group(1)) :].rstrip("@")
                if secret:
                    detail = detail.replace(secret, "***")
        raise ConfigError(
            f"{redact_dsn(dsn)!r} is not a valid PostgreSQL connection string ({detail}); "
            "use a URL like postgresql://user@host:5432/dbname or key=value pairs "
            "like 'host=/run/postgresql dbname=app'"
        ) from None


def _redact_message(message: str, dsn: str | None) -> str:
    """Keep libpq's message but never a password that it may echo back."""
    if dsn:
        password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
        if password:
            message = message.replace(str(password), "***")
    return message


@contextmanager
def translate_errors(action: str, dsn: str | None = None) -> Iterator[None]:
    """Turn psycopg errors raised inside into DatabaseError/SchemaError naming `action`."""
    try:
        yield
    except psycopg.errors.UndefinedTable as exc:
        raise SchemaError(
            f"{action}: the delta_actors schema is missing ({exc.diag.message_primary}); "
            "run `delta-actors migrate` against this database"
        ) from exc
    except psycopg.errors.UndefinedObject as exc:
        raise SchemaError(
            f"{action}: the delta_actors schema is incomplete ({exc.diag.message_primary}); "
            "run `delta-actors migrate` against this database"
        ) from exc
    except (psycopg.DataError, psycopg.errors.ProgramLimitExceeded) as exc:
        # A value of the caller's that PostgreSQL cannot store: a NUL in a text, a key
        # too big for its index. Nothing was written; the caller must change the value.
        detail = exc.diag.message_primary or str(exc)  # no diag: refused before sending
        if exc.diag.message_detail:
            detail += f" ({exc.diag.message_detail})"
        raise EncodeError(f"{action}: PostgreSQL cannot store a value given: {detail}") from exc
    except psycopg.OperationalError as exc:
        where = f" at {redact_dsn(dsn)}" if dsn else ""
        detail = _redact_message(str(exc).strip(), dsn)
        raise DatabaseError(f"{action}: cannot use PostgreSQL{where}: {detail}") from exc


def connect(dsn: str, *, autocommit: bool = True, action: str = "connect") -> psycopg.Connection:
    """Open a sync connection, translating failures into DatabaseError."""
    check_dsn(dsn)
    with translate_errors(action, dsn):
        return psycopg.Connection.connect(dsn, autocommit=autocommit)


async def connect_async(
    dsn: str, *, autocommit: bool = True, action: str = "connect"
) -> psycopg.AsyncConnection:
    """Open an async connection, translating failures into DatabaseError."""
    check_dsn(dsn)
    with translate_errors(action, dsn):
        return await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit)


# Our statements join unnest()-ed arrays and CTEs whose sizes a generic plan cannot know:
# prepared generic plans ran 2-10x slower than custom ones (benchmarks collapsed from
# the second run on). Our pools plan every execution for its parameters; an inform on
# a caller's connection is sent unprepared (drive below). The one exception is the claim,
# whose generic plan is sound and saves its planning: it runs on a connection of its own
# (queue/claimer.py).
PLAN_CACHE_MODE: LiteralString = "SET plan_cache_mode = force_custom_plan"


def _configure(conn: psycopg.Connection) -> None:
    conn.execute(PLAN_CACHE_MODE)


async def _configure_async(conn: psycopg.AsyncConnection) -> None:
    await conn.execute(PLAN_CACHE_MODE)


def make_pool(dsn: str, *, min_size: int, max_size: int, name: str) -> ConnectionPool:
    """A closed pool of autocommit connections configured for our statements."""
    check_dsn(dsn)
    return ConnectionPool(
        dsn, min_size=min_size, max_size=max_size, kwargs={"autocommit": True},
        configure=_configure, open=False, name=name,
    )  # fmt: skip


def make_async_pool(dsn: str, *, min_size: int, max_size: int, name: str) -> AsyncConnectionPool:
    """Async twin of make_pool."""
    check_dsn(dsn)
    return AsyncConnectionPool(
        dsn, min_size=min_size, max_size=max_size, kwargs={"autocommit": True},
        configure=_configure_async, open=False, name=name,
    )  # fmt: skip


def drive(conn: psycopg.Connection, steps: Generator[Statement, Rows, _R]) -> _R:
    """Run a statement generator on a sync connection; return what it returns."""
    try:
        statement = next(steps)
        while True:
            cur = conn.execute(*statement, prepare=False)
            statement = steps.send(cur.fetchall() if cur.description else [])
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def drive_async(conn: psycopg.AsyncConnection, steps: Generator[Statement, Rows, _R]) -> _R:
    """Run a statement generator on an async connection; return what it returns."""
    try:
        statement = next(steps)
        while True:
            cur = await conn.execute(*statement, prepare=False)
            statement = steps.send(await cur.fetchall() if cur.description else [])
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
