"""End to end: `supervise --pool-mode transaction` behind a real PgBouncer."""

from __future__ import annotations

import signal
import time

import psycopg

import delta_actors as delta
from tests.e2e.apps import Report, Task
from tests.e2e.conftest import Supervise
from tests.e2e.test_supervise import ACTORS, states
from tests.waiting import wait_until

FAILURES = ("claim_failed", "heartbeat_failed", "ended with", "crash loop", "Traceback")


def test_supervise_behind_a_transaction_pooler_syncs_without_a_failed_claim(
    e2e_dsn, transaction_bouncer, tmp_path
):
    """Every actor's connections go through PgBouncer's 4 server connections, shared."""
    through = transaction_bouncer.dsn(e2e_dsn)
    process = Supervise(through, tmp_path, "--pool-mode", "transaction")
    try:
        process.wait_started(ACTORS)
        declared = f"{through} delta_pool_mode=transaction"
        with delta.Client.connect(declared) as client:
            for start in range(0, 60, 10):
                client.inform_many([Task(key=f"t{i}") for i in range(start, start + 10)])
                client.inform_many(
                    [Report(key=f"r{i}") for i in range(start, start + 10)], namespace="reports"
                )
        wait_until(lambda: states(e2e_dsn).get("synced") == 120, 30, "120 synced resources")
    finally:
        process.stop()
    assert process.proc.returncode == 0, process.log
    failures = [line for line in process.log.splitlines() if any(f in line for f in FAILURES)]
    assert not failures, "\n".join(failures)
    assert "workers poll every 0.2s" in process.log
    with psycopg.connect(e2e_dsn, autocommit=True) as conn:
        claimed = conn.execute("SELECT count(*) FROM delta_job WHERE state = 'running'")
        assert claimed.fetchone() == (0,)


def test_supervise_behind_a_transaction_pooler_listens_on_its_listen_dsn(
    e2e_dsn, transaction_bouncer, tmp_path
):
    """`--listen-dsn` reaches every worker actor: each LISTENs on the direct connection
    (through the transaction pooler nothing may LISTEN), and work still flows."""
    through = transaction_bouncer.dsn(e2e_dsn)
    process = Supervise(
        through, tmp_path, "--pool-mode", "transaction", "--listen-dsn", e2e_dsn
    )  # fmt: skip
    try:
        process.wait_started(ACTORS)
        workers = {namespace for _, namespace, role in process.actors() if role != "leader"}
        expected = {f"delta-listen-{namespace}" for namespace in workers}
        wait_until(lambda: listening(e2e_dsn) == expected, 30, f"LISTENs of {sorted(expected)}")
        with delta.Client.connect(f"{through} delta_pool_mode=transaction") as client:
            client.inform_many([Task(key=f"t{i}") for i in range(20)])
        wait_until(lambda: states(e2e_dsn).get("synced") == 20, 30, "20 synced resources")
    finally:
        process.stop()
    assert process.proc.returncode == 0, process.log
    assert "actors LISTEN on the listen DSN" in process.log
    failures = [line for line in process.log.splitlines() if any(f in line for f in FAILURES)]
    assert not failures, "\n".join(failures)


def listening(dsn: str) -> set[str]:
    """application_name of each worker's listener session of this database that LISTENs."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'delta-listen-%'"
            " AND query LIKE 'LISTEN %'"
        ).fetchall()
    return {row[0] for row in rows}


def test_a_stop_while_queries_wait_behind_a_pooler_leaves_the_pooler_up(
    e2e_dsn, session_bouncer, tmp_path
):
    """SIGTERM while six workers' queries wait on a lock: each is cancelled once.

    A second cancellation interrupts psycopg's cancel request and closes the connection
    with that request in flight, which PgBouncer 1.18 does not survive in either pool mode
    (cancellation.py): every client of the pooler would lose it. In session mode each
    query is on a server connection of its own, so each waits in the server when the stop
    cancels it. The fixture checks PgBouncer after the test.
    """
    through = session_bouncer.dsn(e2e_dsn)
    process = Supervise(through, tmp_path, app="tests.e2e.apps:crowded_app")
    try:
        process.wait_started(7)
        with psycopg.connect(e2e_dsn) as locker:  # direct, not through PgBouncer
            locker.execute("LOCK TABLE delta_job IN ACCESS EXCLUSIVE MODE")
            wait_until(lambda: lock_waiters(e2e_dsn) >= 6, 10, "6 queries waiting on the lock")
            process.signal(signal.SIGTERM)
            time.sleep(1.0)  # the stop cancels the waiting queries meanwhile
        code = process.wait(30)
    finally:
        process.stop()
    assert code == 0, process.log
    assert "query cancellation interrupted" not in process.log, process.log


def lock_waiters(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE relation = 'delta_job'::regclass AND NOT granted"
        ).fetchone()
    return int(row[0]) if row else 0
