"""The producer's own connection, on which a claim runs a plan made once.

Why: CLAIM_JOBS is the statement a worker runs most, always in the same shape. Planned
for its parameters it spends about as long in the planner (0.2 ms) as in the executor
for ten rows, and at low concurrency, where every claim takes a few rows, that planning
was half the server's time per job. Our pools plan every execution (see db/connection.py),
so the claim has a connection of its own, configured for generic plans, on which it is a
prepared statement: planned once, then only executed.

Invariants:
- One claim at a time: only the producer claims, and it never claims twice at once, so
  one connection serves it and no pool is needed.
- The claim's plan finds every row through an index (`enable_seqscan = off` on this
  connection): made on empty tables, a generic plan would scan delta_resource
  sequentially, and a claim of resource works got 25x slower as the table grew.
- A generic plan is fixed at the statistics it was made with; an ANALYZE invalidates it,
  but growth alone does not. So the plan is dropped (`DISCARD PLANS`) every
  `replan_interval` seconds and remade at the next claim.
- Behind a transaction pooler (db/pooler.py) this connection's server changes from one
  claim to the next and serves other clients too: no setting is made, nothing is
  prepared, nothing replanned; each claim is planned for its parameters, as the pools'
  statements are (docs/performance.md measures the difference).
- The rows come back in binary: no text form of a job's args (bytea) or numbers to write
  on the server and parse here (the claim alone, on one connection: a fifth to a quarter
  less of the client's CPU per claim; docs/performance.md, "The claim's rows").
- A claim that failed or was interrupted leaves the connection in an unknown state: it is
  closed, and the next claim opens a new one. Connecting raises psycopg's own errors, which
  the producer already treats as a failed claim (logged, counted, retried).

Limits (`concurrency`, `rate` of a kind, model/limits.py), enforced inside the claim and
cluster-wide. An app without limits claims as above, unchanged. One with limited kinds:

1. claims each limited kind in turn (a different one first each claim), in a
   transaction of its own: LOCK_LIMIT locks the kind's `delta_limit` row, which
   serializes every claim of that kind across the cluster; CLAIM_LIMITED_JOBS, a
   statement after the lock and so with a snapshot that sees every claim committed
   before it, takes at most min(free slots, concurrency - running works of the kind,
   rate count - starts in the window) and records its starts. Limited kinds go first
   because their limits bound what they can take: the other kinds cannot starve them;
2. then fills the slots left with the other kinds (CLAIM_UNLIMITED_JOBS: the same claim
   without the limited kinds), so that a kind at its limit never holds up the rest.

Each claim reads from its floors (queue/floors.py): the other kinds' claim has a set, and
each limited kind one of its own. The second claim skips queued jobs of limited kinds by
a row filter, but only those above its floors: a backlog of a limited kind queued before
the other kinds' floors passed it costs their claims nothing (docs/performance.md
measures it).

So the running works of a kind never exceed its concurrency and its starts in any window
never exceed its rate, whichever hosts claim. A slot of a limit frees when the work's
result is written; the worker then claims again at once (a run ended elsewhere is seen
at the next poll).
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from delta_actors.db import job_sql
from delta_actors.db.connection import OwnConnection
from delta_actors.model.limits import Limit
from delta_actors.queue.floors import UNLIMITED, Floors

REPLAN_INTERVAL = 10.0


class Claimer:
    """Runs CLAIM_JOBS for one producer on a connection of its own."""

    def __init__(
        self,
        dsn: str,
        namespace: str,
        replan_interval: float = REPLAN_INTERVAL,
        floors: Floors | None = None,
    ):
        # Named, so operators can tell it apart in pg_stat_activity; a black-holed server
        # fails the claim after a while (as a pool's checkout would) instead of hanging it.
        self._own = OwnConnection(
            dsn, f"delta-claim-{namespace}", job_sql.CLAIM_CONNECTION_SETTINGS
        )
        self._prepare = self._own.prepares  # behind a transaction pooler: nothing prepared
        self._replan_interval = replan_interval
        self._replan_at = 0.0
        self._opened = 0  # the connection whose plans _replan_at is for
        self.replans = 0  # plans dropped to be remade (tests read it)
        self._turn = 0
        self.floors = floors or Floors()

    async def claim(self, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Claim jobs; on any failure the connection is dropped and the error raised."""
        try:
            conn = await self._connection()
            loop = asyncio.get_running_loop()
            if self._prepare and loop.time() >= self._replan_at:
                await conn.execute(job_sql.REPLAN_CLAIM, prepare=False)
                self.replans += 1
                self._replan_at = loop.time() + self._replan_interval
            cur = await conn.execute(
                job_sql.CLAIM_JOBS,
                {**params, "floors": self.floors.literal(UNLIMITED)},
                prepare=self._prepare, binary=True,
            )  # fmt: skip
            rows = await cur.fetchall()
        except BaseException:
            await self.close()
            raise
        self.floors.claimed(UNLIMITED, rows)
        return rows

    async def claim_limited(
        self, params: dict[str, Any], limits: dict[str, Limit]
    ) -> list[tuple[Any, ...]]:
        """Claim the unlimited kinds, then each limited kind within its limits
        (see the module docstring), at most `params["limit"]` rows in all."""
        try:
            return await self._claim_limited(await self._connection(), params, limits)
        except BaseException:
            await self.close()
            raise

    async def _claim_limited(
        self, conn: psycopg.AsyncConnection[Any], params: dict[str, Any], limits: dict[str, Limit]
    ) -> list[tuple[Any, ...]]:
        wanted = params["limit"]
        rows: list[tuple[Any, ...]] = []
        # A different first kind each claim, so that no limited kind starves another.
        kinds = list(limits)
        self._turn = (self._turn + 1) % len(kinds)
        for kind in kinds[self._turn :] + kinds[: self._turn]:
            if len(rows) >= wanted:
                break
            limit = limits[kind]
            kind_params = {
                **params, "limit": wanted - len(rows), "kind": kind,
                "concurrency": limit.concurrency, "rate_count": limit.rate_count,
                "rate_window": limit.rate_window or 0.0, "floors": self.floors.literal(kind),
            }  # fmt: skip
            prepare = self._prepare
            async with conn.transaction():
                await conn.execute(job_sql.LOCK_LIMIT, kind_params, prepare=prepare)
                cur = await conn.execute(
                    job_sql.CLAIM_LIMITED_JOBS, kind_params, prepare=prepare, binary=True
                )
                taken = await cur.fetchall()
            self.floors.claimed(kind, taken)
            rows += taken
        if len(rows) < wanted:
            cur = await conn.execute(
                job_sql.CLAIM_UNLIMITED_JOBS,
                {
                    **params, "limit": wanted - len(rows), "limited": kinds,
                    "floors": self.floors.literal(UNLIMITED),
                },
                prepare=self._prepare, binary=True,
            )  # fmt: skip
            taken = await cur.fetchall()
            self.floors.claimed(UNLIMITED, taken)
            rows += taken
        return rows

    async def close(self) -> None:
        await self._own.close()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        conn = await self._own.get()
        if self._own.opened != self._opened:
            # A new connection has no plan yet: the first is made at its first claim.
            self._opened = self._own.opened
            self._replan_at = asyncio.get_running_loop().time() + self._replan_interval
        return conn
