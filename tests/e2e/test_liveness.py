"""Liveness under real `supervise`: health is progress, and every component heals.

The scenario of the original bug: for several seconds the PostgreSQL backends of the
actors' pools, claims and LISTENs are terminated again and again, while the leader's
lease connection is left alone (so the leader keeps its lease throughout). Afterwards
every leader duty must work again within a few intervals (informers run, due jobs are
promoted, dead actors' claims are rescued, heartbeats get through), and no task may have
died unnoticed (the `supervise` fixture fails a test on any unhandled loop error).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

import delta_actors as delta
from tests.e2e.apps import Ping, liveness_app
from tests.waiting import wait_until

APP = "tests.e2e.apps:liveness_app"
ACTORS = 2  # one worker (default), one leader candidate
# Everything of ours but the lease: the leader's pool, the worker's pool (completer and
# heartbeat), its claim connection, its results connection and its LISTEN connection.
KILL_BACKENDS = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND (application_name = 'delta-leader' OR application_name LIKE 'delta-worker-%%'
       OR application_name LIKE 'delta-claim-%%' OR application_name LIKE 'delta-results-%%'
       OR application_name LIKE 'delta-listen-%%')
"""


def _one(dsn: str, query: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    """The one row `query` returns."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None, f"no row for {query}"
    return row


def _beats(dsn: str, what: str, since: datetime) -> int:
    query = "SELECT count(*) FROM e2e_beat WHERE what = %s AND at > %s"
    return int(_one(dsn, query, (what, since))[0])


def _now(dsn: str) -> datetime:
    return _one(dsn, "SELECT clock_timestamp()")[0]  # type: ignore[no-any-return]


def _kill_repeatedly(dsn: str, seconds: float, every: float) -> int:
    """Terminate our components' backends every `every` s for `seconds`; the kills."""
    killed = 0
    deadline = time.monotonic() + seconds
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(KILL_BACKENDS).fetchone()
            killed += int(row[0]) if row else 0
            time.sleep(every)
    return killed


def _leader(dsn: str) -> tuple[int, int, float]:
    """(actor id, term, seconds until the lease expires)."""
    actor, term, expires_in = _one(
        dsn,
        "SELECT actor_id, term, extract(epoch FROM expires_at - now())::float8 FROM delta_leader",
    )
    return int(actor), int(term), float(expires_in)


def _health(dsn: str, actor_id: int) -> tuple[float, dict[str, dict[str, object]]]:
    """(heartbeat age, health by component) of one actor, as its row says."""
    age, health = _one(
        dsn,
        "SELECT extract(epoch FROM now() - heartbeat_at)::float8, health "
        "FROM delta_actor WHERE id = %s",
        (actor_id,),
    )
    return float(age), {h["name"]: h for h in health or []}


def _started_with_informer_running(supervise: Any, dsn: str) -> Any:
    """A supervisor of the liveness app whose informer has run twice."""
    process = supervise(app=APP)
    process.wait_started(ACTORS)
    started = _now(dsn)
    wait_until(lambda: _beats(dsn, "inform", started) >= 2, 30, "the informer to run")
    return process


def test_every_component_recovers_after_its_connections_are_killed_for_seconds(supervise, e2e_dsn):
    dsn = e2e_dsn
    process = _started_with_informer_running(supervise, dsn)
    leader_actor, term, _ = _leader(dsn)

    # Once a second: every pool, claim and LISTEN connection dies again and again, while
    # heartbeats still get through often enough for no actor to be declared dead.
    killed = _kill_repeatedly(dsn, seconds=8.0, every=1.0)
    assert killed >= 16, f"only {killed} backends were terminated"
    kills_ended = _now(dsn)
    # The lease connection was spared: the same leader, the same term, all along.
    assert _leader(dsn)[:2] == (leader_actor, term), "the leader changed during the kills"

    # Promotion: a job due in half a second runs.
    with delta.Client.connect(dsn, app=liveness_app) as client:
        client.enqueue(Ping(), scheduled_at=datetime.now(UTC) + timedelta(seconds=0.5))
    # Rescue: the claim of an actor that stopped heartbeating long ago goes back to work.
    with psycopg.connect(dsn, autocommit=True) as conn:
        dead = conn.execute(
            "INSERT INTO delta_actor (host, pid, namespace, role, heartbeat_at) "
            "VALUES ('gone', 1, 'default', 'worker', now() - interval '1 hour') RETURNING id"
        ).fetchone()
        assert dead is not None
        conn.execute(
            "INSERT INTO delta_job (namespace, kind, args, state, attempt, max_attempts, "
            "claimed_by, attempted_at) "
            "VALUES ('default', 'ping', '{}', 'running', 1, 5, %s, now())",
            (dead[0],),
        )

    # Informers, promotion (the ping ran: claims and completions work again too), rescue
    # (the rescued ping ran as well: two pings) and heartbeats, all within a few intervals.
    wait_until(lambda: _beats(dsn, "inform", kills_ended) >= 2, 15, "the informer after kills")
    wait_until(lambda: _beats(dsn, "ping", kills_ended) >= 2, 15, "promotion and rescue")
    for actor_id in _actor_ids(dsn):
        age, health = _health(dsn, actor_id)
        assert age < 3.0, f"actor {actor_id} heartbeat {age:.1f}s old after the kills"
        stalled = {n: h for n, h in health.items() if h["since_progress"] > h["stall_after"]}
        assert not stalled, f"actor {actor_id} still stalled: {json.dumps(stalled)}"
    _, leader_health = _health(dsn, leader_actor)
    assert {"promoter", "informers", "rescuer", "expirer", "cleaner"} <= set(leader_health)
    assert all(h["restarts"] == 0 for h in leader_health.values()), leader_health
    assert "was never retrieved" not in process.log


def _actor_ids(dsn: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [int(row[0]) for row in conn.execute("SELECT id FROM delta_actor WHERE pid > 1")]


def test_supervise_restarts_a_leader_whose_duty_makes_no_progress(supervise, e2e_dsn):
    """A leader holding the lease while its informers duty is stuck is restarted."""
    dsn = e2e_dsn
    process = _started_with_informer_running(supervise, dsn)
    first_leader, _, _ = _leader(dsn)
    # Another session holds a lock the informers duty needs: every pass blocks on it
    # (and is cancelled after half its stall time) while the lease is renewed as usual.
    release = threading.Event()

    def hold_lock() -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute("LOCK TABLE delta_informer IN ACCESS EXCLUSIVE MODE")
            release.wait(60)

    holder = threading.Thread(target=hold_lock, name="lock-holder")
    holder.start()
    try:
        wait_until(
            lambda: "holds the lease but informers made no progress" in process.log,
            40, "the supervisor to notice the stalled duty",
        )  # fmt: skip
    finally:
        release.set()
        holder.join()
    # The stalled leader stopped (resigning) and a new candidate took over.
    wait_until(lambda: _leader(dsn)[0] != first_leader, 30, "a new leader")
    released = _now(dsn)
    wait_until(lambda: _beats(dsn, "inform", released) >= 1, 15, "the informer to run again")


def test_the_inform_command_runs_an_informer_on_the_leader_of_a_running_supervisor(
    supervise, e2e_dsn
):
    """An hourly informer runs within seconds of `delta-actors inform`, full when asked."""
    dsn = e2e_dsn
    process = _started_with_informer_running(supervise, dsn)
    wait_until(lambda: _ledger_runs(dsn) >= 1, 30, "the ledger informer's first run")
    first = _ledger_runs(dsn)
    cli = [sys.executable, "-c", "from delta_actors.ops.cli import main; main()"]
    asked = subprocess.run([*cli, "inform", "ledger", "--dsn", dsn], capture_output=True,
                           text=True, check=False, timeout=60)  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    wait_until(lambda: _ledger_runs(dsn) == first + 1, 10, "the requested run")
    since = _now(dsn)
    asked = subprocess.run([*cli, "inform", "ledger", "--full", "--dsn", dsn],
                           capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    wait_until(lambda: _beats(dsn, "ledger-full", since) == 1, 10, "the requested full run")
    assert "informer ledger runs on request" in process.log


def _ledger_runs(dsn: str) -> int:
    query = "SELECT count(*) FROM e2e_beat WHERE what IN ('ledger', 'ledger-full')"
    return int(_one(dsn, query)[0])
