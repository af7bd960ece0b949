"""The leader's gauges duty: what operators alert on, read once for the whole cluster.

Every `interval` seconds the leader reads, and sends with its heartbeats to its
supervisor's metrics (runtime/metrics.py; only the supervisor whose candidate leads
reports them, so a dashboard takes the max over supervisors):

- resources by kind and stored state. Failed and degraded ones are counted each pass
  (a partial index of just those rows); the whole table, a full read, only every
  `FULL_EVERY` passes, its other states shown as of then;
- paused namespaces;
- the works and jobs waiting (available) of each limited kind, capped at `CAP`.
"""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from delta_actors.app import App
from delta_actors.db import job_sql, leader_sql
from delta_actors.model.gauges import ClusterGauges

FULL_EVERY = 4  # passes between full counts of the resource table (60 s at 15 s)
CAP = 100_000


class GaugeReader:
    """Reads the cluster's gauges for the leader's heartbeats."""

    interval = 15.0

    def __init__(self, app: App, pool: AsyncConnectionPool) -> None:
        self._app = app
        self._pool = pool
        self._passes = 0
        self._counts: dict[tuple[str, str], int] = {}
        self.gauges: ClusterGauges | None = None

    async def run_once(self) -> dict[str, int]:
        full = self._passes % FULL_EVERY == 0
        self._passes += 1
        async with self._pool.connection() as conn:
            query = (
                leader_sql.COUNT_RESOURCES_BY_KIND if full else leader_sql.COUNT_TROUBLED_RESOURCES
            )
            rows = await (await conn.execute(query)).fetchall()
            paused = [row[0] for row in await (await conn.execute(
                job_sql.SELECT_PAUSED_NAMESPACES)).fetchall()]  # fmt: skip
            waiting: list[tuple[str, int]] = []
            if self._app.limits:
                cur = await conn.execute(
                    leader_sql.COUNT_WAITING_OF_KINDS, {"kinds": list(self._app.limits), "cap": CAP}
                )
                waiting = [(kind, int(n)) for kind, n in await cur.fetchall()]
        if full:
            self._counts = {}
        else:
            for key in [k for k in self._counts if k[1] in ("failed", "degraded")]:
                del self._counts[key]
        for kind, state, n in rows:
            self._counts[(kind, state)] = int(n)
        self.gauges = ClusterGauges(
            [(kind, state, n) for (kind, state), n in sorted(self._counts.items())],
            paused,
            [(kind, dict(waiting).get(kind, 0)) for kind in sorted(self._app.limits)],
        )
        return {}  # nothing to log: the gauges are the report
