"""The supervisor: forks the actor processes, watches them, restarts them, stops them.

Processes: one worker actor per namespace and per `Namespace.processes`, plus one leader
actor. The supervisor itself runs no event loop and holds no database connection across
a fork: it is a plain loop over `selectors`, so forking is safe, and it opens short-lived
connections only to rescue the claims of an actor that died.

Per actor slot::

    spawn ─► starting ──Started──► running ──(Stop sent)──► stopping ──exit──► gone
       ▲         │ no Started in start_timeout     │ no frame in hang_timeout: SIGKILL
       │         ▼                                 ▼ corrupt frame: SIGKILL
       └── restart after backoff ◄── exited (any code, any time, unless stopping)

Invariants:
- The supervisor never blocks on one actor: every read is non-blocking, every wait has a
  deadline.
- An actor that exits without a clean Stopped has its claims rescued at once (its process
  is known dead: waitpid reaped it), counted as a failed attempt; while PostgreSQL cannot
  be reached the rescue is retried every half tick, not left to the leader's TTL. Except
  an actor that ended because its claims were lost (ActorLostError: it fenced itself,
  its heartbeats failing): what its works wrote just before its end may still be on the
  way (a flapping link; the kernel sends what a dead process's sockets hold), so its
  claims are left to the leader, at the rescue TTL from its last heartbeat that arrived.
- Restarts back off exponentially (0.5 s doubling to 30 s) per slot; the count resets once
  an actor has lived a minute. Five quick failures in a row are logged as a crash loop.
- Health is progress: a leader actor that holds the lease while one of its duties made
  no progress for that duty's stall time (its heartbeat says so, see health.py) is
  stopped (it resigns) and restarted, killed if it does not stop in time.
- SIGTERM/SIGINT: Stop(shutdown_timeout) to every actor, wait for them (plus a grace
  period, then SIGKILL), exit 0. A second signal: SIGKILL every actor, hand their claims
  back (no attempt counted: they were stopped, not failing), exit 1. Two signals within
  SAME_SIGNAL seconds are one (a process group signalled twice).

Metrics (metrics.py): with a metrics port, the supervisor feeds every spawn, heartbeat,
exit and rescue to a SupervisorMetrics and serves it over HTTP from one thread. That
thread only reads what this loop wrote, under a lock; the forked child closes the
listening socket it inherits and never serves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import psycopg

from delta_actors.app import App
from delta_actors.db import migration_sql
from delta_actors.db.connection import (
    check_dsn,
    component_conninfo,
    connect,
    drive,
    translate_errors,
)
from delta_actors.db.migrations import check_schema
from delta_actors.db.pooler import listen_dsn_of, target
from delta_actors.errors import ActorLostError, ConfigError, ProtocolError
from delta_actors.health import describe
from delta_actors.leader.rescue import rescue_actors
from delta_actors.runtime import protocol
from delta_actors.runtime.actor import ActorSpec, run_actor
from delta_actors.runtime.metrics import SupervisorMetrics, serve
from delta_actors.runtime.worker import POLL_INTERVAL_WITHOUT_LISTEN

logger = logging.getLogger(__name__)

MAX_RESTART_DELAY = 30.0  # seconds
CRASH_LOOP_RESTARTS = 5
STABLE_AFTER = 60.0  # seconds an actor must live for its slot's failures to be forgiven
STOP_GRACE = 10.0  # seconds past the shutdown timeout before stopping actors are killed
SAME_SIGNAL = 0.1  # seconds within which a second stop signal is the same stop
TICK = 1.0  # seconds between liveness checks at most
STALLED_STOP_TIMEOUT = 5.0  # seconds a stalled leader's running works get to stop


@dataclass
class Slot:
    """One actor the supervisor keeps running."""

    name: str
    spec: ActorSpec
    failures: int = 0
    restart_at: float | None = None  # monotonic time of the next start


@dataclass
class Child:
    """A forked actor process."""

    slot: Slot
    pid: int
    pipe: socket.socket
    started_at: float
    last_seen: float
    frames: protocol.FrameReader = field(default_factory=protocol.FrameReader)
    actor_id: int | None = None
    running: bool = False
    stopped_cleanly: bool = False
    kill_at: float | None = None  # a restart was asked for: killed if not gone by then
    last_failure: str = ""
    lost: bool = False  # it reported ActorLostError: the leader rescues its claims
    heartbeat: protocol.Heartbeat | None = None


class Supervisor:
    """Runs an app's actors until a signal stops it.

    Args:
        app: the app whose namespaces get worker actors.
        dsn: the database; checked (reachable, migrated) before anything is forked.
        shutdown_timeout: seconds running works get to finish on SIGTERM.
        heartbeat_interval: seconds between an actor's heartbeats.
        hang_timeout: seconds without any frame after which an actor counts as hung.
        rescue_ttl: seconds without a database heartbeat before the leader rescues an actor.
            A hung (paused) actor must be killed before its work is rescued, or its works
            could run again elsewhere while it resumes: so `hang_timeout` plus two
            heartbeat intervals plus the supervisor's one-second tick must fit in it.
        lease_ttl: seconds a leader's lease lasts; failover after a crash takes at most this.
        start_timeout: seconds an actor may take to report Started.
        metrics_port: serve Prometheus metrics on this port (0: any free port); None: no.
        metrics_host: the address the metrics server binds to.
        listen_dsn: where actors LISTEN when `dsn` declares a transaction pooler
            (db/pooler.py): a direct connection; None: they poll.
        poll_interval: seconds between a worker's claims without a wake-up; None: the
            worker's default (1 s, or 0.2 s when nothing listens).
    """

    def __init__(
        self,
        app: App,
        dsn: str,
        *,
        shutdown_timeout: float = 30.0,
        heartbeat_interval: float = 2.0,
        hang_timeout: float = 5.0,
        rescue_ttl: float = 10.0,
        lease_ttl: float = 15.0,
        start_timeout: float = 60.0,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        listen_dsn: str | None = None,
        poll_interval: float | None = None,
    ) -> None:
        longest_hang = rescue_ttl - 2 * heartbeat_interval - TICK
        if hang_timeout > longest_hang:
            raise ConfigError(
                f"hang timeout {hang_timeout:g}s is too long for rescue TTL {rescue_ttl:g}s with "
                f"heartbeats every {heartbeat_interval:g}s: a paused actor would have its work "
                "rescued and run elsewhere before it is killed, and then resume it; use "
                f"--hang-timeout {max(longest_hang, 0):g} or less, or a longer --rescue-ttl"
            )
        self.app = app
        self.dsn = dsn
        self.listen_dsn = listen_dsn
        self._poll_interval = poll_interval or POLL_INTERVAL_WITHOUT_LISTEN
        listen_dsn_of(dsn, listen_dsn)  # a listen DSN behind a transaction pooler: refused
        self._conninfo = component_conninfo(dsn, "delta-supervisor")
        self._connect_kwargs = target(dsn).connect_kwargs
        timing = (heartbeat_interval, rescue_ttl, lease_ttl, poll_interval, listen_dsn)
        self.shutdown_timeout = shutdown_timeout
        self.hang_timeout = hang_timeout
        self.start_timeout = start_timeout
        self.slots: list[Slot] = []
        for name, namespace in app.namespaces.items():
            for index in range(namespace.processes):
                spec = ActorSpec("worker", name, dsn, *timing)
                self.slots.append(Slot(f"worker:{name}:{index}", spec))
        leader = ActorSpec("leader", "leader", dsn, *timing)
        self.slots.append(Slot("leader", leader))
        self.children: dict[int, Child] = {}
        self._selector = selectors.DefaultSelector()
        self._stop_deadline: float | None = None
        self._signals = 0
        self._first_signal_at = 0.0
        self._unrescued: dict[int, str] = {}  # actor id -> slot name, claims not yet rescued
        self._next_rescue_at = 0.0
        self._rescue_failing = False
        self._wakeup_read, self._wakeup_write = socket.socketpair()
        self.metrics = SupervisorMetrics()
        self._metrics_address = (metrics_host, metrics_port)
        self._metrics_server: WSGIServer | None = None

    # ------------------------------------------------------------------ running

    def check(self) -> None:
        """Fail early, naming the fix (see check_database)."""
        check_database(self.dsn, self.listen_dsn)

    def run(self) -> int:
        """Start every actor and supervise until stopped; return the exit code."""
        self.check()
        self._log_pool_mode()
        self._serve_metrics()
        self._install_signals()
        logger.info(
            "supervisor %d starting %d actors: %s", os.getpid(), len(self.slots),
            ", ".join(slot.name for slot in self.slots), extra={"event": "supervisor.started"},
        )  # fmt: skip
        for slot in self.slots:
            self._spawn(slot)
        try:
            return self._loop()
        finally:
            self._selector.close()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()

    def _log_pool_mode(self) -> None:
        if target(self.dsn).keeps_sessions:
            return
        how = (
            "actors LISTEN on the listen DSN"
            if self.listen_dsn is not None
            else f"nothing LISTENs: workers poll every {self._poll_interval:g}s"
        )
        logger.info(
            "behind a pooler in transaction mode: no statement prepared, no session "
            "setting; %s", how, extra={"event": "supervisor.pool_mode"},
        )  # fmt: skip

    def _serve_metrics(self) -> None:
        host, port = self._metrics_address
        if port is None:
            return
        try:
            self._metrics_server = serve(self.metrics, host, port)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
                "choose another --metrics-port (0 picks a free one) or --metrics-host"
            ) from exc
        bound_host, bound_port = self._metrics_server.server_address[:2]
        logger.info(
            "serving metrics on http://%s:%d/metrics", bound_host, bound_port,
            extra={"event": "supervisor.metrics", "port": bound_port},
        )  # fmt: skip

    def _loop(self) -> int:
        while True:
            now = time.monotonic()
            for key, _ in self._selector.select(timeout=self._next_timeout(now)):
                if key.fileobj is self._wakeup_read:
                    self._on_wakeup()
                else:
                    child = key.data
                    assert isinstance(child, Child)
                    self._on_readable(child)
            self._reap()
            if self._signals >= 2:
                return self._stop_now()
            now = time.monotonic()
            self._retry_rescues(now)
            if self._stop_deadline is not None:
                if not self.children:
                    logger.info("all actors stopped", extra={"event": "supervisor.stopped"})
                    return 0
                if now > self._stop_deadline + STOP_GRACE:
                    self._kill_all("did not stop within the shutdown timeout")
                continue
            self._check_liveness(now)
            for slot in self.slots:
                if slot.restart_at is not None and slot.restart_at <= now:
                    slot.restart_at = None
                    self._spawn(slot)

    def _next_timeout(self, now: float) -> float:
        deadlines = [now + TICK]
        deadlines.extend(s.restart_at for s in self.slots if s.restart_at is not None)
        if self._unrescued:
            deadlines.append(self._next_rescue_at)
        return max(0.0, min(deadlines) - now)

    # ------------------------------------------------------------------ actors

    def _spawn(self, slot: Slot) -> None:
        parent_end, child_end = socket.socketpair()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                parent_end.close()
                self._forget_in_child()
                code = run_actor(self.app, slot.spec, child_end)
            except BaseException:  # noqa: BLE001 (the child must reach os._exit)
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        child_end.close()
        parent_end.setblocking(False)
        now = time.monotonic()
        child = Child(slot, pid, parent_end, started_at=now, last_seen=now)
        self.children[pid] = child
        self._selector.register(parent_end, selectors.EVENT_READ, child)
        self.metrics.actor_started(slot.name, slot.spec.namespace)
        logger.info("started actor %s (pid %d)", slot.name, pid, extra={"event": "actor.spawned"})

    def _forget_in_child(self) -> None:
        # The child must not hold the supervisor's ends of its siblings' pipes (they
        # would never see EOF), nor react to the supervisor's signal plumbing.
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for other in self.children.values():
            other.pipe.close()
        self._wakeup_read.close()
        self._wakeup_write.close()
        self._selector.close()
        if self._metrics_server is not None:
            self._metrics_server.socket.close()

    def _on_readable(self, child: Child) -> None:
        try:
            data = child.pipe.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._selector.unregister(child.pipe)
            return  # the process is exiting; _reap handles it
        try:
            messages = child.frames.feed(data)
        except ProtocolError as exc:
            logger.error(
                "corrupt frame from actor %s (pid %d): %s; restarting it",
                child.slot.name, child.pid, exc, extra={"event": "actor.protocol_error"},
            )  # fmt: skip
            child.last_failure = f"protocol error: {exc}"
            self._kill(child)
            return
        if messages:
            # Only whole frames count as signs of life: bytes that never complete a frame
            # (a truncated one) would otherwise keep a deaf actor alive forever.
            child.last_seen = time.monotonic()
        for message in messages:
            self._on_message(child, message)

    def _on_message(self, child: Child, message: protocol.Message) -> None:
        match message:
            case protocol.Started(actor_id=actor_id):
                child.actor_id = actor_id
                child.running = True
            case protocol.Heartbeat():
                child.heartbeat = message
                self.metrics.actor_heartbeat(child.slot.name, message)
                if message.is_leader and child.kill_at is None:
                    self._restart_if_stalled(child, message)
            case protocol.Stopped(handed_back=handed_back):
                child.stopped_cleanly = True
                logger.info(
                    "actor %s stopped, %d works handed back", child.slot.name, handed_back,
                    extra={"event": "actor.stopped"},
                )  # fmt: skip
            case protocol.Failed(error_type=error_type, message=text, traceback=trace):
                child.last_failure = f"{error_type}: {text}"
                child.lost = error_type == ActorLostError.__qualname__
                logger.error(
                    "actor %s (pid %d) failed: %s: %s\n%s", child.slot.name, child.pid,
                    error_type, text, trace, extra={"event": "actor.failed"},
                )  # fmt: skip
            case protocol.Stop():
                child.last_failure = "protocol error: an actor sent Stop"
                self._kill(child)

    def _restart_if_stalled(self, child: Child, beat: protocol.Heartbeat) -> None:
        """Restart a leader that holds the lease while one of its duties makes no progress.

        The lease says it leads; only progress says it does its job. A graceful stop
        resigns the lease at once, so another candidate (or the restarted one) takes over
        without waiting for the lease to lapse; a leader that cannot stop is killed.
        """
        stalled = [h for h in beat.health if h.is_stalled]
        if not stalled:
            return
        what = "; ".join(
            f"{h.name} made no progress for {h.since_progress:.0f}s"
            + (f" (last error: {h.last_error})" if h.last_error else "")
            for h in stalled
        )
        child.last_failure = f"stalled while leading: {what}"
        logger.error(
            "leader actor %s (pid %d) holds the lease but %s; restarting it",
            child.slot.name, child.pid, what, extra={"event": "leader.stalled"},
        )  # fmt: skip
        child.kill_at = time.monotonic() + STALLED_STOP_TIMEOUT + STOP_GRACE
        try:
            child.pipe.sendall(protocol.encode(protocol.Stop(STALLED_STOP_TIMEOUT)))
        except OSError:
            self._kill(child)

    def _check_liveness(self, now: float) -> None:
        for child in list(self.children.values()):
            if child.kill_at is not None and now > child.kill_at:
                child.last_failure += " (did not stop in time)"
            elif not child.running and now - child.started_at > self.start_timeout:
                child.last_failure = f"no Started within {self.start_timeout:g}s"
            elif child.running and now - child.last_seen > self.hang_timeout:
                child.last_failure = f"hung: no heartbeat for {now - child.last_seen:.1f}s"
                if child.frames.buffered:
                    child.last_failure += f" ({child.frames.buffered} bytes of an unfinished frame)"
            else:
                continue
            logger.error(
                "actor %s (pid %d) %s; killing it", child.slot.name, child.pid,
                child.last_failure, extra={"event": "actor.hung"},
            )  # fmt: skip
            self._kill(child)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None:
                self._on_exit(child, status)

    def _on_exit(self, child: Child, status: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(child.pipe)
        child.pipe.close()
        self.metrics.actor_ended(child.slot.name)
        code = os.waitstatus_to_exitcode(status)
        clean = child.stopped_cleanly and code == 0
        if not clean and child.actor_id and not child.lost:
            self._rescue(child)
        if self._stop_deadline is not None:
            return
        slot = child.slot
        lived = time.monotonic() - child.started_at
        if lived > STABLE_AFTER:
            slot.failures = 0
        delay = min(0.5 * 2**slot.failures, MAX_RESTART_DELAY)
        slot.failures += 1
        slot.restart_at = time.monotonic() + delay
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        reason = f" ({child.last_failure})" if child.last_failure else ""
        if slot.failures >= CRASH_LOOP_RESTARTS:
            logger.error(
                "crash loop: actor %s ended %d times in a row, last with %s%s; "
                "next restart in %.1fs", slot.name, slot.failures, how, reason, delay,
                extra={"event": "actor.crash_loop"},
            )  # fmt: skip
        else:
            logger.warning(
                "actor %s (pid %d) ended with %s%s; restarting in %.1fs",
                slot.name, child.pid, how, reason, delay, extra={"event": "actor.exited"},
            )  # fmt: skip

    def _rescue(self, child: Child) -> None:
        assert child.actor_id is not None
        self._unrescued[child.actor_id] = child.slot.name
        self._retry_rescues(time.monotonic())

    def _retry_rescues(self, now: float) -> None:
        """Rescue the claims of dead actors; retried each tick while PostgreSQL is away."""
        if not self._unrescued or now < self._next_rescue_at:
            return
        try:
            with (
                psycopg.connect(
                    self._conninfo, autocommit=True, connect_timeout=5, **self._connect_kwargs
                ) as conn,
                conn.transaction(),
            ):
                # After a forced stop the actors died by our hand: nothing they ran failed.
                forced = self._signals >= 2
                rescued = drive(
                    conn, rescue_actors(list(self._unrescued), "died", counted=not forced)
                )
        except (psycopg.Error, OSError) as exc:
            self._next_rescue_at = now + TICK / 2
            if not self._rescue_failing:
                logger.error(
                    "rescuing the claims of dead actors %s failed, retrying: %s",
                    sorted(self._unrescued.values()), describe(exc),
                    extra={"event": "actor.rescue_failed"},
                )  # fmt: skip
            self._rescue_failing = True
            return
        self.metrics.rescued(rescued)
        if rescued:
            logger.warning(
                "rescued %d claims of dead actors %s", rescued, sorted(self._unrescued.values()),
                extra={"event": "actor.rescued"},
            )  # fmt: skip
        self._unrescued.clear()
        self._rescue_failing = False

    def _kill(self, child: Child) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)

    def _kill_all(self, why: str) -> None:
        for child in self.children.values():
            logger.error(
                "killing actor %s (pid %d): %s", child.slot.name, child.pid, why,
                extra={"event": "actor.killed"},
            )  # fmt: skip
            self._kill(child)

    # ------------------------------------------------------------------ signals

    def _install_signals(self) -> None:
        self._wakeup_read.setblocking(False)
        self._wakeup_write.setblocking(False)
        signal.set_wakeup_fd(self._wakeup_write.fileno())
        self._selector.register(self._wakeup_read, selectors.EVENT_READ, None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, lambda *_: None)  # the wakeup fd carries the signal number

    def _on_wakeup(self) -> None:
        try:
            data = self._wakeup_read.recv(512)
        except BlockingIOError:
            return
        for number in data:
            if number in (signal.SIGTERM, signal.SIGINT):
                self._on_stop_signal(signal.Signals(number))

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        now = time.monotonic()
        if self._signals and now - self._first_signal_at < SAME_SIGNAL:
            # `timeout` and some process managers signal the whole process group: the
            # same stop, delivered twice.
            return
        self._signals += 1
        if self._signals > 1:
            logger.warning(
                "%s again: stopping at once; running works are handed back uncounted",
                sig.name, extra={"event": "supervisor.forced"},
            )  # fmt: skip
            return
        self._first_signal_at = now
        logger.info(
            "%s: stopping %d actors, running works get %.1fs (a second %s stops at once)",
            sig.name, len(self.children), self.shutdown_timeout,
            "Ctrl-C" if sig is signal.SIGINT else sig.name,
            extra={"event": "supervisor.stopping"},
        )  # fmt: skip
        self._stop_deadline = time.monotonic() + self.shutdown_timeout
        for slot in self.slots:
            slot.restart_at = None
        frame = protocol.encode(protocol.Stop(self.shutdown_timeout))
        for child in self.children.values():
            try:
                child.pipe.sendall(frame)
            except OSError:
                self._kill(child)

    def _stop_now(self) -> int:
        self._kill_all("stopping at once")
        deadline = time.monotonic() + 10.0
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.01)
        return 1


def check_database(dsn: str, listen_dsn: str | None = None) -> None:
    """Fail early, naming the fix, if the database is unreachable, not migrated, or the
    role cannot write what the actors write (instead of actors that crash-loop), or the
    listen DSN does not connect."""
    if listen_dsn is not None:
        # LISTEN needs nothing but a connection: no schema or table privilege checked.
        connect(listen_dsn, action="check the listen DSN").close()
    check_dsn(dsn)
    given = target(dsn)
    with (
        translate_errors("check database", dsn),
        psycopg.connect(
            given.conninfo, autocommit=True, connect_timeout=10, **given.connect_kwargs
        ) as conn,
    ):
        check_schema(conn)
        missing = conn.execute(migration_sql.SELECT_MISSING_PRIVILEGES).fetchall()
        role = conn.info.user
    if missing:
        lacks = "; ".join(f"{privileges} on {table}" for table, privileges in missing)
        raise ConfigError(
            f"the role {role!r} cannot write what the actors write: it lacks {lacks}. "
            "Grant them, e.g. `GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN "
            f"SCHEMA public TO {role}; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "
            f"{role}` (docs/operations.md lists what an application role needs)"
        )
