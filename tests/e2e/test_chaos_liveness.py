"""The fault harness's liveness sampler: how long a due job has waited for promotion.

A job counts as overdue from when it was both due and committed. A job whose transaction
a slow link held open (a result, or an effect's job, committed seconds after its
`scheduled_at`) was nobody's to promote before its commit, so the leader is not blamed
for that time; once committed, the clock runs, so a promoter that never comes still shows.
The commit time comes from the server's commit timestamps (`track_commit_timestamp`),
which the harness turns on in its own cluster; elsewhere the clock starts at
`scheduled_at`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

import delta_actors as delta
from delta_actors.db.migrations import migrate
from delta_actors.local.cluster import throwaway_cluster
from tests.e2e.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from chaos_app import PROBE_TABLES, Probe, app
from chaos_liveness import COMMIT_TIMESTAMPS, Liveness

DUE_IN = 1.0  # seconds from the enqueue to when the job is due (it is inserted scheduled)
HELD_OPEN = 3.0  # seconds the enqueuing transaction stays open
WAITED = 1.5  # seconds the committed job then waits, with no promoter anywhere


@pytest.fixture
def tracked_dsn(pg_server, delta_dsn) -> Iterator[str]:
    """A migrated database on a server that tracks commit timestamps."""
    if pg_server.cluster is None:
        with psycopg.connect(delta_dsn, autocommit=True) as conn:
            tracked = conn.execute(COMMIT_TIMESTAMPS).fetchone()
        if not (tracked and tracked[0]):
            pytest.skip(
                "$DELTA_TEST_DSN's server does not track commit timestamps:"
                " set track_commit_timestamp = on there (it takes a restart)"
            )
        dsn, cluster = delta_dsn, None
    else:
        cluster = throwaway_cluster()
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
        cluster.restart("fast")
        dsn = cluster.dsn()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn)
            for table in PROBE_TABLES:
                conn.execute(table)  # type: ignore[arg-type]
        yield dsn
    finally:
        if cluster is not None:
            cluster.remove()


def test_a_due_job_is_overdue_from_its_commit_and_stays_overdue_until_promoted(tracked_dsn):
    liveness = Liveness(tracked_dsn)
    scheduled_at = Liveness(tracked_dsn)  # the same sampler, on the scheduled_at clock
    scheduled_at.commit_timestamps = False
    with (
        delta.Client.connect(tracked_dsn, app=app) as client,
        psycopg.connect(tracked_dsn, autocommit=True) as reader,
    ):
        assert liveness.read(reader).promotion_delay == 0.0
        assert liveness.commit_timestamps is True
        with psycopg.connect(tracked_dsn) as writer:  # commits on leaving the block
            due = datetime.now(UTC) + timedelta(seconds=DUE_IN)
            client.enqueue_tx(writer, Probe(due.timestamp()), namespace="alpha", scheduled_at=due)
            time.sleep(HELD_OPEN)
            assert liveness.read(reader).promotion_delay == 0.0  # not visible yet
        assert liveness.read(reader).promotion_delay < 1.0
        assert scheduled_at.read(reader).promotion_delay >= HELD_OPEN - DUE_IN
        time.sleep(WAITED)
        delay = liveness.read(reader).promotion_delay
        assert WAITED <= delay < WAITED + 1.0
        assert scheduled_at.read(reader).promotion_delay >= HELD_OPEN - DUE_IN + WAITED


def test_the_sampler_survives_any_error_and_reports_its_own_bugs_as_violations(delta_dsn):
    """A database error (a fault at work) is counted and the sampler reconnects; any other
    exception is the harness's own bug: the loop goes on, and the report names it."""
    with psycopg.connect(delta_dsn, autocommit=True) as conn:
        for table in PROBE_TABLES:
            conn.execute(table)  # type: ignore[arg-type]
    liveness = Liveness(delta_dsn)
    liveness.commit_timestamps = False
    read = liveness.read
    failures = [psycopg.OperationalError("the link is cut"), RuntimeError("a sampler bug")]

    def failing_read(conn: psycopg.Connection) -> object:
        if failures:
            raise failures.pop(0)
        return read(conn)

    liveness.read = failing_read  # type: ignore[method-assign,assignment]
    liveness.start()
    try:
        deadline = time.monotonic() + 20
        while len(liveness.samples) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        liveness.join()
    assert len(liveness.samples) >= 2  # it went on sampling after both
    assert liveness.database_errors["sampler"] == 1
    assert liveness.harness_errors == ["sampler: RuntimeError('a sampler bug')"]

    def query(sql: str) -> list[tuple[object, ...]]:
        with psycopg.connect(delta_dsn, autocommit=True) as conn:
            return conn.execute(sql).fetchall()  # type: ignore[arg-type]

    section, violations = liveness.check([], query)
    assert violations == ["liveness sampler: RuntimeError('a sampler bug')"]
    assert section["harness_errors"] == ["sampler: RuntimeError('a sampler bug')"]
    assert section["database_errors"]["sampler"] == 1
