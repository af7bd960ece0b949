"""`delta-actors supervise` under hostile conditions (issue 6): a truncated pipe frame, a
work that floods the log, a wrong password, a database that runs out of connections."""

from __future__ import annotations

from pathlib import Path

import psycopg

import delta_actors as delta
from tests.e2e.apps import Task
from tests.e2e.conftest import Supervise
from tests.e2e.hostile_apps import Flood, Truncate
from tests.e2e.test_supervise import run_cli, states, worker_pids
from tests.roles import PASSWORD
from tests.waiting import wait_until

APP = "tests.e2e.hostile_apps:app"
ACTORS = 3  # default, reports, leader


def synced(dsn: str) -> int:
    return states(dsn).get("synced", 0)


def test_a_truncated_frame_gets_its_actor_replaced(supervise, e2e_dsn):
    """An actor that sends the start of a frame and never its end is deaf to the
    supervisor however many bytes follow: it is killed as hung, naming the unfinished
    frame, and replaced; work goes on."""
    process = supervise(app=APP)
    process.wait_started(ACTORS)
    before = worker_pids(process, "default")
    with delta.Client.connect(e2e_dsn) as client:
        client.enqueue(Truncate(), max_attempts=1)
        wait_until(lambda: "bytes of an unfinished frame" in process.log, 20, "the report")
        wait_until(lambda: worker_pids(process, "default") - before, 15, "a new actor")
        client.inform(Task(key="after"))
        wait_until(lambda: synced(e2e_dsn) == 1, 15, "work after the restart")


def test_a_work_flooding_the_log_leaves_its_actor_responsive(supervise, e2e_dsn):
    """A plain def logging as fast as it can for longer than the hang timeout: the actor
    keeps heartbeating (not killed), and runs other works meanwhile."""
    process = supervise(app=APP)
    process.wait_started(ACTORS)
    before = worker_pids(process, "default")
    with delta.Client.connect(e2e_dsn) as client:
        client.inform(Flood(key="flood", seconds=5.0))
        wait_until(lambda: "flood xxx" in process.log, 10, "the flood to start")
        client.inform_many([Task(key=f"t{n}") for n in range(5)])
        wait_until(lambda: synced(e2e_dsn) == 5, 10, "works during the flood")
        assert "flood done" not in process.log  # they ran during it
        wait_until(lambda: synced(e2e_dsn) == 6, 20, "the flood to finish")
    assert "hung" not in process.log
    assert worker_pids(process, "default") == before


def test_a_wrong_password_fails_supervise_without_showing_it(role, e2e_dsn):
    """supervise with a wrong password, by --dsn or $DELTA_DATABASE_URL: non-zero exit,
    PostgreSQL's reason, and the password nowhere in the output."""
    wrong = "Wr0ng-Staple-2291"
    by_flag = run_cli("supervise", "--app", APP, "--dsn", role.dsn(wrong))
    by_env = run_cli("supervise", "--app", APP, env={"DELTA_DATABASE_URL": role.dsn(wrong)})
    for result in (by_flag, by_env):
        assert result.returncode != 0
        assert "password authentication failed" in result.stderr
        assert "Traceback" not in result.stderr
        assert wrong not in result.stdout + result.stderr
        assert PASSWORD not in result.stdout + result.stderr


def test_running_out_of_connections_is_reported_and_recovered(role, e2e_dsn, tmp_path: Path):
    """Every session of the runtime dies while PostgreSQL refuses new ones: the failures
    are logged with PostgreSQL's reason, the runtime keeps going, and once connections
    are allowed again the change made meanwhile is worked; nothing is lost."""
    role.grant()  # e2e_run exists now
    process = Supervise(role.dsn(PASSWORD), tmp_path, app=APP)
    try:
        process.wait_started(ACTORS)
        with delta.Client.connect(e2e_dsn) as client:
            client.inform(Task(key="before"))
            wait_until(lambda: synced(e2e_dsn) == 1, 15, "the first work")
            role.set_connection_limit(0)
            role.terminate_sessions()
            client.inform(Task(key="during"))
            wait_until(lambda: "too many connections" in process.log, 20, "the refusal logged")
            assert synced(e2e_dsn) == 1
            role.set_connection_limit(-1)
            wait_until(lambda: synced(e2e_dsn) == 2, 60, f"recovery; log:\n{process.log[-3000:]}")
        assert process.proc.poll() is None
        with psycopg.connect(e2e_dsn, autocommit=True) as conn:
            worked = conn.execute("SELECT DISTINCT object_id FROM e2e_run ORDER BY 1").fetchall()
        assert worked == [("before",), ("during",)]
    finally:
        process.stop()
