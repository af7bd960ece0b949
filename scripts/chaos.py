"""Fault injection: run a workload under real faults, then check the invariants.

    python scripts/chaos.py --seed 1 --duration 120            # the full run (20,000 resources)
    python scripts/chaos.py --seed 1 --duration 40 --resources 2000 --json out.json
    python scripts/chaos.py --faults none --duration 60 --resources 1500   # a clean run
    python scripts/chaos.py --faults kill_conns_lease,kill_leader          # only these

What it does:

1. Starts its own throwaway PostgreSQL cluster (it restarts it as a fault), migrates a
   database, and starts `--supervisors` real `delta-actors supervise` processes running
   the app defined below: three kinds in two namespaces (`alpha`: async controllers, one
   process; `beta`: a plain-def controller, two processes). Every work records its run
   (kind, id, generation seen, start, end, pid, outcome) in `chaos_run`, committed before
   it returns. One kind fails the first attempt of about one resource in eight. A fourth
   kind, `beacon`, has an informer (every INFORM_INTERVAL) that lists nothing and records
   when it runs; a plain job, `chaos-probe`, records when it was due and when it ran.
   The works of one resource in EFFECTS_ONE_IN (makes_effects) also make two effects with
   `delta.work_context()`, named by the run's id, before the run is recorded and before a
   failure by design: they inform a `receipt` (a fifth kind, in `alpha`, whose work does
   nothing) and enqueue a plain job, `chaos-echo` (a no-op).
2. Informs `--resources` objects in bursts, then keeps re-informing random subsets with
   changes (and some unchanged or stale copies) while the faults run. Every inform that
   returned is an accepted change: (kind, id) -> the generation it produced.
3. Injects faults on a seeded schedule, drawn from a shuffled deck so that each kind of
   fault happens about equally often: SIGKILL of a worker actor, of the leader actor, of a
   whole supervisor (started again after a moment); SIGSTOP of an actor for longer than
   the rescue TTL, then SIGCONT; PostgreSQL restarted in fast and immediate mode;
   backends killed with pg_terminate_backend: 8 at random, or, for a burst of 2-6 s
   every 0.2-0.5 s, all backends of one component, picked by the `application_name` its
   connections carry (KILL_CONNS: the leader's pool, the lease connection, a namespace's
   claim connection, its pool (the completer), its LISTEN connection).
4. Stops faulting, lets the system settle, and checks:
   - every accepted change was worked (a successful run) with its generation or a newer
     one, and every resource ends synced with its newest generation worked;
   - no two runs of one resource overlapped in time;
   - no successful run of an older generation came after one of a newer generation;
   - after every kill or pause, the victim's claims left `running` within the rescue TTL
     plus one rescue interval (max and p99 reported);
   - duplicate runs (same resource and generation, both successful) are counted;
   - effects with results: per resource that makes effects, as many receipts and echo
     jobs as completed job rows (its committed successes); per run both or neither, once;
     none from a failed run or from a run that was not recorded (_check_effects).
   Throughout the run (class Liveness), a sampler checks that while one leader holds the
   lease, the informer runs and due jobs are promoted within LIVENESS_BOUND.

Prints a report, writes it as JSON with --json, and exits 1 if an invariant broke.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

import delta_actors as delta

RUNS_TABLE = """
CREATE TABLE IF NOT EXISTS chaos_run (
    id bigserial PRIMARY KEY,
    -- Recording retries when its connection dies; a commit whose reply was lost must not
    -- record the run twice (two identical rows would look like an overlap).
    run uuid NOT NULL UNIQUE,
    kind text NOT NULL,
    object_id text NOT NULL,
    generation bigint NOT NULL,
    pid integer NOT NULL,
    started_at double precision NOT NULL,
    ended_at double precision NOT NULL,
    ok boolean NOT NULL
)
"""
RECORD_RUN = (
    "INSERT INTO chaos_run (run, kind, object_id, generation, pid, started_at, ended_at, ok) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run) DO NOTHING"
)
# The liveness probes: when each informer run started, and when each probe job was due
# and when it started (time.time() of the process that ran it; one host).
PROBE_TABLES = (
    "CREATE TABLE IF NOT EXISTS chaos_informer_run ("
    " id bigserial PRIMARY KEY, started_at double precision NOT NULL, pid integer NOT NULL)",
    "CREATE TABLE IF NOT EXISTS chaos_probe_run ("
    " run uuid PRIMARY KEY, due_at double precision NOT NULL,"
    " started_at double precision NOT NULL, pid integer NOT NULL)",
)
RECORD_INFORMER_RUN = "INSERT INTO chaos_informer_run (started_at, pid) VALUES (%s, %s)"
RECORD_PROBE_RUN = (
    "INSERT INTO chaos_probe_run (run, due_at, started_at, pid) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (run) DO NOTHING"
)
# One sample: the lease, the newest informer run, and the most overdue job that waits
# for promotion (scheduled or retryable, due, not yet available: the leader's Promoter).
SAMPLE_LIVENESS = """
SELECT l.actor_id, l.term, l.expires_at > now(),
       (SELECT max(started_at) FROM chaos_informer_run),
       (SELECT extract(epoch FROM now() - min(scheduled_at))::float8 FROM delta_job
        WHERE state IN ('scheduled', 'retryable') AND scheduled_at <= now())
FROM (SELECT 1) AS one LEFT JOIN delta_leader AS l ON l.name = 'default'
"""
# The effects check: per parent resource its completed works (each a committed success),
# every receipt resource and every echo job (the effects of one work run each).
COMPLETED_WORKS_BY_PARENT = """
SELECT r.kind, r.object_id, count(j.id) FILTER (WHERE j.state = 'completed')
FROM delta_resource AS r LEFT JOIN delta_job AS j ON j.resource_id = r.id
WHERE r.kind <> 'receipt' GROUP BY r.id, r.kind, r.object_id
"""
RECEIPTS = """
SELECT o ->> 'parent', o ->> 'run', state::text
FROM (SELECT convert_from(object, 'UTF8')::jsonb AS o, state FROM delta_resource
      WHERE kind = 'receipt') AS receipt
"""
ECHO_JOBS = """
SELECT a ->> 'parent', a ->> 'run'
FROM (SELECT convert_from(args, 'UTF8')::jsonb AS a FROM delta_job
      WHERE kind = 'chaos-echo' AND resource_id IS NULL) AS echo
"""
KILL_BACKENDS = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE datname = current_database() AND application_name = %s"
    " AND pid <> pg_backend_pid()"
)

# The share of parent resources whose works make effects (see makes_effects).
EFFECTS_ONE_IN = 4

# Timing of the runtime under test: production's ratios, scaled down so a run is short.
HEARTBEAT = 0.5
HANG_TIMEOUT = 2.5
RESCUE_TTL = 5.0
LEASE_TTL = 5.0
RESCUE_INTERVAL = 1.0  # the leader's Rescuer
RESCUE_BOUND = RESCUE_TTL + RESCUE_INTERVAL
INFORM_INTERVAL = 1.0  # the probe controller's informer (+ up to 10 % jitter)
PROBE_INTERVAL = 1.0  # a probe job is enqueued this often ...
PROBE_DELAY = 0.5  # ... scheduled this far ahead, so the leader has to promote it
SAMPLE_INTERVAL = 0.5  # the liveness sampler
# The bound on informer gaps and promotion delays: 3 x the worst informer gap of a clean
# run (1.9 s: the interval, its jitter and the scheduler's 1 s poll); docs/reliability.md.
LIVENESS_BOUND = 6.0

# Connection kills, one fault kind per component: the application_name its connections
# carry (delta_actors.database.component_conninfo); {namespace} is drawn per burst.
KILL_CONNS = {
    "kill_conns_leader_pool": "delta-leader",
    "kill_conns_lease": "delta-lease",
    "kill_conns_claim": "delta-claim-{namespace}",
    "kill_conns_completer": "delta-worker-{namespace}",
    "kill_conns_listener": "delta-listen-{namespace}",
}
# Bursts on the leader's own connections may stop its duties while they last; the
# duties must be back within the bound after a burst ends.
LEADER_CONNS = ("kill_conns_leader_pool", "kill_conns_lease")


# ----------------------------------------------------------------------------- the app


class Versioned(delta.Object):
    """A base without a kind: a key, and a version that compare() goes by."""

    key: str
    version: int

    def id(self) -> str:
        return self.key

    def compare(self, stored: Versioned) -> int:
        return self.version - stored.version


class Widget(Versioned, kind="widget"):
    colour: str = "red"


class Gadget(Versioned, kind="gadget"):
    pass


class Ticket(Versioned, kind="ticket"):
    pass


def _dsn() -> str:
    return os.environ["DELTA_DATABASE_URL"]


def _work_seconds(resource: delta.Resource[Any]) -> float:
    # Short, varied works, so that claims are often in flight when a fault strikes.
    return random.Random(f"{resource.object_id}/{resource.generation}").uniform(0.0, 0.03)


class _Recorder:
    """One connection per process (async works) that reconnects after a fault."""

    def __init__(self) -> None:
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()

    async def record(self, row: tuple[Any, ...], statement: str = RECORD_RUN) -> None:
        # A controller that tolerates its own database restarting: retry for a while.
        deadline = time.monotonic() + 30.0
        while True:
            try:
                async with self._lock:
                    if self._conn is None or self._conn.closed:
                        self._conn = await psycopg.AsyncConnection.connect(
                            _dsn(), autocommit=True, connect_timeout=5
                        )
                    await self._conn.execute(statement, row)  # type: ignore[arg-type]
            except (psycopg.OperationalError, OSError):
                if self._conn is not None:
                    await self._conn.close()
                self._conn = None
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
            else:
                return


_recorder = _Recorder()
_thread_conns = threading.local()


def _record_sync(row: tuple[Any, ...]) -> None:
    deadline = time.monotonic() + 30.0
    while True:
        conn = getattr(_thread_conns, "conn", None)
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(_dsn(), autocommit=True, connect_timeout=5)
                _thread_conns.conn = conn
            conn.execute(RECORD_RUN, row)
        except (psycopg.OperationalError, OSError):
            if conn is not None:
                conn.close()
            _thread_conns.conn = None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        else:
            return


def makes_effects(parent: str) -> bool:
    """Whether the works of `parent` ("kind/object_id") make effects: one in EFFECTS_ONE_IN.

    Not all: a work with effects costs about three (its receipt's work, its echo job, the
    writes), and on a loaded machine effects from every work cut the runs the other checks
    see by half or more; one in four keeps about the load of a run without effects.
    """
    # Not crc32, which gadget failures go by: for ids of one length, crc32("kind/" + id) is
    # crc32(id) xor a constant, so both choices would take the same gadgets, or none.
    return hashlib.blake2b(parent.encode()).digest()[0] % EFFECTS_ONE_IN == 0


def _make_effects(resource: delta.Resource[Any], run: uuid.UUID) -> None:
    """The effects of one work run: a receipt and an echo job, both named by its run id.

    Made before the run is recorded and before a failure by design is raised, so a failed
    run has effects to drop; Harness.check finds them with the run's result, or not at all.
    """
    parent = f"{resource.kind}/{resource.object_id}"
    if not makes_effects(parent):
        return
    ctx = delta.work_context()
    ctx.inform(Receipt(f"{resource.object_id}:{run.hex}", parent, run.hex, resource.generation))
    ctx.enqueue(Echo(parent, run.hex))


async def _run_async(resource: delta.Resource[Any], fail: bool) -> None:
    started = time.time()
    await asyncio.sleep(_work_seconds(resource))
    run = uuid.uuid4()
    _make_effects(resource, run)
    row = (run, resource.kind, resource.object_id, resource.generation, os.getpid())
    await _recorder.record((*row, started, time.time(), not fail))
    if fail:
        raise RuntimeError(f"first attempts of {resource.object_id} fail, by design")


class WidgetController(delta.Controller[Widget]):
    namespace = "alpha"
    max_attempts = 25

    async def work(self, resource: delta.Resource[Widget]) -> None:
        await _run_async(resource, fail=False)


class GadgetController(delta.Controller[Gadget]):
    namespace = "alpha"
    max_attempts = 25

    async def work(self, resource: delta.Resource[Gadget]) -> None:
        first = resource.attempt == 0 and zlib.crc32(resource.object_id.encode()) % 8 == 0
        await _run_async(resource, fail=first)


class TicketController(delta.Controller[Ticket]):
    namespace = "beta"
    max_attempts = 25

    def work(self, resource: delta.Resource[Ticket]) -> None:
        started = time.time()
        time.sleep(_work_seconds(resource))
        run = uuid.uuid4()
        _make_effects(resource, run)  # in the work's thread: it has the task's context
        row = (run, resource.kind, resource.object_id, resource.generation, os.getpid())
        _record_sync((*row, started, time.time(), True))


class Beacon(delta.Object, kind="beacon"):
    key: str

    def id(self) -> str:
        return self.key


class BeaconController(delta.Controller[Beacon]):
    """An informer that lists nothing and records when each of its runs starts."""

    namespace = "alpha"
    inform_interval = INFORM_INTERVAL

    async def work(self, resource: delta.Resource[Beacon]) -> None:
        pass

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Beacon]:
        await _recorder.record((time.time(), os.getpid()), RECORD_INFORMER_RUN)
        for beacon in ():
            yield beacon


class Receipt(delta.Object, kind="receipt"):
    """An effect of one work run of `parent` ("kind/object_id"): informed by its context."""

    key: str  # the parent's object id and the run id
    parent: str
    run: str  # the run's id (hex), as recorded in chaos_run
    generation: int  # the parent's generation that run saw

    def id(self) -> str:
        return self.key


class ReceiptController(delta.Controller[Receipt]):
    """Works receipts, with no effects of its own: receipts are not parents."""

    namespace = "alpha"

    async def work(self, resource: delta.Resource[Receipt]) -> None:
        pass


class Echo(delta.Job, kind="chaos-echo", namespace="alpha"):
    """The other effect of one work run: enqueued by its context."""

    parent: str
    run: str


async def run_echo(job: Echo) -> None:
    pass


class Probe(delta.Job, kind="chaos-probe"):
    due: float  # time.time() at which it is scheduled


async def run_probe(job: Probe) -> None:
    await _recorder.record((uuid.uuid4(), job.due, time.time(), os.getpid()), RECORD_PROBE_RUN)


app = delta.App(
    controllers=[
        WidgetController(),
        GadgetController(),
        TicketController(),
        BeaconController(),
        ReceiptController(),
    ],
    jobs={Probe: run_probe, Echo: run_echo},
    namespaces={
        "alpha": delta.Namespace(max_workers=20),
        "beta": delta.Namespace(max_workers=8, processes=2),
    },
)

KINDS: dict[str, type[delta.Object]] = {"widget": Widget, "gadget": Gadget, "ticket": Ticket}


def make_object(kind: str, index: int, version: int) -> delta.Object:
    key = f"{kind}-{index:06d}"
    if kind == "widget":
        return Widget(key, version, colour=random.choice(["red", "green", "blue"]))
    return KINDS[kind](key, version)  # type: ignore[call-arg]


# ------------------------------------------------------------------------ the harness


@dataclass
class Fault:
    kind: str
    at: float  # time.time()
    detail: str
    claims: list[int] = field(default_factory=list)  # job ids the victim held
    victims: list[int] = field(default_factory=list)  # actor ids
    rescued_after: float | None = None
    downtime: float = 0.0  # seconds PostgreSQL was down (restarts)
    pids: set[int] = field(default_factory=set)  # the processes it stopped or orphaned
    until: float = 0.0  # a pause: when SIGCONT is due; a burst: when it ends
    stops_leader: bool = False  # the leader's process or its database was the victim
    killed: int = 0  # a burst: backends terminated

    @property
    def end(self) -> float:
        """When the fault itself was over (not its consequences)."""
        return max(self.at + self.downtime, self.until)


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.log_dir = Path(args.log_dir or Path.cwd() / ".chaos")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.cluster: Any = None
        self.dsn = ""
        self.supervisors: list[subprocess.Popen[bytes] | None] = []
        self.accepted: dict[tuple[str, str], int] = {}
        self.informs = 0
        self.inform_errors = 0
        self.faults: list[Fault] = []
        self.supervisor_exits: list[int] = []  # exit codes of supervisors that ended by themselves
        self.paused: set[int] = set()
        self.bursts: list[threading.Thread] = []
        self.stop_workload = threading.Event()
        self.lock = threading.Lock()

    # -- setup / teardown

    def start_database(self) -> None:
        if self.args.dsn:
            self.dsn = self.args.dsn
        else:
            from delta_actors.local.cluster import throwaway_cluster

            self.cluster = throwaway_cluster()
            with psycopg.connect(self.cluster.dsn(), autocommit=True) as conn:
                # The throwaway cluster acknowledges commits before their WAL is written;
                # an immediate shutdown then loses commits that the workload saw succeed.
                # That is PostgreSQL's documented trade, not ours to test: commit for real
                # (fsync stays off: the OS does not crash here, only PostgreSQL).
                conn.execute("ALTER SYSTEM SET synchronous_commit = on")
                conn.execute("SELECT pg_reload_conf()")
                conn.execute("CREATE DATABASE chaos")
            self.dsn = self.cluster.dsn("chaos")
        from delta_actors.db.migrations import migrate

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            migrate(conn)
            conn.execute(RUNS_TABLE)
            for table in PROBE_TABLES:
                conn.execute(table)  # type: ignore[arg-type]

    def start_supervisor(self, slot: int) -> None:
        env = {
            **os.environ,
            "DELTA_DATABASE_URL": self.dsn,
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path]),
        }
        argv = [
            sys.executable, "-m", "delta_actors", "supervise", "--app", "chaos:app",
            "--heartbeat-interval", str(HEARTBEAT), "--hang-timeout", str(HANG_TIMEOUT),
            "--rescue-ttl", str(RESCUE_TTL), "--lease-ttl", str(LEASE_TTL),
            "--shutdown-timeout", "5", "--log-format", "json",
        ]  # fmt: skip
        log = (self.log_dir / f"supervisor-{slot}.log").open("ab")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        log.close()
        while len(self.supervisors) <= slot:
            self.supervisors.append(None)
        self.supervisors[slot] = proc

    def stop_all(self) -> None:
        for pid in list(self.paused):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for proc in self.supervisors:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.supervisors:
            if proc is None:
                continue
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def remove_database(self) -> None:
        if self.cluster is not None:
            self.cluster.remove()

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    # -- workload

    def workload(self) -> None:
        client = self._client()
        total = self.args.resources
        kinds = list(KINDS)
        versions = {(kind, i): 1 for kind in kinds for i in range(total // len(kinds))}
        keys = list(versions)
        # The initial bursts: every resource once.
        for start in range(0, len(keys), 500):
            batch = keys[start : start + 500]
            self._inform(client, [make_object(k, i, 1) for k, i in batch])
        # Then changes, unchanged and stale copies, while the faults run.
        while not self.stop_workload.is_set():
            batch = self.rng.sample(keys, min(200, len(keys)))
            objects = []
            for key in batch:
                roll = self.rng.random()
                if roll < 0.7:
                    versions[key] += 1
                    objects.append(make_object(key[0], key[1], versions[key]))
                elif roll < 0.9:
                    objects.append(make_object(key[0], key[1], versions[key]))
                else:
                    objects.append(make_object(key[0], key[1], max(1, versions[key] - 1)))
            self._inform(client, objects)
            time.sleep(0.05)
        client.close()

    def _client(self) -> delta.Client:
        while True:
            try:
                return delta.Client.connect(self.dsn, app=app)
            except delta.DatabaseError:
                time.sleep(0.5)

    def _inform(self, client: delta.Client, objects: list[delta.Object]) -> None:
        # One batch per kind, as an informer would send them.
        for kind in KINDS:
            group = [o for o in objects if o.kind == kind]  # type: ignore[attr-defined]
            if not group:
                continue
            for _ in range(60):
                try:
                    results = client.inform_many(group)
                except delta.DatabaseError:
                    # Outcome unknown (the connection died at commit?): not counted as
                    # accepted; the checker's end-state check covers it either way.
                    self.inform_errors += 1
                    time.sleep(0.25)
                    continue
                with self.lock:
                    self.informs += len(results)
                    for result in results:
                        resource = result.resource
                        if result.outcome in (
                            delta.InformOutcome.CREATED,
                            delta.InformOutcome.UPDATED,
                        ):
                            key = (resource.kind, resource.object_id)
                            self.accepted[key] = max(self.accepted.get(key, 0), resource.generation)
                break

    # -- faults

    def actors(self) -> list[tuple[int, int, str, str]]:
        """(actor id, pid, namespace, role) of live registered actors on this host."""
        rows = self.query(
            "SELECT id, pid, namespace, role FROM delta_actor WHERE host = %s ORDER BY id",
            (socket.gethostname(),),
        )
        return [(int(r[0]), int(r[1]), r[2], r[3]) for r in rows if _alive(int(r[1]))]

    def claims_of(self, actor_ids: list[int]) -> list[int]:
        rows = self.query(
            "SELECT id FROM delta_job WHERE state = 'running' AND claimed_by = ANY(%s)",
            (actor_ids,),
        )
        return [int(r[0]) for r in rows]

    def inject(self, kind: str) -> Fault | None:
        now = time.time()
        match kind:
            case "kill_actor" | "pause_actor":
                workers = [a for a in self.actors() if a[3] == "worker" and a[1] not in self.paused]
                if not workers:
                    return None
                actor_id, pid, namespace, _ = self.rng.choice(workers)
                claims = self.claims_of([actor_id])
                if kind == "kill_actor":
                    os.kill(pid, signal.SIGKILL)
                    detail = f"SIGKILL worker {namespace} pid {pid}"
                else:
                    os.kill(pid, signal.SIGSTOP)
                    self.paused.add(pid)
                    pause = self.rng.uniform(RESCUE_TTL + 1, RESCUE_TTL + 3)
                    threading.Timer(pause, self._resume, (pid,)).start()
                    detail = f"SIGSTOP worker {namespace} pid {pid} for {pause:.1f}s"
                    return Fault(
                        kind, now, detail, claims, [actor_id], pids={pid}, until=now + pause
                    )
                return Fault(kind, now, detail, claims, [actor_id])
            case "kill_leader":
                rows = self.query("SELECT actor_id, pid FROM delta_leader")
                if not rows or not _alive(int(rows[0][1])):
                    return None
                actor_id, pid = int(rows[0][0]), int(rows[0][1])
                os.kill(pid, signal.SIGKILL)
                return Fault(
                    kind, now, f"SIGKILL leader pid {pid}", [], [actor_id], stops_leader=True
                )
            case "kill_supervisor":
                live = [(i, p) for i, p in enumerate(self.supervisors) if p and p.poll() is None]
                if len(live) < 2:
                    return None  # keep one running: restarts are the point, not an outage
                slot, proc = self.rng.choice(live)
                children = _children(proc.pid)
                victims = [a[0] for a in self.actors() if a[1] in children]
                claims = self.claims_of(victims)
                leader = {int(r[0]) for r in self.query("SELECT pid FROM delta_leader")}
                proc.kill()
                proc.wait()
                self.supervisors[slot] = None  # ours to restart, below
                delay = self.rng.uniform(0.5, 3.0)
                threading.Timer(delay, self.start_supervisor, (slot,)).start()
                detail = f"SIGKILL supervisor {slot} pid {proc.pid}, restart in {delay:.1f}s"
                if leader & children:
                    detail += " (the leader's)"
                fault = Fault(kind, now, detail, claims, victims, pids=children)
                fault.stops_leader = bool(leader & children)
                return fault
            case "pg_restart_fast" | "pg_restart_immediate":
                mode = kind.rsplit("_", 1)[1]
                self.cluster.restart(mode)
                down = time.time() - now
                detail = f"PostgreSQL restarted ({mode}, {down:.1f}s)"
                return Fault(kind, now, detail, downtime=down, stops_leader=True)
            case "terminate_backends":
                rows = self.query(
                    "SELECT count(pg_terminate_backend(pid)) FROM ("
                    " SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() ORDER BY random() LIMIT 8) t"
                )
                return Fault(kind, now, f"terminated {rows[0][0]} backends")
            case _ if kind in KILL_CONNS:
                return self.start_burst(kind, now)
        raise AssertionError(kind)

    def start_burst(self, kind: str, now: float) -> Fault:
        """Kill one component's backends again and again for a few seconds, in a thread."""
        name = KILL_CONNS[kind].format(namespace=self.rng.choice(sorted(app.namespaces)))
        length, every = self.rng.uniform(2.0, 6.0), self.rng.uniform(0.2, 0.5)
        detail = f"pg_terminate_backend of {name} every {every:.2f}s for {length:.1f}s"
        fault = Fault(kind, now, detail, until=now + length)
        burst = threading.Thread(target=self._burst, args=(fault, name, every), daemon=True)
        burst.start()
        self.bursts.append(burst)
        return fault

    def _burst(self, fault: Fault, application_name: str, every: float) -> None:
        while time.time() < fault.until:
            with contextlib.suppress(psycopg.OperationalError):
                fault.killed += self.query(KILL_BACKENDS, (application_name,))[0][0]
            time.sleep(every)

    def _resume(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self.paused.discard(pid)

    def fault_kinds(self) -> list[str]:
        """The deck: every fault kind once (those --faults selects)."""
        kinds = ["kill_actor", "kill_leader", "kill_supervisor", "pause_actor"]
        kinds += ["terminate_backends", *KILL_CONNS]
        if self.cluster is not None:
            kinds += ["pg_restart_fast", "pg_restart_immediate"]
        if self.args.faults is not None:
            kinds = [kind for kind in kinds if kind in self.args.faults]
        return kinds

    def run_faults(self, duration: float) -> None:
        deck: list[str] = []
        end = time.monotonic() + duration
        while time.monotonic() < end:
            time.sleep(self.rng.uniform(1.0, 3.0))
            self.restart_exited()
            if not deck:
                deck = self.fault_kinds()
                self.rng.shuffle(deck)
            if not deck:
                continue  # --faults none: a clean run
            kind = deck.pop()
            try:
                fault = self.inject(kind)
            except psycopg.OperationalError as exc:
                print(f"  could not inject {kind}: {exc}", flush=True)
                continue
            if fault is not None:
                self.faults.append(fault)
                print(f"  {time.strftime('%H:%M:%S')} {fault.detail}", flush=True)

    def restart_exited(self) -> None:
        """A supervisor that exited by itself is started again, as systemd would.

        `supervise` refuses to start while PostgreSQL is unreachable (exit 2); a restart
        fault right at its start does that. Any exit is reported with its code.
        """
        for slot, proc in enumerate(self.supervisors):
            if proc is not None and proc.poll() is not None:
                self.supervisor_exits.append(proc.returncode)
                print(f"  supervisor {slot} exited with {proc.returncode}; restarting it")
                self.start_supervisor(slot)

    def watch_rescues(self) -> None:
        """Time until each victim's claims left `running` under the victim."""
        while not self.stop_workload.is_set() or any(self._pending()):
            for fault in self._pending():
                with contextlib.suppress(psycopg.OperationalError):
                    rows = self.query(
                        "SELECT count(*) FROM delta_job WHERE id = ANY(%s)"
                        " AND state = 'running' AND claimed_by = ANY(%s)",
                        (fault.claims, fault.victims),
                    )
                    if rows[0][0] == 0:
                        fault.rescued_after = time.time() - fault.at
            time.sleep(0.05)

    def _pending(self) -> list[Fault]:
        return [
            f
            for f in self.faults
            if f.claims and f.rescued_after is None and time.time() - f.at < 120
        ]

    # -- settle and check

    def settle(self, timeout: float) -> float:
        for pid in list(self.paused):
            self._resume(pid)
        self.restart_exited()
        started = time.monotonic()
        while None in self.supervisors and time.monotonic() - started < 5:
            time.sleep(0.1)  # a killed supervisor's restart timer is about to fire
        while time.monotonic() - started < timeout:
            with contextlib.suppress(psycopg.OperationalError):
                rows = self.query(
                    "SELECT (SELECT count(*) FROM delta_resource WHERE state <> 'synced'),"
                    " (SELECT count(*) FROM delta_job WHERE resource_id IS NOT NULL"
                    "  AND state IN ('available', 'scheduled', 'retryable', 'running'))"
                )
                if rows[0] == (0, 0):
                    return time.monotonic() - started
            time.sleep(0.5)
        return -1.0

    def check(self, settled_in: float, liveness: Liveness) -> dict[str, Any]:
        violations: list[str] = []
        if settled_in < 0:
            violations.append(f"did not settle within {self.args.settle_timeout:g}s")
        resources = {
            (r[0], r[1]): (r[2], r[3])
            for r in self.query(
                "SELECT kind, object_id, generation, state FROM delta_resource"
                " WHERE kind <> 'receipt'"
            )
        }
        runs: dict[tuple[str, str], list[Run]] = {}
        for kind, object_id, generation, pid, started, ended, ok in self.query(
            "SELECT kind, object_id, generation, pid, started_at, ended_at, ok FROM chaos_run"
        ):
            runs.setdefault((kind, object_id), []).append(Run(started, ended, generation, ok, pid))
        violations += self._check_worked(resources, runs)
        order = _check_order(runs, self.frozen_windows())
        violations += order.pop("violations")
        violations += self._check_rescues()
        effects = self._check_effects()
        violations += effects.pop("violations")
        live, live_violations = liveness.check(self.faults, self.query)
        violations += live_violations
        latencies = sorted(f.rescued_after for f in self.faults if f.rescued_after is not None)
        by_kind: dict[str, int] = {}
        rescues: dict[str, list[float]] = {}
        killed: dict[str, int] = {}
        for fault in self.faults:
            by_kind[fault.kind] = by_kind.get(fault.kind, 0) + 1
            if fault.rescued_after is not None:
                rescues.setdefault(fault.kind, []).append(fault.rescued_after)
            if fault.kind in KILL_CONNS:
                killed[fault.kind] = killed.get(fault.kind, 0) + fault.killed
        return {
            "seed": self.args.seed,
            "duration": self.args.duration,
            "supervisors": self.args.supervisors,
            "resources": len(resources),
            "accepted_changes": len(self.accepted),
            "informed_objects": self.informs,
            "inform_errors": self.inform_errors,
            "runs": sum(len(v) for v in runs.values()),
            "failed_runs_by_design": sum(1 for v in runs.values() for r in v if not r.ok),
            **order,
            "faults": by_kind,
            "fault_count": len(self.faults),
            "supervisor_exits": self.supervisor_exits,
            "rescues_measured": len(latencies),
            "rescue_max_s": round(latencies[-1], 3) if latencies else None,
            "rescue_p99_s": round(_percentile(latencies, 0.99), 3) if latencies else None,
            "rescue_bound_s": RESCUE_BOUND,
            "rescues_past_plain_bound": sum(1 for x in latencies if x > RESCUE_BOUND),
            "rescue_by_fault": {
                kind: {"count": len(v), **_spread("rescue", sorted(v))}
                for kind, v in sorted(rescues.items())
            },
            "backends_killed": killed,
            "settled_in_s": round(settled_in, 1),
            "effects": effects,
            "liveness": live,
            "violations": violations,
        }

    def frozen_windows(self) -> dict[int, tuple[float, float]]:
        """Pid -> (paused, resumed) for actors paused past the TTL with no supervisor.

        Its supervisor killed while it was stopped, nothing kills such an actor before the
        leader rescues its claims; on SIGCONT its threads go on with a work that already
        runs elsewhere. That is a frozen host, the limit every lease has (docs/reliability.md).
        """
        windows = {}
        for pause in self.faults:
            if pause.kind != "pause_actor":
                continue
            (pid,) = pause.pids
            orphaned = any(
                kill.kind == "kill_supervisor" and pid in kill.pids
                and pause.at <= kill.at <= pause.until
                for kill in self.faults
            )  # fmt: skip
            if orphaned and pause.until - pause.at > RESCUE_TTL:
                windows[pid] = (pause.at, pause.until)
        return windows

    def _check_worked(
        self, resources: dict[tuple[str, str], tuple[int, str]], runs: dict[Any, list[Run]]
    ) -> list[str]:
        """Every accepted change, and every resource's newest generation, worked; all synced."""
        found = []

        def worked(key: tuple[str, str], generation: int) -> bool:
            return any(r.ok and r.generation >= generation for r in runs.get(key, []))

        for key, generation in self.accepted.items():
            if key not in resources:
                found.append(f"lost: accepted {key} generation {generation} has no resource")
            elif not worked(key, generation):
                found.append(f"not worked: {key} generation {generation}")
        for key, (generation, state) in resources.items():
            if state != "synced":
                found.append(f"ends {state}: {key}")
            if not worked(key, generation):
                found.append(f"newest generation {generation} of {key} never worked")
        return found

    def _check_effects(self) -> dict[str, Any]:
        """The effects section of the report (see _check_effects), read from the tables."""
        completed = {
            f"{kind}/{object_id}": count
            for kind, object_id, count in self.query(COMPLETED_WORKS_BY_PARENT)
        }
        receipts = [(p, r, s) for p, r, s in self.query(RECEIPTS)]
        echoes = [(p, r) for p, r in self.query(ECHO_JOBS)]
        runs = {
            run.hex: (f"{kind}/{object_id}", ok)
            for run, kind, object_id, ok in self.query(
                "SELECT run, kind, object_id, ok FROM chaos_run"
            )
        }
        return _check_effects(completed, receipts, echoes, runs)

    def rescue_bound(self, fault: Fault) -> float:
        """The TTL plus one rescue interval, plus what other faults in the window cost.

        Rescue needs PostgreSQL (each restart in the window adds its downtime and a
        second to reconnect) and, when the victim's supervisor is gone too, a leader
        (each leader or supervisor kill in the window adds a lease TTL for the failover).
        """
        bound = RESCUE_BOUND
        for other in self.faults:
            if other is fault or not fault.at <= other.at <= fault.at + bound:
                continue
            if other.downtime:
                bound += other.downtime + 1.0
            elif other.kind in ("kill_leader", "kill_supervisor"):
                bound += LEASE_TTL + RESCUE_INTERVAL
        return bound

    def _check_rescues(self) -> list[str]:
        found = [
            f"claims never rescued after: {f.detail}"
            for f in self.faults
            if f.claims and f.rescued_after is None
        ]
        found += [
            f"slow rescue: {f.rescued_after:.2f}s after {f.detail} "
            f"(bound {self.rescue_bound(f):.1f}s with the faults around it)"
            for f in self.faults
            if f.rescued_after is not None and f.rescued_after > self.rescue_bound(f)
        ]
        return found


@dataclass(order=True)
class Run:
    started: float
    ended: float
    generation: int
    ok: bool
    pid: int


def _check_order(
    runs: dict[tuple[str, str], list[Run]], frozen: dict[int, tuple[float, float]]
) -> dict[str, Any]:
    """Overlapping runs, successful runs going back a generation, and duplicates.

    An overlap whose earlier run belongs to a frozen actor (see Harness.frozen_windows)
    and spans its resumption is counted as explained, not as a violation.
    """
    violations: list[str] = []
    overlaps = explained = backwards = duplicates = 0
    for key, entries in runs.items():
        entries.sort()
        latest: Run | None = None
        newest_ok = 0
        seen_ok: set[int] = set()
        for run in entries:
            if latest is not None and run.started < latest.ended:
                window = frozen.get(latest.pid)
                if window and latest.started <= window[1] <= latest.ended + 1.0:
                    explained += 1
                else:
                    overlaps += 1
                    violations.append(
                        f"overlap: {key} run of generation {run.generation} (pid {run.pid}) "
                        f"started {latest.ended - run.started:.3f}s before the run of "
                        f"generation {latest.generation} (pid {latest.pid}) ended"
                    )
            if latest is None or run.ended > latest.ended:
                latest = run
            if not run.ok:
                continue
            if run.generation < newest_ok:
                backwards += 1
                violations.append(
                    f"backwards: {key} worked generation {run.generation} after {newest_ok}"
                )
            newest_ok = max(newest_ok, run.generation)
            duplicates += run.generation in seen_ok
            seen_ok.add(run.generation)
    return {
        "duplicate_runs": duplicates,
        "overlaps": overlaps,
        "overlaps_of_frozen_actors": explained,
        "backwards": backwards,
        "violations": violations,
    }


def _check_effects(
    completed: dict[str, int],
    receipts: list[tuple[str, str, str]],
    echoes: list[tuple[str, str]],
    runs: dict[str, tuple[str, bool]],
) -> dict[str, Any]:
    """No effect without its committed result, no committed result without its effects.

    Every work run of a parent that makes effects (a widget, gadget or ticket, "kind/id",
    for which makes_effects() holds) makes two, named by its run id: a receipt resource
    and an echo job. A committed success is exactly one `completed` job row of its parent
    (failures end `discarded`, hand-backs `cancelled`; a rescued or stale run writes
    nothing), so per parent its completed rows, receipts and echo jobs must be as many
    (none for the other parents); per run, both effects or neither, once; and every run
    with effects must be recorded as a successful run of that parent.

    `completed`: parent -> completed job rows (every parent, 0 included); `receipts`:
    (parent, run, state); `echoes`: (parent, run); `runs`: run -> (parent, ok).
    """
    violations: list[str] = []
    receipts_of = Counter(parent for parent, _, _ in receipts)
    echoes_of = Counter(parent for parent, _ in echoes)
    for parent in sorted(set(completed) | set(receipts_of) | set(echoes_of)):
        made = (receipts_of[parent], echoes_of[parent])
        if parent not in completed:
            violations.append(
                f"effects: {made[0]} receipts and {made[1]} echo jobs name {parent}, "
                "which is no resource"
            )
            continue
        works = completed[parent] if makes_effects(parent) else 0
        if made != (works, works):
            violations.append(
                f"effects: {parent} has {works} completed works that make effects, but "
                f"{made[0]} receipts and {made[1]} echo jobs"
            )
    receipt_runs = Counter(run for _, run, _ in receipts)
    echo_runs = Counter(run for _, run in echoes)
    parent_of = {run: parent for parent, run in echoes} | {r[1]: r[0] for r in receipts}
    for run, parent in sorted(parent_of.items()):
        have = (receipt_runs[run], echo_runs[run])
        if have != (1, 1):
            violations.append(
                f"effects: run {run} of {parent} left {have[0]} receipts and {have[1]} echo "
                "jobs (both once, or neither)"
            )
        recorded = runs.get(run)
        if recorded is None:
            violations.append(f"effects: run {run} of {parent} left effects but no run record")
        elif recorded != (parent, True):
            what = "failed run" if recorded[0] == parent else f"run of {recorded[0]}"
            violations.append(f"effects of a {what}: run {run} of {parent}")
    violations += [
        f"effects: the receipt of run {run} of {parent} ends {state}"
        for parent, run, state in receipts
        if state != "synced"
    ]
    making = [(run, ok) for run, (parent, ok) in runs.items() if makes_effects(parent)]
    return {
        "parents_making_effects": sum(1 for parent in completed if makes_effects(parent)),
        "completed_works": sum(n for parent, n in completed.items() if makes_effects(parent)),
        "receipts": len(receipts),
        "receipts_by_kind": dict(sorted(Counter(p.split("/")[0] for p, _, _ in receipts).items())),
        "echo_jobs": len(echoes),
        # Runs that made effects and then failed by design: each must have left none.
        "failed_runs": sum(1 for _, ok in making if not ok),
        # Runs recorded as successful whose result was not written (the actor killed
        # before its completer wrote it, or the result stale): their effects went with it.
        "successful_runs_without_effects": sum(
            1 for run, ok in making if ok and run not in parent_of
        ),
        "violations": violations,
    }


# ------------------------------------------------------------------------- liveness


@dataclass
class Sample:
    at: float  # time.time()
    lease: tuple[int, int] | None  # (actor id, term) of an unexpired lease; None: no leader
    informer_age: float  # seconds since the newest informer run started
    promotion_delay: float  # seconds the most overdue unpromoted job is past due; 0: none


class Liveness:
    """Leader duties throughout the run: informers on schedule, due jobs promoted.

    The app's `beacon` informer (every INFORM_INTERVAL) records each run's start, and a
    probe job is enqueued every PROBE_INTERVAL, PROBE_DELAY ahead, so there is always a
    scheduled job for the leader to promote. A sampler reads, every SAMPLE_INTERVAL, the
    lease, the age of the newest informer run, and how far past due the most overdue job
    still waiting for promotion (scheduled or retryable) is.

    A sample breaks the bound when its informer gap or promotion delay exceeds
    LIVENESS_BOUND while one (actor, term) has held an unexpired lease for longer than
    the bound: both are counted from the moment the sampler first saw that term. Not
    checked are samples without an unexpired lease, and samples in the windows where
    the leader itself was a victim (its actor or its supervisor SIGKILLed, PostgreSQL
    restarted), from the fault until its end plus one lease TTL: duties stop there until
    the lease expires and another candidate takes over. Connection kills are not
    excluded: a burst on the leader's own connections (its pool, its lease connection)
    may stop the duties while it lasts, but they must be back within the bound after it
    ends (gaps count from its end); the runtime has to heal its pools and restart its
    duties. Every other connection kill (workers', `terminate_backends`) gets nothing.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.samples: list[Sample] = []
        self.probes_enqueued = 0
        self.started = time.time()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self.sample, daemon=True),
            threading.Thread(target=self.enqueue_probes, daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def sample(self) -> None:
        conn: psycopg.Connection | None = None
        while not self.stop.wait(SAMPLE_INTERVAL):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(
                        self.dsn, autocommit=True, connect_timeout=5,
                        application_name="chaos-sampler",
                    )  # fmt: skip
                row = conn.execute(SAMPLE_LIVENESS).fetchone()
            except psycopg.OperationalError:
                if conn is not None:
                    conn.close()
                conn = None
                continue
            assert row is not None
            actor_id, term, unexpired, informed_at, overdue = row
            at = time.time()
            self.samples.append(
                Sample(
                    at,
                    (actor_id, term) if unexpired else None,
                    at - (informed_at or self.started),
                    max(0.0, overdue or 0.0),
                )
            )
        if conn is not None:
            conn.close()

    def enqueue_probes(self) -> None:
        client: delta.Client | None = None
        while not self.stop.wait(PROBE_INTERVAL):
            due = datetime.now(UTC) + timedelta(seconds=PROBE_DELAY)
            try:
                client = client or delta.Client.connect(self.dsn, app=app)
                client.enqueue(Probe(due.timestamp()), namespace="alpha", scheduled_at=due)
            except delta.DatabaseError:
                continue  # the next one comes in a second
            self.probes_enqueued += 1
        if client is not None:
            client.close()

    def check(self, faults: list[Fault], query: Any) -> tuple[dict[str, Any], list[str]]:
        """The liveness section of the report, and its violations."""
        outages = [(f.at, f.end + LEASE_TTL) for f in faults if f.stops_leader]
        bursts = [(f.at, f.end) for f in faults if f.kind in LEADER_CONNS]
        checked = _checked_samples(self.samples, outages, bursts)
        violations = _liveness_violations(checked, faults)
        probes = [
            started - due
            for due, started in query("SELECT due_at, started_at FROM chaos_probe_run")
        ]
        informer = sorted(c[1] for c in checked)
        promotion = sorted(c[2] for c in checked)
        section = {
            "bound_s": LIVENESS_BOUND,
            "samples": len(self.samples),
            "samples_checked": len(checked),
            "samples_without_lease": sum(1 for s in self.samples if s.lease is None),
            "samples_in_leader_outages": sum(
                1 for s in self.samples if s.lease and _within(s.at, outages)
            ),
            "samples_in_leader_bursts": sum(
                1 for s in self.samples if s.lease and _within(s.at, bursts)
            ),
            **_spread("informer_gap", informer),
            **_spread("promotion_delay", promotion),
            "all_samples": {
                **_spread("informer_gap", sorted(s.informer_age for s in self.samples)),
                **_spread("promotion_delay", sorted(s.promotion_delay for s in self.samples)),
            },
            "by_fault": _liveness_by_fault(checked, faults),
            "probes_enqueued": self.probes_enqueued,
            "probe_runs": len(probes),
            **_spread("probe_start_delay", sorted(probes)),
            "violations": len(violations),
        }
        return section, violations


Checked = tuple[Sample, float, float]  # a sample, its informer gap and promotion delay


def _checked_samples(
    samples: list[Sample], outages: list[tuple[float, float]], bursts: list[tuple[float, float]]
) -> list[Checked]:
    """Samples under an unexpired lease, outside leader outages and bursts, gaps cut.

    A gap counts from the latest of its own start, the moment the term was first seen (a
    new leader is not blamed for what happened before it led) and the end of the last
    burst on the leader's connections (the duties must be back within the bound after it).
    """
    checked = []
    held: tuple[int, int] | None = None
    since = 0.0
    for sample in samples:
        if sample.lease != held:
            held, since = sample.lease, sample.at
        if held is None or _within(sample.at, outages) or _within(sample.at, bursts):
            continue
        ended = [end for _, end in bursts if end <= sample.at]
        clock = sample.at - max([since, *ended])
        checked.append(
            (sample, min(sample.informer_age, clock), min(sample.promotion_delay, clock))
        )
    return checked


def _liveness_violations(checked: list[Checked], faults: list[Fault]) -> list[str]:
    """One line per episode (consecutive samples) of a gap past the bound."""
    found = []
    for index, what in ((1, "informer gap"), (2, "promotion delay")):
        episode: list[Checked] = []
        for entry in [*checked, None]:
            if entry is not None and entry[index] > LIVENESS_BOUND:  # type: ignore[operator]
                episode.append(entry)
                continue
            if episode:
                found.append(_describe_episode(what, index, episode, faults))
                episode = []
    return found


def _describe_episode(what: str, index: int, episode: list[Checked], faults: list[Fault]) -> str:
    first, last = episode[0], episode[-1]
    began = first[0].at - first[index]
    during = [f"{f.kind} at {_clock(f.at)}" for f in faults if began - 1.0 <= f.at <= last[0].at]
    assert first[0].lease is not None
    return (
        f"{what} of {last[index]:.1f}s (bound {LIVENESS_BOUND:g}s) at {_clock(last[0].at)}"
        f" (since {_clock(began)}) while actor {first[0].lease[0]} held term"
        f" {first[0].lease[1]}; faults then: {', '.join(during) or 'none'}"
    )


def _liveness_by_fault(checked: list[Checked], faults: list[Fault]) -> dict[str, dict[str, float]]:
    """Per fault kind: the worst checked informer gap and promotion delay in its windows.

    A fault's window runs from its start to its end plus the bound.
    """
    worst: dict[str, dict[str, float]] = {}
    for fault in faults:
        entry = worst.setdefault(
            fault.kind, {"informer_gap_max_s": 0.0, "promotion_delay_max_s": 0.0}
        )
        for sample, informer, promotion in checked:
            if fault.at <= sample.at <= fault.end + LIVENESS_BOUND:
                entry["informer_gap_max_s"] = round(max(entry["informer_gap_max_s"], informer), 2)
                entry["promotion_delay_max_s"] = round(
                    max(entry["promotion_delay_max_s"], promotion), 2
                )
    return worst


def _within(at: float, windows: list[tuple[float, float]]) -> bool:
    return any(start <= at <= end for start, end in windows)


def _spread(name: str, values: list[float]) -> dict[str, float | None]:
    """`name`_max_s and `name`_p99_s of sorted `values`."""
    return {
        f"{name}_max_s": round(values[-1], 3) if values else None,
        f"{name}_p99_s": round(_percentile(values, 0.99), 3) if values else None,
    }


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 10)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def print_report(report: dict[str, Any]) -> None:
    print("\nchaos report")
    _print_figures({k: v for k, v in report.items() if k != "violations"}, "  ")
    if report["violations"]:
        print(f"\n{len(report['violations'])} VIOLATIONS:")
        for line in report["violations"][:50]:
            print(f"  - {line}")
    else:
        print("\n  no invariant broke")


def _print_figures(figures: dict[str, Any], indent: str) -> None:
    """One figure a line; a section (a dict of dicts, the liveness or effects dict) indented."""
    for key, value in figures.items():
        nested = isinstance(value, dict) and any(isinstance(v, dict) for v in value.values())
        if nested or key in ("liveness", "effects"):
            print(f"{indent}{key}")
            _print_figures(value, indent + "  ")
        else:
            print(f"{indent}{key:26} {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults")
    parser.add_argument("--resources", type=int, default=20_000)
    parser.add_argument("--supervisors", type=int, default=2, choices=[2, 3])
    parser.add_argument("--settle-timeout", type=float, default=180.0)
    parser.add_argument("--dsn", help="an external database (no PostgreSQL restarts then)")
    parser.add_argument("--log-dir", help="where supervisor logs go (default ./.chaos)")
    parser.add_argument("--json", type=Path, help="write the report here too")
    parser.add_argument(
        "--keep", action="store_true", help="keep the database running for a look afterwards"
    )
    parser.add_argument(
        "--faults",
        type=lambda text: set() if text == "none" else set(text.split(",")),
        help="only these fault kinds, comma-separated; 'none' for a clean run (default: all)",
    )
    args = parser.parse_args()
    # The harness's own client reconnects through every fault; its pool's warnings are noise.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

    harness = Harness(args)
    harness.start_database()
    try:
        for slot in range(args.supervisors):
            harness.start_supervisor(slot)
        workload = threading.Thread(target=harness.workload, daemon=True)
        watcher = threading.Thread(target=harness.watch_rescues, daemon=True)
        liveness = Liveness(harness.dsn)
        print(f"chaos: seed {args.seed}, {args.resources} resources, {args.duration:g}s of faults")
        workload.start()
        watcher.start()
        liveness.start()
        harness.run_faults(args.duration)
        harness.stop_workload.set()
        workload.join()
        for burst in harness.bursts:
            burst.join()
        settled_in = harness.settle(args.settle_timeout)
        liveness.join()
        watcher.join(timeout=130)
        report = harness.check(settled_in, liveness)
    finally:
        harness.stop_all()
        if args.keep:
            print(f"database kept: psql '{harness.dsn}'")
        else:
            harness.remove_database()
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
