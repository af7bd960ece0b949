"""The psycopg connection inside what an application hands a `*_tx` method.

`inform_tx`, `delete_tx`, `enqueue_tx` and their `*_many_tx` twins join the caller's
transaction. Besides a psycopg 3 connection they take the transaction handles of the two
ORMs our users have, and find the psycopg connection inside:

    SQLAlchemy 2 (`postgresql+psycopg://`)   Session, Connection       -> Client
                                             AsyncSession, AsyncConnection -> AsyncClient
    Django (postgresql backend, psycopg 3)   django.db.connection      -> Client

Invariants:
- No ORM is imported by delta_actors: an object is recognised by the module of its type,
  and only then are that ORM's classes looked at (it is loaded already, since the object
  exists).
- What is returned is inside the transaction the ORM commits or rolls back, never an
  autocommit connection: a SQLAlchemy Session or Connection is begun the way its own
  `execute` would begin it (so the caller's `commit()` commits our rows too), and a
  Django connection outside `transaction.atomic()`, or any connection in autocommit, is
  refused, since our statements would commit at once, whatever the caller does next.
- Anything else (another driver under the ORM, such as psycopg2 or asyncpg; another
  database) is refused with a ConfigError naming what is supported.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import psycopg

from delta_actors.errors import ConfigError

# What the `*_tx` methods take: a psycopg connection, or an ORM's handle (checked at run
# time; typed loosely so that no ORM's types are needed to call them).
SyncTransaction: TypeAlias = psycopg.Connection[Any] | Any
AsyncTransaction: TypeAlias = psycopg.AsyncConnection[Any] | Any

_SUPPORTED = (
    "a psycopg 3 connection, a SQLAlchemy {sqlalchemy} on an engine made with "
    "'postgresql+psycopg://' or a Django connection (django.db.connection) of the "
    "postgresql backend on psycopg 3, inside transaction.atomic()"
)


def _name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _is_from(obj: Any, package: str) -> bool:
    module = type(obj).__module__
    return module == package or module.startswith(package + ".")


def sync_connection(conn: Any, method: str) -> psycopg.Connection:
    """The psycopg.Connection of `conn` (psycopg, SQLAlchemy or Django); else a ConfigError."""
    if isinstance(conn, psycopg.Connection):
        return conn
    if isinstance(conn, psycopg.AsyncConnection):
        raise ConfigError(
            f"Client.{method} takes a psycopg.Connection; for a psycopg.AsyncConnection "
            f"use delta.AsyncClient.{method}"
        )
    if _is_from(conn, "sqlalchemy.ext.asyncio"):
        raise ConfigError(
            f"Client.{method} takes a sync SQLAlchemy Session or Connection; for a "
            f"{type(conn).__qualname__} use delta.AsyncClient.{method}"
        )
    if _is_from(conn, "sqlalchemy"):
        return _sqlalchemy_sync(conn, method)
    if _is_from(conn, "django"):
        return _django(conn, method)
    raise ConfigError(
        f"Client.{method} takes the psycopg.Connection (psycopg 3) whose transaction it "
        f"joins, or {_SUPPORTED.format(sqlalchemy='Session or Connection')}; "
        f"got {_name(conn)}"
    )


async def async_connection(conn: Any, method: str) -> psycopg.AsyncConnection:
    """The psycopg.AsyncConnection of `conn` (psycopg or SQLAlchemy); else a ConfigError."""
    if isinstance(conn, psycopg.AsyncConnection):
        return conn
    if isinstance(conn, psycopg.Connection):
        raise ConfigError(
            f"AsyncClient.{method} takes a psycopg.AsyncConnection; for a psycopg.Connection "
            f"use delta.Client.{method}"
        )
    if _is_from(conn, "sqlalchemy.ext.asyncio"):
        return await _sqlalchemy_async(conn, method)
    if _is_from(conn, "sqlalchemy") or _is_from(conn, "django"):
        raise ConfigError(
            f"AsyncClient.{method} takes an async connection; a {_name(conn)} is sync: "
            f"use delta.Client.{method} (or a SQLAlchemy AsyncSession/AsyncConnection)"
        )
    raise ConfigError(
        f"AsyncClient.{method} takes the psycopg.AsyncConnection (psycopg 3) whose "
        f"transaction it joins, or a SQLAlchemy AsyncSession or AsyncConnection on an "
        f"engine made with 'postgresql+psycopg://'; got {_name(conn)}"
    )


def _check_dialect(dialect: Any, conn: Any, method: str) -> None:
    name, driver = getattr(dialect, "name", "?"), getattr(dialect, "driver", "?")
    if (name, driver) != ("postgresql", "psycopg"):
        raise ConfigError(
            f"{method} takes a SQLAlchemy {type(conn).__qualname__} on the psycopg 3 driver "
            f"(an engine made with 'postgresql+psycopg://'); this one's engine is "
            f"'{name}+{driver}': create the engine with a postgresql+psycopg:// URL"
        )


def _in_transaction(raw: Any, conn: Any, method: str, cls: type[Any]) -> Any:
    if not isinstance(raw, cls):
        raise ConfigError(
            f"{method}: the {_name(conn)} holds a {_name(raw)}, not a {cls.__qualname__} "
            "(psycopg 3)"
        )
    if raw.autocommit:
        raise ConfigError(
            f"{method}: the {type(conn).__qualname__}'s connection is in autocommit (an "
            "AUTOCOMMIT isolation level?), so what it writes would commit at once: use a "
            "connection or session in a transaction"
        )
    return raw


def _sqlalchemy_sync(conn: Any, method: str) -> psycopg.Connection:
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    if isinstance(conn, Session):
        _check_dialect(conn.get_bind().dialect, conn, method)
        connection = conn.connection()  # begins the session's transaction if need be
    elif isinstance(conn, Connection):
        _check_dialect(conn.dialect, conn, method)
        connection = conn
        if not connection.in_transaction():
            connection.begin()  # as its execute() would: the caller's commit() commits
    else:
        raise ConfigError(
            f"Client.{method} takes a SQLAlchemy Session or Connection, got {_name(conn)} "
            "(an Engine has no transaction: pass a connection from engine.begin())"
        )
    raw = connection.connection.driver_connection
    return _in_transaction(raw, conn, method, psycopg.Connection)  # type: ignore[no-any-return]


async def _sqlalchemy_async(conn: Any, method: str) -> psycopg.AsyncConnection:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    if isinstance(conn, AsyncSession):
        _check_dialect(conn.get_bind().dialect, conn, method)
        connection = await conn.connection()
    elif isinstance(conn, AsyncConnection):
        _check_dialect(conn.dialect, conn, method)
        connection = conn
        if not connection.in_transaction():
            await connection.begin()
    else:
        raise ConfigError(
            f"AsyncClient.{method} takes a SQLAlchemy AsyncSession or AsyncConnection, got "
            f"{_name(conn)} (an AsyncEngine has no transaction: pass a connection from "
            "engine.begin())"
        )
    raw = (await connection.get_raw_connection()).driver_connection
    return _in_transaction(raw, conn, method, psycopg.AsyncConnection)  # type: ignore[no-any-return]


def _django(conn: Any, method: str) -> psycopg.Connection:
    vendor = getattr(conn, "vendor", None)
    if vendor is None or not hasattr(conn, "ensure_connection"):
        raise ConfigError(
            f"Client.{method} takes a Django database connection (django.db.connection or "
            f"django.db.connections[alias]), got {_name(conn)}"
        )
    if vendor != "postgresql":
        raise ConfigError(
            f"Client.{method} takes a Django connection of the postgresql backend; "
            f"{conn.alias!r} is {vendor!r}"
        )
    if conn.get_autocommit():
        raise ConfigError(
            f"Client.{method} must run inside transaction.atomic() on Django's connection "
            f"{conn.alias!r}: outside it, Django is in autocommit and what {method} writes "
            "would commit at once, whatever the code around it does next"
        )
    conn.ensure_connection()
    raw = conn.connection
    if not isinstance(raw, psycopg.Connection):
        raise ConfigError(
            f"Client.{method}: Django's connection {conn.alias!r} runs on {_name(raw)}; "
            "delta_actors needs the psycopg 3 driver: pip install 'psycopg[binary]' "
            "(Django 4.2+ picks it over psycopg2)"
        )
    return _in_transaction(raw, conn, method, psycopg.Connection)  # type: ignore[no-any-return]
