"""Leader election: a term-scoped lease in one Postgres row.

States of an elector::

    candidate ──won (lease expired or absent)──► leader ──renew fails / lease too old──► candidate
        ▲  attempt every elect_interval, or at once on NOTIFY 'delta_leader'      │ resign on stop
        └──────────────────────────────────────────────────────────────────────────┘

Invariants:
- Postgres is authoritative: the row `delta_leader` names the leader, its term and the
  lease's expiry on the database clock. A win (ATTEMPT_ELECTION) takes only an expired
  lease, or the candidate's own (a leader whose connection broke gave its term up at once
  and takes the lease back under a new term when it reconnects), and increments the term;
  renew and resign match (term, actor).
- The leader trusts its lease only until `attempt start + ttl - margin` on its own
  monotonic clock: time spent before the row was written and clock drift are covered
  by the margin, and a process paused past that moment (SIGSTOP, GC, swap) sees it expired
  on waking, before it does anything. A renewal still unanswered at that moment (a
  server gone silent, a lock on the row) loses the lease then, not when the statement
  ends, which may be never; a win answered after it is resigned, its duties never started.
- Losing the lease (a renewal that matches no row, or the trust deadline passing) stops
  leader duties at once: `on_lost` cancels them. Leader-only writes that a stale leader
  could harm also check the lease in SQL (the `fence` statements).
- Resigning frees the lease and NOTIFYs the candidates, so a clean hand-over takes one
  round trip, not a TTL; after a crash it takes at most one TTL. Behind a transaction
  pooler without a listen DSN (db/pooler.py) nothing LISTENs: a candidate sees a
  resignation at its next attempt, within `elect_interval`.
- Stepping down (`step_down`, when the leader's own duties keep failing) stops trusting
  the lease at once, resigns it at the next turn of the loop (at most `renew_interval`
  later; the leader also resigns it at once when it can), and sits out one TTL before
  campaigning again, so that a healthy candidate can win.
- The loop survives any Exception: a failure of the election connection (or anything
  else) ends the term, and the loop reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from delta_actors.cancellation import cancel_once, raise_if_cancelling
from delta_actors.db import leader_sql
from delta_actors.db.connection import component_conninfo
from delta_actors.db.pooler import target
from delta_actors.health import log_failure

logger = logging.getLogger(__name__)


class Elector:
    """Campaigns for the lease and holds it; calls back on winning and on losing.

    Args:
        dsn: the database (the elector keeps one connection of its own, for LISTEN).
        actor_id: this actor's id, written into the lease.
        on_elected: awaited with the term when the lease is won.
        on_lost: awaited when the lease is lost or given up.
        ttl: seconds a lease lasts without renewal.
        renew_interval: seconds between renewals.
        elect_interval: seconds between attempts as a candidate (+ up to 10% jitter).
        margin: seconds before the lease's end at which the leader stops trusting it.
        listens: LISTEN for resignations (False behind a transaction pooler).
    """

    def __init__(
        self,
        dsn: str,
        actor_id: int,
        *,
        on_elected: Callable[[int], Awaitable[None]],
        on_lost: Callable[[], Awaitable[None]],
        ttl: float = 15.0,
        renew_interval: float = 5.0,
        elect_interval: float = 5.0,
        margin: float = 2.0,
        listens: bool = True,
    ) -> None:
        if not 0 < margin < ttl or not 0 < renew_interval < ttl - margin:
            raise ValueError("election needs 0 < renew_interval < ttl - margin and margin < ttl")
        self._conninfo = component_conninfo(dsn, "delta-lease")
        self._connect_kwargs = target(dsn).connect_kwargs
        self._listens = listens
        self.actor_id = actor_id
        self._on_elected = on_elected
        self._on_lost = on_lost
        self.ttl = ttl
        self.renew_interval = renew_interval
        self.elect_interval = elect_interval
        self.margin = margin
        self.term: int | None = None
        self.trusted_until = 0.0  # loop time
        self._sit_out_until = 0.0  # loop time before which a candidate does not campaign
        self._resign_term: int | None = None  # a term stepped down from, not yet resigned

    @property
    def is_leader(self) -> bool:
        """Whether this elector holds a lease it still trusts."""
        return self.term is not None and asyncio.get_running_loop().time() < self.trusted_until

    async def run(self) -> None:
        """Campaign, lead and renew until cancelled; resigns when cancelled as leader."""
        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, **self._connect_kwargs
                ) as conn:
                    if self._listens:
                        await conn.execute(
                            sql.SQL("LISTEN {}").format(sql.Identifier(leader_sql.LEADER_CHANNEL))
                        )
                    delay = 0.1
                    await self._campaign(conn)
            except Exception as exc:  # noqa: BLE001 (the election goes on; logged)
                log_failure(
                    logger, f"election connection failed, retrying in {delay:.1f}s", exc,
                    "election.error",
                )  # fmt: skip
                await self._lose("the election connection failed")
            raise_if_cancelling()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.elect_interval)

    async def _campaign(self, conn: psycopg.AsyncConnection) -> None:
        # One task uses the connection: waiting on it for notifications (a candidate
        # wakes at once when a leader resigns) is also how this loop sleeps.
        try:
            while True:
                raise_if_cancelling()
                if self._resign_term is not None:
                    await self._resign_term_given_up(conn)
                sitting_out = self._sit_out_until - asyncio.get_running_loop().time()
                if self.term is None and sitting_out > 0:
                    wait = sitting_out
                elif self.term is None:
                    await self._attempt(conn)
                    wait = self.elect_interval * (1 + random.uniform(0, 0.1))  # noqa: S311
                else:
                    await self._renew(conn)
                    wait = self.renew_interval
                if self.term is not None:
                    # Wake early enough to stop trusting the lease at its deadline.
                    loop = asyncio.get_running_loop()
                    wait = max(0.0, min(wait, self.trusted_until - loop.time()))
                async for _ in conn.notifies(timeout=wait, stop_after=1):
                    pass
                if self.term is not None and not self.is_leader:
                    await self._lose("the lease was not renewed in time")
        except asyncio.CancelledError:
            await self._resign(conn)
            raise

    async def _attempt(self, conn: psycopg.AsyncConnection) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        cur = await conn.execute(
            leader_sql.ATTEMPT_ELECTION,
            {"actor": self.actor_id, "host": socket.gethostname(), "pid": os.getpid(),
             "ttl": self.ttl},
        )  # fmt: skip
        row = await cur.fetchone()
        if row is None:
            return
        if loop.time() >= started + self.ttl - self.margin:
            # Won, but the answer came too late to trust the lease: give it back.
            self._resign_term = int(row[0])
            logger.warning(
                "won the lease (term %d) too late to trust it; resigning it", row[0],
                extra={"event": "election.won_late"},
            )  # fmt: skip
            return
        self.term = int(row[0])
        self.trusted_until = started + self.ttl - self.margin
        logger.info(
            "elected leader (term %d)", self.term,
            extra={"event": "election.elected", "term": self.term},
        )  # fmt: skip
        await self._on_elected(self.term)

    async def _renew(self, conn: psycopg.AsyncConnection) -> None:
        """Renew the lease; if no answer comes by the trust deadline, lose it then.

        A renewal the server does not answer (a one-way cut, a lock on the row) can wait
        for as long as TCP does, and psycopg's cancellation for up to ten seconds more:
        the lease is lost at its deadline, while the statement is still out, and the
        connection (its state unknown) is given up once the statement ends.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        renewal = asyncio.create_task(
            _fetch_one(conn, leader_sql.RENEW_LEASE,
                       {"ttl": self.ttl, "term": self.term, "actor": self.actor_id}),
            name="leader:renewal",
        )  # fmt: skip
        try:
            await asyncio.wait({renewal}, timeout=max(0.0, self.trusted_until - started))
        except asyncio.CancelledError:
            # Stopping: the resignation waits for it on the connection; how it ended
            # (cancelled, or the connection closed by psycopg) no longer matters.
            renewal.add_done_callback(lambda task: task.cancelled() or task.exception())
            cancel_once(renewal)
            raise
        if not renewal.done():
            await self._lose("the lease was not renewed in time: no answer from PostgreSQL")
            cancel_once(renewal)
            await asyncio.wait({renewal})  # psycopg bounds its cancellation; not cancelled twice
            ended = None if renewal.cancelled() else renewal.exception()
            raise TimeoutError(
                "the lease's renewal got no answer by the lease's deadline"
            ) from ended
        if renewal.result() is None:  # a failed statement raises here, as it always did
            await self._lose("the lease was taken over")
            return
        self.trusted_until = started + self.ttl - self.margin

    async def _lose(self, why: str, level: int = logging.WARNING) -> None:
        if self.term is None:
            return
        logger.log(
            level, "lost leadership (term %d): %s", self.term, why,
            extra={"event": "election.lost", "term": self.term},
        )  # fmt: skip
        self.term = None
        self.trusted_until = 0.0
        await self._on_lost()

    async def step_down(self, why: str) -> int | None:
        """Stop leading now and sit out one TTL; return the term given up (None: none).

        The lease is resigned at the next turn of the campaign loop; the caller may
        resign it sooner itself (RESIGN_LEASE with the term returned).
        """
        term = self.term
        if term is None:
            return None
        self._resign_term = term
        self._sit_out_until = asyncio.get_running_loop().time() + self.ttl
        await self._lose(why, logging.ERROR)
        return term

    async def _resign_term_given_up(self, conn: psycopg.AsyncConnection) -> None:
        # Matches nothing if the lease expired and another candidate won it meanwhile.
        await conn.execute(
            leader_sql.RESIGN_LEASE, {"term": self._resign_term, "actor": self.actor_id}
        )
        self._resign_term = None

    async def _resign(self, conn: psycopg.AsyncConnection) -> None:
        if self.term is None:
            return
        term = self.term
        await self._lose("resigning", logging.INFO)  # a clean stop is no warning
        with contextlib.suppress(psycopg.Error, OSError):
            await conn.execute(leader_sql.RESIGN_LEASE, {"term": term, "actor": self.actor_id})
            logger.info("resigned leadership (term %d)", term, extra={"event": "election.resigned"})


async def _fetch_one(
    conn: psycopg.AsyncConnection, statement: LiteralString, params: dict[str, object]
) -> tuple[Any, ...] | None:
    cur = await conn.execute(statement, params)
    return await cur.fetchone()
