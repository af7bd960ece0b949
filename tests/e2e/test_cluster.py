"""End to end: several supervisors on one database, one leader among them."""

from __future__ import annotations

import os
import signal
import time

import psycopg

import delta_actors as delta
from tests.e2e.apps import Task
from tests.e2e.test_supervise import ACTORS, runs, states
from tests.waiting import wait_until


def leader(dsn: str) -> tuple[int, int, int, bool] | None:
    """(actor_id, pid, term, unexpired) of the lease, or None."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT actor_id, pid, term, expires_at > now() FROM delta_leader"
        ).fetchone()
    return tuple(row) if row else None  # type: ignore[return-value]


def test_sigkill_of_the_leader_hands_over_within_one_ttl(supervise, e2e_dsn):
    """The leader's process dies without resigning: another candidate leads within the TTL."""
    ttl = 3.0
    first = supervise("--lease-ttl", str(ttl))
    second = supervise("--lease-ttl", str(ttl))
    first.wait_started(ACTORS)
    second.wait_started(2 * ACTORS)
    wait_until(lambda: leader(e2e_dsn) is not None, 10, "a leader")
    before = leader(e2e_dsn)
    assert before is not None
    killed_at = time.monotonic()
    os.kill(before[1], signal.SIGKILL)
    wait_until(
        lambda: (now := leader(e2e_dsn)) is not None and now[2] > before[2] and now[3],
        ttl + 5,
        "a new term",
    )
    # The lease of the dead leader had up to one TTL left; candidates try every ttl/3.
    assert time.monotonic() - killed_at < ttl + ttl / 3 + 1.5


def test_three_supervisors_share_the_work_with_one_leader(supervise, e2e_dsn):
    """Three supervisors: every resource synced once, work spread, one stable leader."""
    processes = [supervise() for _ in range(3)]
    for count, process in enumerate(processes, start=1):
        process.wait_started(count * ACTORS)
    wait_until(lambda: leader(e2e_dsn) is not None, 10, "a leader")
    term = leader(e2e_dsn)[2]  # type: ignore[index]
    with delta.Client.connect(e2e_dsn) as client:
        client.inform_many([Task(key=f"s{i}", seconds=0.02) for i in range(300)])
    wait_until(lambda: states(e2e_dsn).get("synced") == 300, 60, "300 synced resources")
    all_runs = runs(e2e_dsn)
    assert len({(kind, key) for kind, key, *_ in all_runs}) == 300
    workers = {pid for process in processes for pid, ns, _ in process.actors() if ns == "default"}
    assert len(workers) == 3
    assert len({pid for *_, pid, _, _ in all_runs}) >= 2  # the work was shared
    with psycopg.connect(e2e_dsn, autocommit=True) as conn:
        leaders = conn.execute("SELECT count(*) FROM delta_actor WHERE role = 'leader'")
        assert leaders.fetchone() == (3,)  # three candidates ...
    assert leader(e2e_dsn)[2] == term  # type: ignore[index]  # ... one leader, never replaced
