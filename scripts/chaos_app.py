"""The workload of the fault-injection harness (scripts/chaos.py): its app and tables.

Every `delta-actors supervise` the harness starts runs `chaos_app:app`:

- `widget` and `gadget` in `alpha` (async controllers), `ticket` in `beta` (a plain-def
  controller, two processes). Every work records its run (kind, id, generation seen,
  start, end, pid, outcome) in `chaos_run`, committed before it returns. A gadget
  fails the first attempt of about one resource in eight.
- `beacon` has an informer (every INFORM_INTERVAL) that lists nothing and records when it
  runs; a plain job, `chaos-probe`, records when it was due and when it ran (liveness).
- the works of one resource in EFFECTS_ONE_IN (makes_effects) also make two effects with
  `delta.work_context()`, named by the run's id, before the run is recorded and before a
  failure by design: they inform a `receipt` (in `alpha`, whose work does nothing) and
  enqueue a plain job, `chaos-echo` (a no-op).

Invariant the checks rely on: a run's record carries its own start and end
(`time.time()` of the process that ran it: every process runs on this one machine, the
namespaced hosts included, so the clocks are one), and is idempotent by its run id.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator
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
    ok boolean NOT NULL,
    host text NOT NULL,  -- $CHAOS_HOST of the supervisor that ran it ('' on this host)
    -- When the record itself reached PostgreSQL (its clock: this machine's): a side
    -- effect of the work, so a record that lands late (a host cut off, then healed) is
    -- part of its run for the overlap check.
    recorded_at double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp())
)
"""
RECORD_RUN = (
    "INSERT INTO chaos_run (run, kind, object_id, generation, pid, started_at, ended_at, ok,"
    " host) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run) DO NOTHING"
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

# How the works' record connections connect. A TCP user timeout bounds how long what a
# work sent can wait in its kernel's socket (a flapping link; the process may be gone):
# it lands within a second of being sent or never. The worker fences itself with a
# second of the rescue TTL to spare (runtime/worker.py), so a record lands before rescue
# can hand its work to another actor; docs/operations.md asks the same of a controller's
# own connections.
RECORD_CONNECT = {"autocommit": True, "connect_timeout": 5, "tcp_user_timeout": 1000}

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


def _host() -> str:
    return os.environ.get("CHAOS_HOST", "")


_journal_lock = threading.Lock()
_journal: Any = None


def journal_run(
    run: uuid.UUID, resource: delta.Resource[Any], started: float, ended: float, how: str
) -> None:
    """Append one run to this process's journal in $CHAOS_JOURNAL (when set).

    Written whatever became of the run (`how`: recorded, failed to record, cancelled), so
    that the overlap check also sees runs whose record never reached PostgreSQL: a host
    cut off from it cancels its works, or its record waits, and the process may die first.
    """
    folder = os.environ.get("CHAOS_JOURNAL")
    if not folder:
        return
    global _journal  # noqa: PLW0603 (one file per process, opened on first use)
    line = json.dumps(
        [run.hex, resource.kind, resource.object_id, resource.generation, os.getpid(),
         _host(), started, ended, how]
    )  # fmt: skip
    with _journal_lock:
        if _journal is None or _journal[0] != os.getpid():  # a forked actor: its own file
            path = Path(folder) / f"runs-{os.getpid()}.jsonl"
            _journal = (os.getpid(), path.open("a", encoding="utf-8"))
        _journal[1].write(line + "\n")
        _journal[1].flush()


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
                        self._conn = await psycopg.AsyncConnection.connect(_dsn(), **RECORD_CONNECT)
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
                conn = psycopg.connect(_dsn(), **RECORD_CONNECT)
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
    started, run, how = time.time(), uuid.uuid4(), "cancelled"
    try:
        await asyncio.sleep(_work_seconds(resource))
        _make_effects(resource, run)
        row = (run, resource.kind, resource.object_id, resource.generation, os.getpid())
        how = "unrecorded"
        await _recorder.record((*row, started, time.time(), not fail, _host()))
        how = "recorded"
    finally:
        journal_run(run, resource, started, time.time(), how)
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
        started, run, how = time.time(), uuid.uuid4(), "cancelled"
        try:
            time.sleep(_work_seconds(resource))
            _make_effects(resource, run)  # in the work's thread: it has the task's context
            row = (run, resource.kind, resource.object_id, resource.generation, os.getpid())
            how = "unrecorded"
            _record_sync((*row, started, time.time(), True, _host()))
            how = "recorded"
        finally:
            journal_run(run, resource, started, time.time(), how)


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
