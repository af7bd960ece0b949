"""End to end: `supervise --pool-mode transaction` behind a real PgBouncer."""

from __future__ import annotations

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
