"""What a connection pooler between us and PostgreSQL allows: the DSN declares it.

Pool modes (`PoolMode`):

- `session`, the default: a direct connection, or a pooler in session mode (PgBouncer's
  `pool_mode = session`). A client keeps one server connection for as long as it is
  connected, so session state is ours to use: the pools' `plan_cache_mode`, the claim
  connection's settings and prepared plan (queue/claimer.py), psycopg's automatic
  prepares, LISTEN.
- `transaction` (PgBouncer's `pool_mode = transaction`): each transaction may run on
  another server connection, one that other clients use too. Invariants in this mode:
  - no session state outlives a transaction: nothing is SET outside one (the pools'
    and the claim connection's settings go away, so every statement is planned for its
    parameters), nothing LISTENs, and no lock is held across transactions (migrate's
    advisory lock is transaction-level; the limits' locks are row locks);
  - no statement is prepared: every connection we open gets `prepare_threshold=None`,
    which psycopg applies to an explicit `execute(..., prepare=True)` as well;
  - wake-ups come from polling (runtime/worker.py: every `POLL_INTERVAL_WITHOUT_LISTEN`
    seconds unless told otherwise), or from LISTEN on a separate direct connection
    when one is given (`supervise --listen-dsn`, `Worker(listen_dsn=)`).

Declared, not detected. Through PgBouncer a client connection looks like a direct one
(PgBouncer forwards the server's parameters; its SHOW commands live in its admin
console, another database that needs an admin user), and the two modes cannot be told
apart by behaviour without racing other clients. A wrong guess is not a slowdown but
one client's statement bound on another's connection. So the DSN says it:
`postgresql://app@pgbouncer:6432/app?delta_pool_mode=transaction`, or
`delta_pool_mode=transaction` among key=value pairs (`supervise --pool-mode` adds it).
The parameter is ours: `target()` removes it before libpq sees the DSN. Errors that only
a transaction pooler causes (a duplicate or missing `_pg3_*` statement, a bind message
of the wrong size) name this setting (db/connection.py, translate_errors).

Prepared statements through a pooler that supports them at the protocol level
(PgBouncer 1.21 and later with `max_prepared_statements`) are not used: transaction
mode never prepares (Debian bookworm ships PgBouncer 1.18, which has no such support).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from delta_actors.errors import ConfigError

POOL_MODE_PARAM = "delta_pool_mode"


class PoolMode(StrEnum):
    """How the pooler between us and PostgreSQL (if any) hands out server connections."""

    SESSION = "session"
    TRANSACTION = "transaction"


@dataclass(frozen=True, slots=True)
class Target:
    """A DSN split into what libpq takes and the pool mode it declares."""

    conninfo: str
    pool_mode: PoolMode

    @property
    def keeps_sessions(self) -> bool:
        """Whether session state (SET, prepared statements, LISTEN) stays ours."""
        return self.pool_mode is PoolMode.SESSION

    @property
    def connect_kwargs(self) -> dict[str, Any]:
        """Arguments for psycopg's `connect()` (and a pool's `kwargs`) in this mode."""
        return {} if self.keeps_sessions else {"prepare_threshold": None}


_KV_PARAM = re.compile(
    rf"(?:^|\s){POOL_MODE_PARAM}\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)", re.IGNORECASE
)


def _pool_mode(value: str, where: str) -> PoolMode:
    try:
        return PoolMode(value.strip("'").lower())
    except ValueError:
        modes = ", ".join(mode.value for mode in PoolMode)
        raise ConfigError(
            f"{where} {value!r} is not a pool mode: use one of {modes} (transaction: "
            "behind PgBouncer with pool_mode = transaction; session: direct, or a pooler "
            "in session mode)"
        ) from None


def target(dsn: str) -> Target:
    """Split `dsn` into libpq's conninfo and the pool mode it declares (default session)."""
    if "://" in dsn.split("?", 1)[0]:
        base, question, query = dsn.partition("?")
        if not question:
            return Target(dsn, PoolMode.SESSION)
        kept, found = [], None
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if key.lower() == POOL_MODE_PARAM:
                found = value
            elif part:
                kept.append(part)
        if found is None:
            return Target(dsn, PoolMode.SESSION)
        conninfo = f"{base}?{'&'.join(kept)}" if kept else base
        return Target(conninfo, _pool_mode(found, f"the DSN's {POOL_MODE_PARAM}"))
    match = _KV_PARAM.search(dsn)
    if match is None:
        return Target(dsn, PoolMode.SESSION)
    conninfo = (dsn[: match.start()] + " " + dsn[match.end() :]).strip()
    return Target(conninfo, _pool_mode(match.group(1), f"the DSN's {POOL_MODE_PARAM}"))


def with_pool_mode(dsn: str, mode: PoolMode | str) -> str:
    """`dsn` declaring `mode` (replacing what it declared), as `supervise --pool-mode` does."""
    conninfo = target(dsn).conninfo
    value = _pool_mode(str(mode), "--pool-mode").value
    if "://" in conninfo.split("?", 1)[0]:
        joiner = "&" if "?" in conninfo else "?"
        return f"{conninfo}{joiner}{POOL_MODE_PARAM}={value}"
    return f"{conninfo} {POOL_MODE_PARAM}={value}".strip()


def listen_dsn_of(dsn: str, listen_dsn: str | None) -> str | None:
    """Where to LISTEN: `listen_dsn`, else `dsn` unless it declares a transaction pooler
    (then None: nothing listens). A `listen_dsn` behind one is refused."""
    if listen_dsn is not None:
        if not target(listen_dsn).keeps_sessions:
            raise ConfigError(
                f"the listen DSN declares {POOL_MODE_PARAM}=transaction, but LISTEN needs a "
                "session of its own: give a direct connection to PostgreSQL (or one "
                "through a pooler in session mode)"
            )
        return listen_dsn
    return dsn if target(dsn).keeps_sessions else None
