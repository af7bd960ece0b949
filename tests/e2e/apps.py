"""Apps that the end-to-end tests run under real `delta-actors supervise` processes.

Controllers record every run in `e2e_run` (committed before they return) so that tests
can see which actor ran what, and when.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator

import psycopg

import delta_actors as delta

RUNS_TABLE = """
CREATE TABLE IF NOT EXISTS e2e_run (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    object_id text NOT NULL,
    generation bigint NOT NULL,
    pid integer NOT NULL,
    started_at double precision NOT NULL,
    ended_at double precision
);
CREATE TABLE IF NOT EXISTS e2e_beat (
    id bigserial PRIMARY KEY,
    what text NOT NULL,  -- 'inform' (an informer run) or 'ping' (a plain job ran)
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


class Task(delta.Object, kind="task"):
    """Work for the default namespace; `seconds` is how long its work takes."""

    key: str
    seconds: float = 0.0
    version: int = 0

    def id(self) -> str:
        return self.key


class Report(delta.Object, kind="report"):
    """Work for the `reports` namespace."""

    key: str

    def id(self) -> str:
        return self.key


class Flaky(delta.Object, kind="flaky"):
    """Work for the default namespace that always fails (retried with backoff)."""

    key: str

    def id(self) -> str:
        return self.key


class Sabotage(delta.Job, kind="sabotage"):
    """Writes a garbage frame to the actor's supervisor pipe."""


async def _record(resource: delta.Resource[object], seconds: float) -> None:
    dsn = os.environ["DELTA_DATABASE_URL"]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "INSERT INTO e2e_run (kind, object_id, generation, pid, started_at) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (resource.kind, resource.object_id, resource.generation, os.getpid(), time.time()),
        )
        row = await cur.fetchone()
        assert row is not None
        await asyncio.sleep(seconds)
        await conn.execute("UPDATE e2e_run SET ended_at = %s WHERE id = %s", (time.time(), row[0]))


class TaskController(delta.Controller[Task]):
    async def work(self, resource: delta.Resource[Task]) -> None:
        await _record(resource, resource.object.seconds)  # type: ignore[arg-type]


class ReportController(delta.Controller[Report]):
    namespace = "reports"

    async def work(self, resource: delta.Resource[Report]) -> None:
        await _record(resource, 0.0)  # type: ignore[arg-type]


class FlakyController(delta.Controller[Flaky]):
    async def work(self, resource: delta.Resource[Flaky]) -> None:
        raise RuntimeError(f"flaky {resource.object_id} failed")


def sabotage(job: Sabotage) -> None:
    """Find this actor's end of the supervisor pipe (the unnamed Unix socket) and corrupt it."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with sock:
            if sock.family == socket.AF_UNIX and sock.getpeername() == "":
                sock.sendall(b"\x00\x00\x00\x08garbage!")


app = delta.App(
    controllers=[TaskController(), ReportController(), FlakyController()],
    jobs={Sabotage: sabotage},
    namespaces={
        "default": delta.Namespace(max_workers=20),
        "reports": delta.Namespace(max_workers=5, processes=2),
    },
)


# Six worker processes of one namespace: six queries in flight to cancel at a stop
# (test_pooler.py).
crowded_app = delta.App(
    controllers=[TaskController()],
    namespaces={"default": delta.Namespace(max_workers=2, processes=6)},
)


# ---------------------------------------------------------------- liveness (test_liveness.py)


class Beacon(delta.Object, kind="beacon"):
    """Never stored: its informer only records that it ran."""

    key: str

    def id(self) -> str:
        return self.key


class Ping(delta.Job, kind="ping"):
    """A plain job that records when it ran (scheduled ones prove promotion works)."""


def _beat(what: str) -> None:
    with psycopg.connect(os.environ["DELTA_DATABASE_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO e2e_beat (what) VALUES (%s)", (what,))


class BeaconController(delta.Controller[Beacon]):
    inform_interval = 1.0

    async def work(self, resource: delta.Resource[Beacon]) -> None:
        return None

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Beacon]:
        await asyncio.to_thread(_beat, "inform")
        for _ in ():
            yield Beacon(key="never")


def ping(job: Ping) -> None:
    _beat("ping")


class Ledger(delta.Object, kind="ledger"):
    """Never stored: its informer runs hourly, or when asked (`delta-actors inform`)."""

    key: str

    def id(self) -> str:
        return self.key


class LedgerController(delta.Controller[Ledger]):
    inform_interval = 3600.0

    async def work(self, resource: delta.Resource[Ledger]) -> None:
        return None

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Ledger]:
        await asyncio.to_thread(_beat, "ledger-full" if options.full else "ledger")
        for _ in ():
            yield Ledger(key="never")


liveness_app = delta.App(
    controllers=[TaskController(), BeaconController(), LedgerController()],
    jobs={Ping: ping},
    namespaces={"default": delta.Namespace(max_workers=10)},
)


# A plain job the leader enqueues every second (delta.Periodic), for the periodic tests.
periodic_app = delta.App(
    jobs={Ping: ping},
    namespaces={"default": delta.Namespace(max_workers=4)},
    periodic=[delta.Periodic(Ping(), every=1.0, name="ping-every-second")],
)


class Metered(delta.Job, kind="metered", concurrency=3):
    """A plain job limited to three at once across the cluster; it takes a while."""

    n: int


async def metered(job: Metered) -> None:
    await asyncio.sleep(0.05)


# Two supervisors of this app share one limit (the limits tests).
limited_app = delta.App(
    jobs={Metered: metered, Ping: ping},
    namespaces={"default": delta.Namespace(max_workers=10, processes=2)},
)
