"""The leader's periodic duty: enqueue each `delta.Periodic` when it is due.

The protocol is in model/periodic.py's docstring. One pass:

1. Read the database's clock and the stored schedules of the app's periodics.
2. A periodic with no row gets one (its first run), fenced on the term.
3. For each due periodic, one transaction: take the run (UPDATE fenced on the term and
   on the due time read in 1, setting the next run past now), enqueue its job with the
   unique key `periodic:<name>:<due time>`, record the job's id. A run another leader
   took meanwhile matches nothing and enqueues nothing.

A pass that fails changes nothing of the runs it did not commit: the next pass (a
second later) finds them due still.
"""

from __future__ import annotations

import logging
from datetime import datetime

from psycopg_pool import AsyncConnectionPool

from delta_actors.app import App
from delta_actors.db import leader_sql
from delta_actors.model.periodic import Periodic
from delta_actors.queue.insert import InsertOptions, build_batch, insert_jobs_async

logger = logging.getLogger(__name__)


class PeriodicScheduler:
    """Enqueues an app's periodic jobs when they are due, as leader."""

    interval = 1.0

    def __init__(self, app: App, pool: AsyncConnectionPool) -> None:
        self._app = app
        self._pool = pool
        self.periodic = {p.name: p for p in app.periodic}

    async def run_once(self, term: int, actor_id: int) -> dict[str, int]:
        """One pass; returns how many periodics were registered and runs enqueued."""
        fence = {"term": term, "actor": actor_id}
        async with self._pool.connection() as conn:
            cur = await conn.execute(leader_sql.SELECT_PERIODIC, {"names": list(self.periodic)})
            rows = await cur.fetchall()
        now: datetime = rows[0][0]
        stored = {name: due for _, name, due in rows if name is not None}
        registered = enqueued = 0
        for name, periodic in self.periodic.items():
            due = stored.get(name)
            if due is None:
                async with self._pool.connection() as conn:
                    cur = await conn.execute(leader_sql.REGISTER_PERIODIC, {
                        **fence, **_describe(periodic), "next_run_at": periodic.first_run(now),
                    })  # fmt: skip
                registered += cur.rowcount
            elif due <= now:
                enqueued += await self._run(periodic, due, now, fence)
        return {"registered": registered, "enqueued": enqueued}

    async def _run(
        self, periodic: Periodic, due: datetime, now: datetime, fence: dict[str, int]
    ) -> int:
        options = InsertOptions(
            namespace=periodic.namespace, unique_key=f"periodic:{periodic.name}:{due.isoformat()}"
        )
        batch = build_batch([periodic.job], options, self._app)
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(leader_sql.TAKE_PERIODIC_RUN, {
                **fence, **_describe(periodic), "due": due,
                "next_run_at": periodic.next_run(due, now),
            })  # fmt: skip
            if cur.rowcount == 0:
                return 0  # another leader took it, or we lost the lease
            (job,) = await insert_jobs_async(conn, batch)
            await conn.execute(
                leader_sql.RECORD_PERIODIC_JOB, {"job": job.id, "name": periodic.name}
            )
        logger.info(
            "periodic %s (%s) enqueued job %d for %s%s", periodic.name, periodic.schedule,
            job.id, due.isoformat(), " (already queued)" if job.duplicate else "",
            extra={"event": "periodic.enqueued", "kind": periodic.kind, "job_id": job.id},
        )  # fmt: skip
        return 1


def _describe(periodic: Periodic) -> dict[str, str | None]:
    return {
        "name": periodic.name, "kind": periodic.kind, "namespace": periodic.namespace,
        "schedule": periodic.schedule,
    }  # fmt: skip
