"""Promotion of scheduled and retryable jobs that are due.

Runs in batches (`PROMOTE_DUE_JOBS`, index-backed, `SKIP LOCKED` so that several
promoters never block each other) and sleeps until the next job is due, at most
`interval` seconds, so a short snooze is promoted on time without tight polling. Promoted
jobs wake the workers of their queue through NOTIFY. The loop survives any Exception
(logged, tried again after the interval) and reports each pass to its `Progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from psycopg_pool import AsyncConnectionPool

from delta_actors.cancellation import raise_if_cancelling
from delta_actors.db import job_sql
from delta_actors.health import Progress, log_failure

logger = logging.getLogger(__name__)

PROMOTE_BATCH = 1000


class Promoter:
    """Makes due jobs available; one loop per process that runs it."""

    def __init__(self, pool: AsyncConnectionPool, *, interval: float = 1.0) -> None:
        self._pool = pool
        self._interval = interval  # seconds between runs at most
        self._poked = asyncio.Event()

    @property
    def interval(self) -> float:
        """Seconds between passes at most."""
        return self._interval

    def poke(self) -> None:
        """Look again now: a job was just scheduled to become due soon."""
        self._poked.set()

    async def run_once(self) -> dict[str, int]:
        """Promote every due job, in batches; return promoted counts by queue."""
        promoted: dict[str, int] = {}
        async with self._pool.connection() as conn:
            while True:
                cur = await conn.execute(job_sql.PROMOTE_DUE_JOBS, (PROMOTE_BATCH,))
                rows = await cur.fetchall()
                for queue, count, _ in rows:
                    promoted[queue] = promoted.get(queue, 0) + count
                if sum(count for _, count, _ in rows) < PROMOTE_BATCH:
                    return promoted

    async def next_due_in(self) -> float | None:
        """Seconds until the next scheduled or retryable job is due; None if there is none."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(job_sql.SELECT_NEXT_DUE_IN)
            row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def run(self, progress: Progress | None = None) -> None:
        """Promote due jobs until cancelled; survives any Exception (logged, retried)."""
        progress = progress or Progress("promoter", self._interval)
        while True:
            self._poked.clear()
            wait = self._interval
            try:
                async with progress.deadline():
                    promoted = await self.run_once()
                    if promoted:
                        logger.debug(
                            "promoted due jobs %s", promoted, extra={"event": "jobs.promoted"}
                        )
                    due_in = await self.next_due_in()
                if due_in is not None:
                    wait = min(wait, max(due_in, 0.001))
            except Exception as exc:  # noqa: BLE001 (promotion must go on; logged)
                progress.failed(exc)
                log_failure(logger, "promoting due jobs failed", exc, "promoter.error")
            else:
                progress.ok()
            raise_if_cancelling()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._poked.wait()
