"""The leader actor: the duties that run once per cluster, not once per process.

Every supervisor forks one leader-candidate actor; the candidates elect one leader
through a lease in Postgres (election.py). Only while it leads does an actor run the
duties, each a loop with its own interval (maintenance.py, resources/informers.py):

- informers: each controller's `inform` on its interval, one run at a time;
- promoter: promotes due scheduled and retryable jobs;
- rescuer: returns the claims of dead actors to work, within the heartbeat TTL;
- expirer: re-works synced resources past their namespace's `resource_expiry`;
- cleaner: deletes finished jobs and deleted resources past their retention;
- periodic: enqueues the app's `delta.Periodic` jobs when due (leader/periodic.py);
- gauges: reads resources by state, paused namespaces and limited kinds' waiting works
  for metrics (leader/gauges.py).

Supervision of duties (nothing dies silently):

    term won ─► every duty started ─► passes: ok() / failed() on its Progress
                        ▲                 │ the loop itself ended (a bug): logged with
                        │ backoff 0.5→30 s│ its traceback, Progress.crashed()
                        └─────────────────┤
                                          ▼ RESIGN_AFTER_CRASHES crashes in a row
                              step down: resign the lease, sit out one TTL

- A duty's loop survives any Exception of a pass; only an escape from the loop counts
  as a crash. A duty never brings its siblings down (no TaskGroup cancels them).
- Health is progress, not a renewed lease: each duty's Progress goes out in every
  heartbeat (pipe and `delta_actor.health`). The supervisor restarts a leader actor
  that holds the lease while a duty made no progress for its stall time (runtime/supervisor.py).
- Losing the lease cancels the duties at once. Like every actor, a candidate registers
  in `delta_actor` and heartbeats, so its own death is visible too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from delta_actors.app import App
from delta_actors.cancellation import cancel_once
from delta_actors.db import leader_sql
from delta_actors.db.connection import connect_async, make_async_pool, translate_errors
from delta_actors.db.migrations import check_schema_async
from delta_actors.db.pooler import listen_dsn_of
from delta_actors.health import ComponentHealth, Progress, describe, log_failure
from delta_actors.leader.election import Elector
from delta_actors.leader.gauges import GaugeReader
from delta_actors.leader.maintenance import Cleaner, Expirer, Rescuer, run_periodically
from delta_actors.leader.periodic import PeriodicScheduler
from delta_actors.queue.actors import heartbeat, register_actor, unregister_actor
from delta_actors.queue.promoter import Promoter
from delta_actors.resources.informers import InformerScheduler

logger = logging.getLogger(__name__)

LEADER_NAMESPACE = "leader"
RESTART_DELAYS = (0.5, 30.0)  # seconds: a crashed duty's first and longest restart delay
RESIGN_AFTER_CRASHES = 5  # crashes of one duty in a row, with no progress between


@dataclass(frozen=True, slots=True)
class Duty:
    """One leader duty: a loop that runs until cancelled, reporting to its Progress."""

    name: str
    progress: Progress
    loop: Callable[[int, int], Awaitable[None]]  # (term, actor id) -> runs until cancelled


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
        listen_dsn: str | None = None,
    ) -> None:
        self._app = app
        self._dsn = dsn
        self._listen_dsn = listen_dsn_of(dsn, listen_dsn)
        self._heartbeat_interval = heartbeat_interval
        # Renew three times per lease; stop trusting it 2/15 of a lease early (2 s of 15).
        self._lease = {
            "ttl": lease_ttl,
            "renew_interval": lease_ttl / 3,
            "elect_interval": lease_ttl / 3,
            "margin": lease_ttl * 2 / 15,
        }
        self._pool = make_async_pool(dsn, min_size=1, max_size=4, name="delta-leader")
        self.promoter = Promoter(self._pool)
        self.rescuer = Rescuer(self._pool, ttl=rescue_ttl)
        self.expirer = Expirer(app, self._pool)
        self.cleaner = Cleaner(app, self._pool)
        self.informers = InformerScheduler(app, self._pool)
        self.periodic = PeriodicScheduler(app, self._pool)
        self.gauges = GaugeReader(app, self._pool)
        self.elector: Elector | None = None
        self.actor_id: int | None = None
        self._main: asyncio.Task[None] | None = None
        self._duties: asyncio.Task[None] | None = None
        self._stepping_down: asyncio.Task[None] | None = None
        self.terms_led = 0
        self.terms_lost = 0
        self.duties: list[Duty] = []  # made at start, from the services' settings then

    def _make_duties(self) -> list[Duty]:
        def periodic(name: str, service: Rescuer | Expirer | Cleaner | GaugeReader) -> Duty:
            progress = Progress(name, service.interval)

            async def loop(term: int, actor_id: int) -> None:
                await run_periodically(f"leader.{name}", service.interval, service.run_once,
                                       progress)  # fmt: skip

            return Duty(name, progress, loop)

        promoter = Progress("promoter", self.promoter.interval)
        duties = [Duty("promoter", promoter, lambda term, actor: self.promoter.run(promoter))]
        if self.informers.informers:
            informers = Progress("informers", self.informers.interval)
            duties.append(
                Duty("informers", informers,
                     lambda term, actor: self.informers.run(term, actor, informers))
            )  # fmt: skip
        if self.periodic.periodic:
            scheduled = Progress("periodic", self.periodic.interval)

            async def schedule(term: int, actor_id: int) -> None:
                await run_periodically(
                    "leader.periodic", self.periodic.interval,
                    lambda: self.periodic.run_once(term, actor_id), scheduled,
                )  # fmt: skip

            duties.append(Duty("periodic", scheduled, schedule))
        duties.extend(
            periodic(name, service)
            for name, service in (
                ("rescuer", self.rescuer), ("expirer", self.expirer), ("cleaner", self.cleaner),
                ("gauges", self.gauges),
            )
        )  # fmt: skip
        return duties

    def informer_runs(self) -> list[tuple[str, dict[str, int], float | None]]:
        """Per informing kind: runs by result since this process started, and the last
        success the database records (epoch seconds), for metrics."""
        informers = self.informers
        return [
            (kind, dict(informers.runs.get(kind, {})), informers.last_success.get(kind))
            for kind in sorted(informers.informers)
        ]

    def health(self) -> list[ComponentHealth]:
        """Each duty's progress now; empty while this candidate does not lead."""
        return [duty.progress.snapshot() for duty in self.duties] if self.is_leader else []

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
        self.duties = self._make_duties()
        self.elector = Elector(
            self._listen_dsn or self._dsn,
            self.actor_id,
            listens=self._listen_dsn is not None,
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
                heartbeat(self._pool, self.actor_id, self._heartbeat_interval, health=self.health),
                name="leader:heartbeat",
            )

    async def _elected(self, term: int) -> None:
        self.terms_led += 1
        self._duties = asyncio.create_task(self._run_duties(term), name=f"leader:duties:{term}")

    async def _lost(self) -> None:
        duties, self._duties = self._duties, None
        if duties is not None:
            self.terms_lost += 1
            cancel_once(duties)
            try:
                await duties
            except asyncio.CancelledError:
                pass
            except Exception:  # _supervise never raises: this is a bug, and it is said
                logger.exception("leader duties failed", extra={"event": "leader.duties_failed"})

    async def _run_duties(self, term: int) -> None:
        assert self.actor_id is not None
        # A TaskGroup only to own the tasks: _supervise never raises, so one duty's
        # failure never cancels another.
        async with asyncio.TaskGroup() as group:
            for duty in self.duties:
                duty.progress.start()
                group.create_task(
                    self._supervise(duty, term, self.actor_id), name=f"leader:{duty.name}"
                )

    async def _supervise(self, duty: Duty, term: int, actor_id: int) -> None:
        """Run one duty for this term; restart it when its loop ends, with backoff.

        The backoff doubles with each crash that follows another without progress in
        between. A restart is not progress: a duty that keeps crashing shows as stalled.
        """
        while True:
            ended: Exception
            try:
                await duty.loop(term, actor_id)
            except Exception as exc:  # noqa: BLE001 (restarted here; see the docstring)
                ended = exc
            else:
                ended = RuntimeError(f"leader duty {duty.name} returned")  # loops never return
            duty.progress.crashed(ended)
            first, longest = RESTART_DELAYS
            delay = min(first * 2 ** (duty.progress.crashes_in_a_row - 1), longest)
            logger.error(
                "leader duty %s crashed (%d in a row): %s; restarting in %.1fs",
                duty.name, duty.progress.crashes_in_a_row, describe(ended), delay,
                exc_info=ended, extra={"event": "leader.duty_crashed", "duty": duty.name},
            )  # fmt: skip
            if duty.progress.crashes_in_a_row >= RESIGN_AFTER_CRASHES:
                self._step_down(f"duty {duty.name} crashed {RESIGN_AFTER_CRASHES} times in a row")
                return
            await asyncio.sleep(delay)

    def _step_down(self, why: str) -> None:
        # Not awaited here: stepping down cancels the duties, and the caller is one.
        if self._stepping_down is None or self._stepping_down.done():
            self._stepping_down = asyncio.create_task(
                self._step_down_now(why), name="leader:step-down"
            )

    async def _step_down_now(self, why: str) -> None:
        assert self.elector is not None
        try:
            term = await self.elector.step_down(why)
            if term is None:
                return
            # The elector resigns at its next turn; this wakes the candidates sooner.
            async with self._pool.connection() as conn:
                await conn.execute(leader_sql.RESIGN_LEASE, {"term": term, "actor": self.actor_id})
        except Exception as exc:  # noqa: BLE001 (the lease then lapses within its TTL)
            log_failure(logger, "resigning the lease failed", exc, "leader.resign_failed")

    async def wait_stopped(self) -> None:
        """Wait until the leader ends; re-raise what made it fail."""
        assert self._main is not None
        with contextlib.suppress(asyncio.CancelledError):
            await self._main

    async def stop(self, timeout: float = 30.0) -> None:
        """Resign (handing over at once), stop the duties and unregister; idempotent."""
        if self._main is None or self._pool.closed:
            return
        cancel_once(self._main)  # the elector resigns on cancellation
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._main, timeout)
        await self._lost()
        if self._stepping_down is not None:
            await asyncio.gather(self._stepping_down, return_exceptions=True)
        if self.actor_id is not None:
            await unregister_actor(self._pool, self.actor_id)
        await self._pool.close()
