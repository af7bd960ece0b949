"""The one seam where psycopg errors become delta_actors errors, and DSN handling.

Invariants:
- Every psycopg error that reaches our callers passes `translate_errors` and comes out a
  `DatabaseError` (`SchemaError`, a subclass, for a missing or incomplete schema), the
  cause kept, a password never in the message. The one exception is a value PostgreSQL
  cannot store (a NUL in a text, a key too big for its index): an `EncodeError`, which
  is not a `DatabaseError`, since the caller must change the value and a retry of
  database trouble must not retry it.
- Every connection we open goes through `connect`, `make_pool` or takes
  `target(dsn).connect_kwargs` itself (db/pooler.py): behind a transaction pooler none
  prepares a statement or keeps a setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from delta_actors.cancellation import cancel_once
from delta_actors.db.pooler import POOL_MODE_PARAM, target
from delta_actors.errors import ConfigError, DatabaseError, EncodeError, SchemaError

logger = logging.getLogger(__name__)

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
        psycopg.conninfo.conninfo_to_dict(target(dsn).conninfo)
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
        password = psycopg.conninfo.conninfo_to_dict(target(dsn).conninfo).get("password")
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
        if _is_pooler_mixup(exc):
            raise _pooler_mixup(action, exc, dsn) from exc
        where = f" at {redact_dsn(dsn)}" if dsn else ""
        detail = _redact_message(str(exc).strip(), dsn)
        raise DatabaseError(f"{action}: cannot use PostgreSQL{where}: {detail}") from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DatabaseError(
            f"{action}: {exc.diag.message_primary or exc}; grant that to the role this "
            "connects as, or connect as a role that has it"
        ) from exc
    except psycopg.Error as exc:
        if _is_pooler_mixup(exc):
            raise _pooler_mixup(action, exc, dsn) from exc
        # Anything else PostgreSQL or psycopg raised: still one error type for callers.
        detail = _redact_message(str(exc).strip(), dsn)
        raise DatabaseError(f"{action}: {type(exc).__name__}: {detail}") from exc


def _is_pooler_mixup(exc: psycopg.Error) -> bool:
    """Whether `exc` is what psycopg's prepared statements meet behind a transaction
    pooler: another client's `_pg3_0` on the server connection, ours gone with the last
    one, or one client's statement bound with another's parameters."""
    if isinstance(
        exc, psycopg.errors.DuplicatePreparedStatement | psycopg.errors.InvalidSqlStatementName
    ):
        return "_pg3_" in str(exc)
    return isinstance(exc, psycopg.errors.ProtocolViolation) and "prepared statement" in str(exc)


def _pooler_mixup(action: str, exc: psycopg.Error, dsn: str | None) -> DatabaseError:
    return DatabaseError(
        f"{action}: {type(exc).__name__}: {_redact_message(str(exc).strip(), dsn)}; this "
        "happens behind a pooler in transaction mode (PgBouncer pool_mode = transaction): "
        f"declare it, add {POOL_MODE_PARAM}=transaction to the DSN (or `supervise "
        "--pool-mode transaction`), and give connections of your own prepare_threshold=None"
    )


def connect(dsn: str, *, autocommit: bool = True, action: str = "connect") -> psycopg.Connection:
    """Open a sync connection, translating failures into DatabaseError."""
    check_dsn(dsn)
    given = target(dsn)
    with translate_errors(action, dsn):
        return psycopg.Connection.connect(
            given.conninfo, autocommit=autocommit, **given.connect_kwargs
        )


async def connect_async(
    dsn: str, *, autocommit: bool = True, action: str = "connect"
) -> psycopg.AsyncConnection:
    """Open an async connection, translating failures into DatabaseError."""
    check_dsn(dsn)
    given = target(dsn)
    with translate_errors(action, dsn):
        return await psycopg.AsyncConnection.connect(
            given.conninfo, autocommit=autocommit, **given.connect_kwargs
        )


# Our statements join unnest()-ed arrays and CTEs whose sizes a generic plan cannot know:
# prepared generic plans ran 2-10x slower than custom ones (benchmarks collapsed from
# the second run on). Our pools plan every execution for its parameters; an inform on
# a caller's connection is sent unprepared (drive below). The one exception is the claim,
# whose generic plan is sound and saves its planning: it runs on a connection of its own
# (queue/claimer.py). Behind a transaction pooler nothing is prepared, so the setting,
# which would outlive our transaction on a shared server connection, is not made.
PLAN_CACHE_MODE: LiteralString = "SET plan_cache_mode = force_custom_plan"


def _configure(conn: psycopg.Connection) -> None:
    conn.execute(PLAN_CACHE_MODE)


async def _configure_async(conn: psycopg.AsyncConnection) -> None:
    await conn.execute(PLAN_CACHE_MODE)


CONNECT_TIMEOUT = 10  # seconds; a black-holed server fails a connect instead of hanging it
# TCP keepalives (libpq's, on the client's socket): a connection whose server went away
# without a word reaching us (it ended the session while the network was down, say) is
# found dead within idle + interval x count seconds instead of the system's two hours.
# Without them a component waiting for a reply on such a connection waits forever, while
# the actor's heartbeat, on another connection, tells rescue that all is well.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,  # seconds
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


def component_conninfo(dsn: str, component: str) -> str:
    """`dsn` for one of our components: named in `pg_stat_activity`, with timeouts.

    The name (`application_name`, e.g. `delta-claim-billing`) lets an operator, or the
    fault-injection harness, tell the components' connections apart; a connect timeout
    and TCP keepalives (KEEPALIVES) bound how long a silent server can hold a component.
    Options the DSN sets itself win. Unix-socket connections ignore the keepalives. The
    pool mode (`target(dsn).pool_mode`) is not part of the result.
    """
    conninfo = target(dsn).conninfo
    given = psycopg.conninfo.conninfo_to_dict(conninfo)
    options: dict[str, Any] = {}
    if "application_name" not in given:
        options["application_name"] = component[:63]
    if "connect_timeout" not in given:
        options["connect_timeout"] = CONNECT_TIMEOUT
    options |= {key: value for key, value in KEEPALIVES.items() if key not in given}
    return psycopg.conninfo.make_conninfo(conninfo, **options)


class OwnConnection:
    """A component's connection of its own, for a statement it runs often in one shape,
    whose plan is made once (the claim, queue/claimer.py; plain jobs' results,
    queue/completer.py): a pool's connections plan every execution (PLAN_CACHE_MODE).

    Opened on first use, named `component` (component_conninfo), with `settings` made
    on it. Behind a transaction pooler (db/pooler.py) `prepares` is False: the server
    changes from one transaction to the next and serves other clients too, so no setting
    is made, and the owner prepares nothing. An owner whose statement failed or was
    interrupted calls `close()`: the connection's state is unknown, and the next `get()`
    opens a new one. Connecting raises psycopg's own errors, which owners already treat
    as a failed statement.
    """

    def __init__(self, dsn: str, component: str, settings: LiteralString) -> None:
        self._conninfo = component_conninfo(dsn, component)
        given = target(dsn)
        self._connect_kwargs = given.connect_kwargs
        self.prepares = given.keeps_sessions
        self._settings = settings
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.opened = 0  # connections opened so far (an owner may reset state on a new one)

    async def get(self) -> psycopg.AsyncConnection[Any]:
        """The open connection, or a new one."""
        if self._conn is None or self._conn.closed:
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, **self._connect_kwargs
            )
            try:
                if self.prepares:
                    await conn.execute(self._settings)
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
            self.opened += 1
        return self._conn

    async def close(self) -> None:
        """Close the connection, if open; the next get() opens a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()


# Healing pools. PostgreSQL can end idle connections (a restart, pg_terminate_backend, a
# pooler or firewall timing out); psycopg_pool only finds out when it hands one to a
# caller, which then fails. Without help every idle connection fails one caller in turn,
# for as long as the pool has dead ones (seconds of failed heartbeats after a fault).
# So the first connection that comes back broken makes the pool test all its idle ones
# (`check()`: one empty query each) and replace the dead, at once (the console's pool
# before that caller goes on: its next request works). That costs nothing while
# connections work, unlike a `check=` on every checkout, which adds a round trip to
# every completion batch (docs/performance.md has both measured).


HEAL_WAIT = 1.0  # seconds the console's callers wait for the check (make_async_pool)


class HealingConnectionPool(ConnectionPool):
    """A ConnectionPool that tests all its idle connections when one comes back broken."""

    def putconn(self, conn: psycopg.Connection[Any]) -> None:
        """Return `conn`; when it broke, discard every idle connection that broke too."""
        broken = conn.broken
        super().putconn(conn)
        if broken and not self.closed:
            # Sync callers are threads of their own: checking inline costs this one
            # caller a round trip per idle connection, once per fault.
            with contextlib.suppress(Exception):
                self.check()


class HealingAsyncConnectionPool(AsyncConnectionPool):
    """Async twin of HealingConnectionPool. The check runs as a task the pool owns. With
    `heal_wait`, every caller that returned a broken connection meanwhile waits for it,
    that many seconds at most: a caller that stops waiting (cancelled, or out of time)
    leaves the check running, and the pool's close cancelling the check ends no caller's
    wait as cancelled. So a request that failed on a dead connection is answered once
    none is left idle (the console's pool: the next request works). Without it (0, the
    components' pools) the caller goes on at once: a duty on a flapping link must not
    stall on a check the silent server holds up."""

    def __init__(self, *args: Any, heal_wait: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._heal_wait = heal_wait
        self._healing: asyncio.Task[None] | None = None
        self.heals = 0  # checks run after a broken connection came back (tests read it)

    async def putconn(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Return `conn`; when it broke, discard every idle one that broke too, waiting
        until that is done for `heal_wait` seconds at most."""
        broken = conn.broken
        await super().putconn(conn)
        if not broken or self.closed:
            return
        if self._healing is None or self._healing.done():
            self._healing = asyncio.create_task(self._heal(), name=f"pool:{self.name}:heal")
        # asyncio.wait, not wait_for: neither this caller's timeout or cancellation nor
        # the pool's close cancelling the check reaches the other side.
        if self._heal_wait > 0:
            await asyncio.wait([self._healing], timeout=self._heal_wait)

    async def _heal(self) -> None:
        self.heals += 1
        try:
            await self.check()
        except Exception as exc:  # noqa: BLE001 (the next broken return tries again)
            logger.warning(
                "checking the idle connections of pool %s failed: %s", self.name, exc,
                extra={"event": "pool.check_failed"},
            )  # fmt: skip

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool, after any check it is running."""
        healing, self._healing = self._healing, None
        if healing is not None:
            cancel_once(healing)
            await asyncio.gather(healing, return_exceptions=True)
        await super().close(timeout)


def make_pool(dsn: str, *, min_size: int, max_size: int, name: str) -> ConnectionPool:
    """A closed, healing pool of autocommit connections configured for our statements."""
    check_dsn(dsn)
    given = target(dsn)
    return HealingConnectionPool(
        component_conninfo(dsn, name), min_size=min_size, max_size=max_size,
        kwargs={"autocommit": True, **given.connect_kwargs},
        configure=_configure if given.keeps_sessions else None, open=False, name=name,
    )  # fmt: skip


def make_async_pool(
    dsn: str, *, min_size: int, max_size: int, name: str, heal_wait: float = 0.0
) -> AsyncConnectionPool:
    """Async twin of make_pool; `heal_wait`: see HealingAsyncConnectionPool."""
    check_dsn(dsn)
    given = target(dsn)
    return HealingAsyncConnectionPool(
        component_conninfo(dsn, name), min_size=min_size, max_size=max_size, heal_wait=heal_wait,
        kwargs={"autocommit": True, **given.connect_kwargs},
        configure=_configure_async if given.keeps_sessions else None, open=False, name=name,
    )  # fmt: skip


def drive(
    conn: psycopg.Connection, steps: Generator[Statement, Rows, _R], *, prepare: bool | None = False
) -> _R:
    """Run a statement generator on a sync connection; return what it returns.

    `prepare` as psycopg's: False (the default) sends every statement unprepared, as a
    caller's connection wants (see above); None lets psycopg prepare repeated ones.
    """
    try:
        statement = next(steps)
        while True:
            cur = conn.execute(*statement, prepare=prepare)
            statement = steps.send(cur.fetchall() if cur.description else [])
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def drive_async(
    conn: psycopg.AsyncConnection,
    steps: Generator[Statement, Rows, _R],
    *,
    prepare: bool | None = False,
) -> _R:
    """Run a statement generator on an async connection; return what it returns."""
    try:
        statement = next(steps)
        while True:
            cur = await conn.execute(*statement, prepare=prepare)
            statement = steps.send(await cur.fetchall() if cur.description else [])
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
