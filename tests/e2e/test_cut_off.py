"""An actor of `delta-actors supervise` cut off from PostgreSQL, its plain def running.

The network goes silent (a partition: tests/blackhole.py) while a plain def works. No
lease can stop a thread; the end of its process can. The worker fences itself once its
heartbeats have failed for most of the rescue TTL, and its actor must end right there,
not after a graceful stop that a cut network stretches past the TTL: otherwise the
thread runs on while rescue hands its work to another actor (runtime/actor.py).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import psycopg

import delta_actors as delta
from tests.blackhole import Blackhole
from tests.e2e.apps import Task
from tests.e2e.conftest import Supervise
from tests.e2e.hostile_apps import Stuck
from tests.e2e.test_supervise import states
from tests.waiting import wait_until

APP = "tests.e2e.hostile_apps:app"
ACTORS = 3  # default, reports, leader
RESCUE_TTL = 5.0  # Supervise's --rescue-ttl


class BlackholeThread:
    """A Blackhole on an event loop of its own thread, for a test that is not async."""

    def __init__(self, dsn: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._hole = Blackhole(dsn)

    def __enter__(self) -> BlackholeThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._hole.__aenter__(), self._loop).result(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._hole.__aexit__(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def dsn(self) -> str:
        return self._hole.dsn

    def swallow(self) -> None:
        self._loop.call_soon_threadsafe(self._hole.swallow)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._hole.release)


def default_worker_pid(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM delta_actor WHERE namespace = 'default' AND role = 'worker'"
            " ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert row is not None
    return int(row[0])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by its supervisor) has ended too.
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split(") ", 1)[1][0] != "Z"


def test_a_cut_off_actor_ends_its_plain_def_within_the_ttl(e2e_dsn, tmp_path):
    ticks = tmp_path / "ticks"
    with BlackholeThread(e2e_dsn) as hole:
        process = Supervise(e2e_dsn, tmp_path, app=APP, runtime_dsn=hole.dsn)
        try:
            process.wait_started(ACTORS)
            pid = default_worker_pid(e2e_dsn)
            with delta.Client.connect(e2e_dsn) as client:
                client.inform(Stuck(key="s", path=str(ticks)))
                wait_until(lambda: ticks.exists() and ticks.read_text(), 15, "the work to run")
                hole.swallow()
                cut = time.time()
                wait_until(lambda: not alive(pid), 15, f"the cut-off actor {pid} to end")
                last_tick = float(ticks.read_text().split()[-1])
                # Its last heartbeat that committed was before the cut: rescue may hand
                # the work on from cut + TTL. The thread must be gone before that.
                assert last_tick - cut < RESCUE_TTL, (last_tick - cut, process.log[-3000:])
                log = process.log
                assert "could not heartbeat" in log, log[-3000:]
                assert "hung" not in log, log[-3000:]  # it ended itself; nothing hung
                # Healed: the runtime recovers, and the work it cut short is done again.
                (tmp_path / "ticks.done").touch()
                hole.release()
                client.inform(Task(key="after"))
                wait_until(
                    lambda: states(e2e_dsn).get("synced", 0) == 2, 60,
                    f"recovery after the heal; log:\n{process.log[-3000:]}",
                )  # fmt: skip
            assert process.proc.poll() is None
        finally:
            process.stop()
    assert not process.unhandled_errors()
