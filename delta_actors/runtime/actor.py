"""An actor process: a Worker (or the Leader) on its own uvloop event loop, driven by pipe.

Lifecycle, in the child the supervisor forked:

    forked ─► connect, check schema, register ─► Started ─► Heartbeat every interval ...
       │                     │ fails                          │ Stop(timeout), SIGTERM,
       │                     ▼                                │ or the pipe closes
       │                 Failed, exit 1                       ▼ (supervisor gone)
       │                                          stop: finish or hand back ─► Stopped, exit 0
       ├─ the body fails while running (a bug) ─► Failed, exit 1
       └─ a worker's claims are lost (ActorLostError: no heartbeat got through for most
          of the rescue TTL, or rescue declared us dead) ─► Failed, os._exit(1) at once

The last is immediate, with no stop: its claims are, or are about to be, another actor's,
and a plain def's thread cannot be stopped but by the end of its process. A stop over a
network that is gone would take seconds (psycopg waits on the server for every query it
cancels) while the thread runs on past the rescue TTL, and a write it makes when the link
comes back would overlap the rescued run (docs/reliability.md).

The Heartbeat frames say the loop lives; their queue depth is read from the database
for at most half an interval, and the last one read goes out when that read is slow, so
an actor cut off from PostgreSQL is not mistaken for a hung one.

An error that no task's owner handled (asyncio's "Task exception was never retrieved")
is logged at error as `actor.unhandled_error`: every task has an owner, so it is a bug.

Nothing database-related crosses the fork: the actor opens its own pool after it. SIGINT
is ignored (Ctrl-C reaches the whole process group; the supervisor coordinates). An actor
whose supervisor dies sees its pipe close and stops, so it never lingers as an orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Protocol

import uvloop

from delta_actors.app import App
from delta_actors.cancellation import cancel_once, settle
from delta_actors.errors import ActorLostError, ProtocolError
from delta_actors.health import describe
from delta_actors.leader.duties import Leader
from delta_actors.runtime import protocol
from delta_actors.runtime.worker import Worker

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ActorSpec:
    """What one actor process runs."""

    role: str  # "worker" or "leader"
    namespace: str
    dsn: str
    heartbeat_interval: float = 2.0  # seconds between heartbeats (pipe and database)
    rescue_ttl: float = 10.0  # seconds without a heartbeat before rescue (leader)
    lease_ttl: float = 15.0  # seconds a leader's lease lasts without renewal
    poll_interval: float | None = None  # None: the worker's default (see runtime/worker.py)
    listen_dsn: str | None = None  # where to LISTEN, when `dsn` is a transaction pooler


class _Body(Protocol):
    async def start(self) -> None: ...
    async def stop(self, timeout: float = 30.0) -> None: ...
    async def wait_stopped(self) -> None: ...


def run_actor(app: App, spec: ActorSpec, pipe: socket.socket) -> int:
    """Run the actor until it stops; return its exit code. Called in the forked child."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return uvloop.run(_Actor(app, spec, pipe).run())


def log_unhandled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop found an error nobody handled (a task exception never retrieved).

    Every task has an owner that awaits it, so this is a bug: said loudly, with the
    traceback, under a stable event name that tests and operators can look for.
    """
    exc = context.get("exception")
    logger.error(
        "unhandled error in the event loop: %s", context.get("message", "?"),
        exc_info=exc if isinstance(exc, BaseException) else None,
        extra={"event": "actor.unhandled_error"},
    )  # fmt: skip


class _Actor:
    def __init__(self, app: App, spec: ActorSpec, pipe: socket.socket) -> None:
        self._spec = spec
        self._pipe = pipe
        self._stop_timeout: float | None = None
        self._stop_requested = asyncio.Event()
        self._body: _Body
        self._worker: Worker | None = None
        self._depth = (0, 0.0)  # the worker's queue depth and lag, as last read
        self._depth_read: asyncio.Task[tuple[int, float]] | None = None
        if spec.role == "leader":
            self._body = Leader(
                app,
                spec.dsn,
                heartbeat_interval=spec.heartbeat_interval,
                rescue_ttl=spec.rescue_ttl,
                lease_ttl=spec.lease_ttl,
                listen_dsn=spec.listen_dsn,
            )
        else:
            self._worker = Worker(
                app,
                spec.dsn,
                namespace=spec.namespace,
                run_scheduler=False,
                heartbeat_interval=spec.heartbeat_interval,
                rescue_ttl=spec.rescue_ttl,
                poll_interval=spec.poll_interval,
                listen_dsn=spec.listen_dsn,
                on_lost=self._exit_lost,
            )
            self._body = self._worker

    async def run(self) -> int:
        code = await self._run()
        # Whatever is still running was cancelled and not waited for (the queue-depth
        # read, a heartbeat given up): a moment for its cancel request to end, which
        # closing the loop would otherwise interrupt (cancellation.py).
        await settle(asyncio.all_tasks() - {asyncio.current_task()})
        return code

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(log_unhandled)
        self._pipe.setblocking(False)
        loop.add_signal_handler(signal.SIGTERM, self._request_stop, 30.0)
        try:
            await self._body.start()
        except Exception as exc:  # noqa: BLE001 (reported to the supervisor as data)
            await self._report_failure(exc)
            return 1
        actor_id = getattr(self._body, "actor_id", None) or 0
        spec = self._spec
        await self._send(protocol.Started(os.getpid(), spec.namespace, spec.role, actor_id))
        logger.info(
            "actor %s/%s started (pid %d, actor %d)", spec.role, spec.namespace, os.getpid(),
            actor_id, extra={"event": "actor.started", "namespace": spec.namespace},
        )  # fmt: skip
        # Plain tasks, not a TaskGroup: the body or the pipe failing is an outcome to
        # report, and the other tasks must not be torn down before we have reported it.
        reader = asyncio.create_task(self._read_pipe(), name="actor:pipe")
        beats = asyncio.create_task(self._send_heartbeats(), name="actor:heartbeats")
        body = asyncio.create_task(self._body.wait_stopped(), name="actor:body")
        stop = asyncio.create_task(self._stop_requested.wait(), name="actor:stop")
        await asyncio.wait([body, stop, reader], return_when=asyncio.FIRST_COMPLETED)
        failure = self._failure_of(body, reader)
        for task in (reader, beats, body, stop):
            cancel_once(task)
        await asyncio.gather(reader, beats, body, stop, return_exceptions=True)
        if self._depth_read is not None:
            cancel_once(self._depth_read)  # not awaited here: over a cut network, seconds
        if failure is not None:
            with contextlib.suppress(Exception):
                await self._body.stop(timeout=0)
            await self._report_failure(failure)
            return 1
        timeout = self._stop_timeout if self._stop_timeout is not None else 30.0
        handed_back_before = self._worker.stats.handed_back if self._worker else 0
        await self._body.stop(timeout=timeout)
        handed_back = (self._worker.stats.handed_back if self._worker else 0) - handed_back_before
        # The last counters first: a clean stop loses no count (the pool is closed, so
        # the queue gauges read 0; the supervisor drops gauges of ended actors anyway).
        await self._send(await self._heartbeat())
        await self._send(protocol.Stopped(handed_back))
        return 0

    @staticmethod
    def _failure_of(body: asyncio.Task[None], reader: asyncio.Task[None]) -> BaseException | None:
        for task in (body, reader):
            if task.done() and not task.cancelled() and task.exception() is not None:
                return task.exception()
        if body.done():
            return RuntimeError("the actor's body stopped on its own")
        return None

    def _request_stop(self, timeout: float) -> None:
        if self._stop_timeout is None:
            self._stop_timeout = timeout
        self._stop_requested.set()

    async def _read_pipe(self) -> None:
        loop = asyncio.get_running_loop()
        frames = protocol.FrameReader()
        while True:
            data = await loop.sock_recv(self._pipe, 65536)
            if not data:
                # The supervisor is gone: stop, and let rescue cover what we cannot finish.
                logger.warning(
                    "supervisor pipe closed; stopping", extra={"event": "actor.orphaned"}
                )
                self._request_stop(self._spec.heartbeat_interval * 5)
                return
            for message in frames.feed(data):
                match message:
                    case protocol.Stop(timeout=timeout):
                        self._request_stop(timeout)
                    case _:
                        raise ProtocolError(f"unexpected message for an actor: {message!r}")

    async def _send_heartbeats(self) -> None:
        while True:
            await self._send(await self._heartbeat())
            await asyncio.sleep(self._spec.heartbeat_interval)

    async def _heartbeat(self) -> protocol.Heartbeat:
        worker = self._worker
        if worker is None:
            assert isinstance(self._body, Leader)
            leader = self._body
            return protocol.Heartbeat(
                running=0, claimed=0, completed=0, failed=0, queue_depth=0,
                rescued=leader.rescuer.rescued_claims, is_leader=leader.is_leader,
                elected=leader.terms_led, lost=leader.terms_lost, health=leader.health(),
                informers=[protocol.InformerTally(*run) for run in leader.informer_runs()],
                cluster=leader.gauges.gauges if leader.is_leader else None,
            )  # fmt: skip
        depth, lag = await self._queue_depth(worker)
        stats = worker.stats
        return protocol.Heartbeat(
            running=len(worker._running), claimed=stats.claimed, completed=stats.completed,
            failed=stats.failed, queue_depth=depth, queue_lag=lag,
            max_workers=worker.max_workers, kinds=worker.recorder.snapshot(),
            health=worker.health(),
        )  # fmt: skip

    async def _queue_depth(self, worker: Worker) -> tuple[int, float]:
        """The worker's queue depth: read for at most half an interval, else the last read.

        A read still going on is waited for by the next frame, not started again; run()
        cancels the last one with the frames' task."""
        read = self._depth_read
        if read is None or read.done():
            read = self._depth_read = asyncio.create_task(
                worker.queue_depth(), name="actor:queue-depth"
            )
            # Its outcome is read below, or, once given up, seen here (a failed read
            # leaves the last depth in place, as a slow one does).
            read.add_done_callback(lambda task: task.cancelled() or task.exception())
        try:
            done, _ = await asyncio.wait({read}, timeout=self._spec.heartbeat_interval / 2)
        except asyncio.CancelledError:
            cancel_once(read)
            raise
        if done and not read.cancelled() and read.exception() is None:
            self._depth = read.result()
        return self._depth

    async def _send(self, message: protocol.Message) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):  # the supervisor is gone; nobody to tell
            await loop.sock_sendall(self._pipe, protocol.encode(message))

    async def _report_failure(self, exc: BaseException) -> None:
        await self._send(self._failed(exc))

    def _failed(self, exc: BaseException) -> protocol.Failed:
        logger.error(
            "actor %s/%s failed: %s", self._spec.role, self._spec.namespace, describe(exc),
            extra={"event": "actor.failed", "namespace": self._spec.namespace},
        )  # fmt: skip
        return protocol.Failed(
            error_type=type(exc).__qualname__,
            message=str(exc).strip() or "(no message)",
            traceback="".join(traceback.format_exception(exc))[-8000:],
        )

    def _exit_lost(self, exc: ActorLostError) -> None:
        """The worker's claims are lost: say so to the supervisor and end the process now.

        From inside the heartbeat's task, before anything is cancelled: no await, so no
        other task (and no more of a work) runs on this loop meanwhile; the threads of
        plain defs end with the process.
        """
        frame = protocol.encode(self._failed(exc))
        with contextlib.suppress(OSError):
            self._pipe.settimeout(1.0)  # a supervisor that does not read: exit anyway
            self._pipe.sendall(frame)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
