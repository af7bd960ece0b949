"""An actor's row in `delta_actor`: register, heartbeat, unregister.

The row is how rescue knows an actor lives. Rescue deletes the row of an actor it declares
dead, so a heartbeat that touches no row means this actor's claims went to others: the
actor must stop (and be restarted) rather than go on with results that are fenced off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from delta_actors.cancellation import cancel_once, raise_if_cancelling, settle
from delta_actors.db import actor_sql
from delta_actors.errors import ActorLostError
from delta_actors.health import ComponentHealth, describe, log_failure

logger = logging.getLogger(__name__)

_health_encoder = msgspec.json.Encoder()


async def register_actor(conn: psycopg.AsyncConnection, namespace: str, role: str) -> int:
    """Insert this process's actor row; return its id."""
    cur = await conn.execute(
        actor_sql.REGISTER_ACTOR, (socket.gethostname(), os.getpid(), namespace, role)
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def heartbeat(
    pool: AsyncConnectionPool,
    actor_id: int,
    interval: float,
    *,
    fence: float | None = None,
    health: Callable[[], list[ComponentHealth]] = list,
) -> None:
    """Refresh the row, and the components' `health()`, every `interval` seconds.

    Raises ActorLostError when rescue deleted the row, and, with `fence`, when no heartbeat
    has reached the database for `fence` seconds: past the rescue TTL another actor may
    hold our claims, so we stop (cancelling our works) before that can happen. Any other
    failure is logged and the next heartbeat tries again.

    Each attempt runs as a task of its own that the loop waits for at most
    max(interval, 1 s) and then gives up, without waiting for it to end: psycopg answers
    the cancellation of a query by cancelling it on the server and waiting for it to end
    (up to 5 s each), and a server the network cut off answers neither, so waiting would
    let the fence fire seconds past the TTL. A given-up attempt is not replaced until it
    has ended, so attempts never pile up.
    """
    last_ok = time.monotonic()
    attempt: asyncio.Task[bool] | None = None
    attempt_at = last_ok
    timeout = max(interval, 1.0)
    try:
        while True:
            raise_if_cancelling()
            await asyncio.sleep(interval)
            if attempt is None or attempt.done():
                attempt_at = time.monotonic()
                attempt = asyncio.create_task(
                    _beat(pool, actor_id, health), name=f"actor:{actor_id}:heartbeat"
                )
                attempt.add_done_callback(_retrieve)
            done, _ = await asyncio.wait({attempt}, timeout=timeout)
            error: BaseException | None
            if not done or attempt.cancelled():
                cancel_once(attempt)
                error = TimeoutError(
                    f"no connection or no answer from PostgreSQL within {timeout:g}s"
                )
            else:
                error = attempt.exception()
            if error is not None:
                silent = time.monotonic() - last_ok
                log_failure(
                    logger,
                    f"heartbeat of actor {actor_id} failed ({silent:.1f}s since the last one "
                    "that got through)", error, "actor.heartbeat_failed",
                )  # fmt: skip
                if fence is not None and silent > fence:
                    raise ActorLostError(
                        f"actor {actor_id} could not heartbeat for {silent:.1f}s; stopping "
                        "before rescue hands its works to another actor"
                    ) from error
                continue
            if not attempt.result():
                raise ActorLostError(
                    f"actor {actor_id} was declared dead by rescue (a pause longer than the "
                    "heartbeat TTL?); stopping so that it restarts"
                )
            last_ok = attempt_at
    except asyncio.CancelledError:
        if attempt is not None:
            await settle([attempt])  # a moment for its cancel request; see cancellation.py
        raise
    finally:
        if attempt is not None:
            cancel_once(attempt)  # not awaited, for the same reason; _retrieve owns its end


async def _beat(
    pool: AsyncConnectionPool, actor_id: int, health: Callable[[], list[ComponentHealth]]
) -> bool:
    """One heartbeat: whether the row was still there."""
    params = {"actor": actor_id, "health": _health_encoder.encode(health()).decode()}
    async with pool.connection() as conn:
        cur = await conn.execute(actor_sql.HEARTBEAT_ACTOR, params)
        return cur.rowcount == 1


def _retrieve(task: asyncio.Task[bool]) -> None:
    # The loop reads the outcome of the attempts it waited for; this marks the outcome of
    # a given-up one as seen (its failure was logged as the timeout already).
    if not task.cancelled():
        task.exception()


async def unregister_actor(pool: AsyncConnectionPool, actor_id: int) -> None:
    """Delete the row; a failure is logged (rescue cleans up after a dead row)."""
    try:
        async with pool.connection() as conn:
            await conn.execute(actor_sql.UNREGISTER_ACTOR, (actor_id,))
    except (psycopg.Error, OSError) as exc:
        logger.warning(
            "unregistering actor %d failed: %s", actor_id, describe(exc),
            extra={"event": "actor.unregister_failed"},
        )  # fmt: skip
