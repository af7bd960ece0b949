"""End to end: real `delta-actors supervise` processes, real signals, a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg

import delta_actors as delta
from tests.e2e.apps import Report, Sabotage, Task
from tests.e2e.conftest import ROOT
from tests.waiting import wait_until

# workers: default x1, reports x2; plus the leader
ACTORS = 4


def states(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT state::text, count(*) FROM delta_resource GROUP BY 1")
        return dict(rows.fetchall())


def runs(dsn: str) -> list[tuple[str, str, int, int, float, float | None]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT kind, object_id, generation, pid, started_at, ended_at FROM e2e_run ORDER BY id"
        ).fetchall()


def worker_pids(process, namespace: str) -> set[int]:
    return {pid for pid, ns, role in process.actors() if ns == namespace and role == "worker"}


def test_work_flows_through_the_namespace_actors(supervise, e2e_dsn):
    """Resources of two namespaces are worked by their own actor processes and synced."""
    process = supervise()
    process.wait_started(ACTORS)
    with delta.Client.connect(e2e_dsn) as client:
        client.inform_many([Task(key=f"t{i}") for i in range(100)])
        client.inform_many([Report(key=f"r{i}") for i in range(100)], namespace="reports")
    wait_until(lambda: states(e2e_dsn).get("synced") == 200, 30, "200 synced resources")
    by_kind: dict[str, set[int]] = {}
    for kind, _, _, pid, _, _ in runs(e2e_dsn):
        by_kind.setdefault(kind, set()).add(pid)
    assert by_kind["task"] <= worker_pids(process, "default")
    assert by_kind["report"] <= worker_pids(process, "reports")
    assert len(worker_pids(process, "reports")) == 2
    assert os.getpid() not in by_kind["task"]


def test_sigkilled_actor_is_restarted_and_its_work_redone(supervise, e2e_dsn):
    """SIGKILL of a worker mid-work: a new actor replaces it and the work runs again."""
    process = supervise()
    process.wait_started(ACTORS)
    with delta.Client.connect(e2e_dsn) as client:
        client.inform(Task(key="slow", seconds=2.0))
        wait_until(lambda: len(runs(e2e_dsn)) == 1, 10, "the work to start")
        victim = runs(e2e_dsn)[0][3]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: worker_pids(process, "default") - {victim}, 15, "a replacement actor")
        wait_until(lambda: states(e2e_dsn).get("synced") == 1, 20, "the work redone")
        resource = client.get(Task, "slow")
    all_runs = runs(e2e_dsn)
    assert all_runs[0][3] == victim and all_runs[0][5] is None  # killed mid-run
    assert all_runs[-1][3] != victim and all_runs[-1][5] is not None
    assert resource is not None and resource.state is delta.State.SYNCED
    assert any("rescued: actor" in e.error for e in resource.errors)
    assert "ended with signal SIGKILL" in process.log


def test_sigterm_drains_within_the_deadline(supervise, e2e_dsn):
    """SIGTERM: running works finish, the supervisor exits 0 and nothing stays claimed."""
    process = supervise("--shutdown-timeout", "10")
    process.wait_started(ACTORS)
    with delta.Client.connect(e2e_dsn) as client:
        client.inform_many([Task(key=f"d{i}", seconds=1.0) for i in range(5)])
        wait_until(lambda: len(runs(e2e_dsn)) == 5, 10, "five works running")
    started = time.monotonic()
    process.signal(signal.SIGTERM)
    assert process.wait(15) == 0
    assert time.monotonic() - started < 10
    assert states(e2e_dsn) == {"synced": 5}
    assert all(end is not None for *_, end in runs(e2e_dsn))
    assert process.actors() == []


def test_sigterm_hands_back_works_past_the_deadline(supervise, e2e_dsn):
    """A work still running at the shutdown deadline is handed back, not counted as failed."""
    process = supervise("--shutdown-timeout", "1")
    process.wait_started(ACTORS)
    with delta.Client.connect(e2e_dsn) as client:
        client.inform(Task(key="long", seconds=30.0))
        wait_until(lambda: len(runs(e2e_dsn)) == 1, 10, "the work to start")
        process.signal(signal.SIGTERM)
        assert process.wait(15) == 0
        resource = client.get(Task, "long")
    assert resource is not None
    assert resource.attempt == 0 and resource.state is delta.State.SCHEDULED
    with psycopg.connect(e2e_dsn, autocommit=True) as conn:
        queued = conn.execute(
            "SELECT count(*) FROM delta_job WHERE state IN ('available', 'scheduled')"
        ).fetchone()
    assert queued == (1,)


def test_second_signal_stops_at_once(supervise, e2e_dsn):
    """A second SIGTERM kills the actors at once; rescue returns their claims."""
    process = supervise("--shutdown-timeout", "60")
    process.wait_started(ACTORS)
    with delta.Client.connect(e2e_dsn) as client:
        client.inform(Task(key="stuck", seconds=60.0))
        wait_until(lambda: len(runs(e2e_dsn)) == 1, 10, "the work to start")
        process.signal(signal.SIGTERM)
        time.sleep(0.3)  # let the first signal be handled before the second
        process.signal(signal.SIGTERM)
        assert process.wait(15) != 0
        assert "(a second SIGTERM stops at once)" in process.log
        stuck = client.get(Task, "stuck")
        assert stuck is not None
        assert stuck.attempt == 0, "a work we killed ourselves did not fail"
        assert stuck.errors == []
    with psycopg.connect(e2e_dsn, autocommit=True) as conn:
        running = conn.execute("SELECT count(*) FROM delta_job WHERE state = 'running'")
        assert running.fetchone() == (0,)


def test_two_signals_at_once_are_one_graceful_stop(supervise, e2e_dsn):
    """A process group signalled twice in a row (as `timeout` does) stops gracefully."""
    process = supervise("--shutdown-timeout", "60")
    process.wait_started(ACTORS)
    with delta.Client.connect(e2e_dsn) as client:
        client.inform(Task(key="short", seconds=1.5))
        wait_until(lambda: len(runs(e2e_dsn)) == 1, 10, "the work to start")
        process.signal(signal.SIGTERM)
        process.signal(signal.SIGTERM)
        assert process.wait(20) == 0, process.log
        short = client.get(Task, "short")
        assert short is not None
        assert short.state is delta.State.SYNCED


def test_hung_actor_is_killed_and_replaced(supervise, e2e_dsn):
    """An actor that stops heartbeating (SIGSTOP) is killed and its work done by another."""
    process = supervise()
    process.wait_started(ACTORS)
    with delta.Client.connect(e2e_dsn) as client:
        client.inform(Task(key="paused", seconds=1.0))
        wait_until(lambda: len(runs(e2e_dsn)) == 1, 10, "the work to start")
        victim = runs(e2e_dsn)[0][3]
        os.kill(victim, signal.SIGSTOP)
        wait_until(lambda: "hung: no heartbeat" in process.log, 15, "the hang to be noticed")
        wait_until(lambda: states(e2e_dsn).get("synced") == 1, 20, "the work redone")
    assert runs(e2e_dsn)[-1][3] != victim


def test_corrupt_pipe_frame_restarts_the_actor(supervise, e2e_dsn):
    """Garbage on an actor's pipe is reported and the actor replaced; work continues."""
    process = supervise()
    process.wait_started(ACTORS)
    before = worker_pids(process, "default")
    with delta.Client.connect(e2e_dsn) as client:
        client.enqueue(Sabotage(), max_attempts=1)  # rescued once, then discarded
        wait_until(lambda: "corrupt frame from actor" in process.log, 15, "the report")
        wait_until(lambda: worker_pids(process, "default") - before, 15, "a new actor")
        client.inform(Task(key="after"))
        wait_until(lambda: states(e2e_dsn).get("synced") == 1, 15, "work after the restart")


def test_orphaned_actors_stop_when_the_supervisor_dies(supervise, e2e_dsn):
    """SIGKILL of the supervisor: its actors notice the closed pipe and exit."""
    process = supervise()
    process.wait_started(ACTORS)
    pids = [pid for pid, _, _ in process.actors()]
    process.proc.kill()
    process.proc.wait()

    def all_gone() -> bool:
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            try:  # a zombie of init is gone for our purposes
                with open(f"/proc/{pid}/stat") as stat:
                    if stat.read().split()[2] == "Z":
                        continue
            except FileNotFoundError:
                continue
            return False
        return True

    wait_until(all_gone, 20, f"orphaned actors {pids} to exit; log:\n{process.log[-3000:]}")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from delta_actors.ops.cli import main; main()", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )  # fmt: skip


def test_bad_app_path_exits_with_a_message(e2e_dsn):
    """A module that does not import, or an attribute that is not an App, names the fix."""
    missing = run_cli("supervise", "--app", "no_such_module:app", "--dsn", e2e_dsn)
    assert missing.returncode != 0
    assert "cannot import module 'no_such_module'" in missing.stderr
    wrong = run_cli("supervise", "--app", "tests.e2e.apps:Task", "--dsn", e2e_dsn)
    assert wrong.returncode != 0 and "not a delta.App" in wrong.stderr
    shape = run_cli("supervise", "--app", "tests.e2e.apps", "--dsn", e2e_dsn)
    assert shape.returncode != 0 and "module:attr" in shape.stderr


def test_unreachable_dsn_exits_with_a_message(tmp_path):
    """A DSN that does not connect fails before anything is forked, password redacted."""
    dsn = f"postgresql://someone:s3cret@/nodb?host={tmp_path}&port=1"
    result = run_cli("supervise", "--app", "tests.e2e.apps:app", "--dsn", dsn)
    assert result.returncode != 0
    assert "cannot use PostgreSQL" in result.stderr
    assert "s3cret" not in result.stderr


def test_unmigrated_schema_names_migrate(empty_dsn):
    """An empty database: supervise refuses and names `delta-actors migrate`."""
    result = run_cli("supervise", "--app", "tests.e2e.apps:app", "--dsn", empty_dsn)
    assert result.returncode != 0
    assert "delta-actors migrate" in result.stderr


def test_a_hang_timeout_the_rescue_ttl_cannot_cover_is_refused(e2e_dsn):
    """A paused actor must be killed before rescue hands its work to another actor."""
    result = run_cli(
        "supervise", "--app", "tests.e2e.apps:app", "--dsn", e2e_dsn,
        "--heartbeat-interval", "2", "--hang-timeout", "15", "--rescue-ttl", "10",
    )  # fmt: skip
    assert result.returncode == 2
    assert "--hang-timeout 5 or less, or a longer --rescue-ttl" in result.stderr
