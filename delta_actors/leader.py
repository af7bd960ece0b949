"""The leader actor: the duties that run once per cluster, not once per process.

Every supervisor forks one leader-candidate actor; the candidates elect one leader
through a lease in Postgres (election.py). Only while it leads does an actor run the
duties, each a service with its own interval (maintenance.py, informers.py):

- informers: each controller's `inform` on its interval, one run at a time;
- scheduler: promotes due scheduled and retryable jobs;
- rescuer: returns the claims of dead actors to work, within the heartbeat TTL;
- expirer: re-works synced resources past their namespace's `resource_expiry`;
- cleaner: deletes finished jobs and deleted resources past their retention.

Losing the lease cancels the duties at once. Like every actor, a candidate registers in
`delta_actor` and heartbeats, so its own death is visible too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from delta_actors.app import App
from delta_actors.database import connect_async, make_async_pool, translate_errors
from delta_actors.election import Elector
from delta_actors.informers import InformerScheduler
from delta_actors.maintenance import Cleaner, Expirer, Rescuer, run_periodically
from delta_actors.queue.scheduler import Scheduler
from delta_actors.registration import heartbeat, register_actor, unregister_actor
from delta_actors.schema import check_schema_async

logger = logging.getLogger(__name__)

LEADER_NAMESPACE = "leader"


class Leader:
    """A leader candidate: campaigns, and runs the cluster-wide duties while it leads."""

    def __init__(
        self,
        app: App,
        dsn: str,
        *,
        heartbeat_interval: float = 2.0,
        rescue_ttl: float = 10.0,
        lease_ttl: float = 15.0,
    ) -> None:
        self._app = app
        self._dsn = dsn
        self._heartbeat_interval = heartbeat_interval
        # Renew three times per lease; stop trusting it 2/15 of a lease early (2 s of 15).
        self._lease = {
            "ttl": lease_ttl,
            "renew_interval": lease_ttl / 3,
            "elect_interval": lease_ttl / 3,
            "margin": lease_ttl * 2 / 15,
        }
        self._pool = make_async_pool(dsn, min_size=1, max_size=4, name="delta-leader")
        self.scheduler = Scheduler(self._pool)
        self.rescuer = Rescuer(self._pool, ttl=rescue_ttl)
        self.expirer = Expirer(app, self._pool)
        self.cleaner = Cleaner(app, self._pool)
        self.informers = InformerScheduler(app, self._pool)
        self.elector: Elector | None = None
        self.actor_id: int | None = None
        self._main: asyncio.Task[None] | None = None
        self._duties: asyncio.Task[None] | None = None
        self.terms_led = 0
        self.terms_lost = 0

    @property
    def is_leader(self) -> bool:
        """Whether this candidate leads now (holds a lease it trusts)."""
        return self.elector is not None and self.elector.is_leader

    async def start(self) -> None:
        """Connect, register and start campaigning; returns once started."""
        if self._main is not None:
            return
        # A connection of its own, not the pool's: see Worker.start.
        async with await connect_async(self._dsn, action="start leader") as conn:
            with translate_errors("start leader", self._dsn):
                await check_schema_async(conn)
                self.actor_id = await register_actor(conn, LEADER_NAMESPACE, "leader")
        with translate_errors("start leader", self._dsn):
            await self._pool.open(wait=True, timeout=30)
        self.elector = Elector(
            self._dsn,
            self.actor_id,
            on_elected=self._elected,
            on_lost=self._lost,
            **self._lease,
        )
        self._main = asyncio.create_task(self._run(), name="leader:main")

    async def _run(self) -> None:
        assert self.elector is not None
        assert self.actor_id is not None
        async with asyncio.TaskGroup() as group:
            group.create_task(self.elector.run(), name="leader:election")
            group.create_task(
                heartbeat(self._pool, self.actor_id, self._heartbeat_interval),
                name="leader:heartbeat",
            )

    async def _elected(self, term: int) -> None:
        self.terms_led += 1
        self._duties = asyncio.create_task(self._run_duties(term), name=f"leader:duties:{term}")

    async def _lost(self) -> None:
        duties, self._duties = self._duties, None
        if duties is not None:
            self.terms_lost += 1
            duties.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await duties

    async def _run_duties(self, term: int) -> None:
        assert self.actor_id is not None
        actor_id = self.actor_id
        async with asyncio.TaskGroup() as group:
            group.create_task(self.scheduler.run(), name="leader:scheduler")
            group.create_task(self.informers.run(term, actor_id), name="leader:informers")
            for name, service in (
                ("rescuer", self.rescuer),
                ("expirer", self.expirer),
                ("cleaner", self.cleaner),
            ):
                group.create_task(
                    run_periodically(f"leader.{name}", service.interval, service.run_once),
                    name=f"leader:{name}",
                )

    async def wait_stopped(self) -> None:
        """Wait until the leader ends; re-raise what made it fail."""
        assert self._main is not None
        with contextlib.suppress(asyncio.CancelledError):
            await self._main

    async def stop(self, timeout: float = 30.0) -> None:
        """Resign (handing over at once), stop the duties and unregister; idempotent."""
        if self._main is None or self._pool.closed:
            return
        self._main.cancel()  # the elector resigns on cancellation
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._main, timeout)
        await self._lost()
        if self.actor_id is not None:
            await unregister_actor(self._pool, self.actor_id)
        await self._pool.close()
