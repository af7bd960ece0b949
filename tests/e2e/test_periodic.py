"""A periodic job under real supervisors: one run per period, whoever leads, restarts or not."""

from __future__ import annotations

import itertools
import signal
import time
from datetime import timedelta

import psycopg

from tests.e2e.conftest import Supervise
from tests.waiting import wait_until

APP = "tests.e2e.apps:periodic_app"
ACTORS = 2  # one worker, one leader candidate


def periodic_jobs(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT unique_key, state::text FROM delta_job WHERE kind = 'ping' ORDER BY id"
        ).fetchall()
    return [(key, state) for key, state in rows]


def test_two_supervisors_and_a_restart_run_each_period_exactly_once(supervise, e2e_dsn):
    first: Supervise = supervise(app=APP)
    second: Supervise = supervise(app=APP)
    first.wait_started(ACTORS)
    second.wait_started(ACTORS)
    wait_until(lambda: len(periodic_jobs(e2e_dsn)) >= 3, 20, "three periods run")
    # Kill whichever supervisor holds the leader, then start a new one: the schedule
    # lives in PostgreSQL, so the next leader neither skips nor repeats a period.
    with psycopg.connect(e2e_dsn, autocommit=True) as conn:
        (leader_pid,) = conn.execute("SELECT pid FROM delta_leader").fetchone()  # type: ignore[misc]
    victim = first if leader_pid in {pid for pid, _, _ in first.actors()} else second
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    supervise(app=APP).wait_started(ACTORS)
    before = len(periodic_jobs(e2e_dsn))
    wait_until(lambda: len(periodic_jobs(e2e_dsn)) >= before + 3, 40, "periods after the kill")
    time.sleep(1.0)
    # One snapshot for both reads: the leader keeps enqueueing, and a period that commits
    # between two autocommit reads would show as a job without its run.
    with psycopg.connect(e2e_dsn, autocommit=True) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        runs, last = conn.execute(
            "SELECT runs, last_run_at FROM delta_periodic WHERE name = 'ping-every-second'"
        ).fetchone()  # type: ignore[misc]
        dues = [
            row[0]
            for row in conn.execute(
                "SELECT (regexp_match(unique_key, 'periodic:ping-every-second:(.*)'))[1]"
                "::timestamptz FROM delta_job WHERE kind = 'ping' ORDER BY 1"
            ).fetchall()
        ]
    assert len(dues) == runs, "a run without its job, or a job without its run"
    assert len(set(dues)) == len(dues), "a period enqueued twice"
    for earlier, later in itertools.pairwise(dues):
        assert later - earlier >= timedelta(seconds=1), "two runs within one period"
    assert dues[-1] <= last
    wait_until(
        lambda: all(state == "completed" for _, state in periodic_jobs(e2e_dsn)[:-2]), 20,
        "the periodic jobs to run",
    )  # fmt: skip
