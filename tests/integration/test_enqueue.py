"""Enqueueing: transactional inserts and their NOTIFY, bulk order, per-job options, unique keys."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg
import pytest

import delta_actors as delta
from delta_actors.queue.insert import COPY_THRESHOLD, INSERT_CHUNK
from tests.integration.job_table import is_state, job_count, job_states
from tests.integration.workers import running_worker
from tests.waiting import wait_until, wait_until_async


class Note(delta.Job, kind="note"):
    n: int = 0


class Other(delta.Job, kind="other-note"):
    n: int = 0


def listen(dsn: str) -> psycopg.Connection:
    """An autocommit connection listening on the job channel."""
    listener = psycopg.connect(dsn, autocommit=True)
    listener.execute("LISTEN delta_jobs")
    return listener


def payloads(listener: psycopg.Connection, timeout: float) -> list[str]:
    """Every notification that arrives within `timeout` seconds, sorted."""
    return sorted(n.payload for n in listener.notifies(timeout=timeout))


# ---------------------------------------------------------------- transactional insert


def test_enqueue_tx_is_invisible_to_others_until_commit(dsn):
    """A job enqueued in an open transaction is not seen by another connection until commit."""
    with delta.Client.connect(dsn) as client, psycopg.connect(dsn) as conn:
        enqueued = client.enqueue_tx(conn, Note(n=7))
        assert conn.execute("SELECT count(*) FROM delta_job").fetchone() == (1,)
        assert job_count(dsn) == 0
        assert client.get_job(enqueued.id) is None
        conn.commit()
        stored = client.get_job(enqueued.id)
    assert stored is not None
    assert stored.state is delta.JobState.AVAILABLE
    assert msgspec.json.decode(stored.args, type=Note) == Note(n=7)
    assert job_states(dsn) == {"available": 1}


def test_rolled_back_enqueues_leave_no_row_and_no_notification(dsn):
    """enqueue_tx and enqueue_many_tx (every insert path) rolled back: no row, no NOTIFY."""
    with delta.Client.connect(dsn) as client, listen(dsn) as listener:
        with psycopg.connect(dsn) as conn:
            client.enqueue_tx(conn, Note(n=1))
            client.enqueue_tx(conn, Note(n=2), unique_key="rolled-back")
            client.enqueue_many_tx(conn, [Note(n=i) for i in range(10)])
            client.enqueue_many_tx(conn, [Note(n=i) for i in range(COPY_THRESHOLD + 10)])
            conn.rollback()
            # The unique key was never taken: a new job can hold it.
            again = client.enqueue(Note(n=3), unique_key="rolled-back")
        assert not again.duplicate
        assert payloads(listener, 0.3) == ["default"]  # from `again` only
    assert job_states(dsn) == {"available": 1}


def test_notify_is_sent_at_commit_once_per_queue_for_many_jobs(dsn):
    """Jobs of two queues over every insert path (one job, unnest, COPY, unique key) in one
    transaction: one NOTIFY per queue."""
    with delta.Client.connect(dsn) as client, listen(dsn) as listener, psycopg.connect(dsn) as conn:
        for i in range(20):
            client.enqueue_tx(conn, Note(n=i))
        client.enqueue_many_tx(conn, [Note(n=i) for i in range(50)])  # INSERT path
        client.enqueue_many_tx(conn, [Note(n=i) for i in range(COPY_THRESHOLD * 2)])  # COPY
        client.enqueue_tx(conn, Note(), unique_key="k")
        client.enqueue_many_tx(conn, [Other(n=i) for i in range(5)], namespace="billing")
        assert payloads(listener, 0.3) == []
        conn.commit()
        assert payloads(listener, 0.5) == ["billing", "default"]
        assert payloads(listener, 0.2) == []
    assert job_states(dsn) == {"available": 20 + 50 + COPY_THRESHOLD * 2 + 1 + 5}


def test_only_scheduled_jobs_send_no_notification(dsn):
    """A transaction that enqueues only future jobs wakes nobody: nothing is available."""
    later = datetime.now(UTC) + timedelta(hours=1)
    with delta.Client.connect(dsn) as client, listen(dsn) as listener, psycopg.connect(dsn) as conn:
        client.enqueue_tx(conn, Note(), scheduled_at=later)
        client.enqueue_many_tx(conn, [Note()] * (COPY_THRESHOLD + 1), scheduled_at=later)
        conn.commit()
        assert payloads(listener, 0.3) == []
    assert job_states(dsn) == {"scheduled": COPY_THRESHOLD + 2}


@pytest.mark.parametrize(
    "enqueue",
    [
        pytest.param(lambda c, conn: c.enqueue_tx(conn, Note(), unique_key="k"), id="unique-key"),
        pytest.param(
            lambda c, conn: c.enqueue_many_tx(conn, [Note()] * COPY_THRESHOLD), id="copy-batch"
        ),
    ],
)
def test_enqueue_tx_as_the_first_statement_does_not_commit_the_callers_transaction(dsn, enqueue):
    """Every insert path, run first in a fresh transaction, still rolls back with the caller."""
    with delta.Client.connect(dsn) as client, psycopg.connect(dsn) as conn:
        assert conn.info.transaction_status is psycopg.pq.TransactionStatus.IDLE
        enqueue(client, conn)
        assert job_count(dsn) == 0, "the caller's transaction was committed by the enqueue"
        conn.rollback()
    assert job_count(dsn) == 0


async def test_async_enqueue_tx_as_the_first_statement_does_not_commit_the_callers_transaction(
    dsn,
):
    """The AsyncClient twin: a keyed enqueue first in a fresh transaction rolls back with it."""
    client = await delta.AsyncClient.connect(dsn)
    try:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await client.enqueue_tx(conn, Note(), unique_key="k")
            assert job_count(dsn) == 0, "the caller's transaction was committed by the enqueue"
            await conn.rollback()
        assert job_count(dsn) == 0
    finally:
        await client.close()


async def test_async_enqueue_tx_commits_and_rolls_back_with_the_caller(dsn):
    """The AsyncClient twins write in the caller's transaction like the sync ones."""
    client = await delta.AsyncClient.connect(dsn)
    try:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await client.enqueue_tx(conn, Note(n=1))
            await client.enqueue_many_tx(conn, [Note(n=i) for i in range(COPY_THRESHOLD)])
            assert job_count(dsn) == 0
            await conn.rollback()
            kept = await client.enqueue_tx(conn, Note(n=2))
            await conn.commit()
        row = await client.get_job(kept.id)
        assert row is not None and msgspec.json.decode(row.args, type=Note) == Note(n=2)
        assert job_states(dsn) == {"available": 1}
    finally:
        await client.close()


# ---------------------------------------------------------------- bulk insert and options


@pytest.mark.parametrize("unique", [False, True], ids=["copy-path", "insert-path"])
def test_enqueue_many_returns_results_in_input_order_with_ascending_ids(dsn, unique):
    """20,000 jobs: results and ids follow input order, also across statement chunks."""
    count = 20_000
    assert count > INSERT_CHUNK
    jobs: list[delta.Job | delta.JobSpec] = [Note(n=i) for i in range(count)]
    if unique:  # a unique key sends the batch through the chunked INSERT path
        jobs[-1] = delta.JobSpec(Note(n=count - 1), unique_key="last")
    with delta.Client.connect(dsn) as client:
        results = client.enqueue_many(jobs)
    ids = [r.id for r in results]
    assert len(results) == count
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert {(r.kind, r.namespace, r.state, r.duplicate) for r in results} == {
        ("note", "default", delta.JobState.AVAILABLE, False)
    }
    with psycopg.connect(dsn, autocommit=True) as conn:
        stored = conn.execute("SELECT id, args FROM delta_job ORDER BY id").fetchall()
        # All due at once, on the clock of the transaction that wrote them.
        states = conn.execute(
            "SELECT state, scheduled_at = created_at, count(*) FROM delta_job GROUP BY 1, 2"
        ).fetchall()
    assert states == [("available", True, count)]
    decoder = msgspec.json.Decoder(Note)
    assert [row[0] for row in stored] == ids
    assert [decoder.decode(row[1]).n for row in stored] == list(range(count))


@pytest.mark.parametrize("size", [4, COPY_THRESHOLD + 4], ids=["insert-path", "copy-path"])
def test_job_spec_overrides_the_call_defaults_per_job(dsn, size):
    """JobSpec priority, namespace, scheduled_at and max_attempts apply to their job only."""
    later = datetime.now(UTC) + timedelta(hours=1)
    earlier = datetime.now(UTC) - timedelta(hours=1)
    specs: list[delta.Job | delta.JobSpec] = [
        delta.JobSpec(Note(n=0), priority=4, namespace="slow-lane"),
        delta.JobSpec(Note(n=1), scheduled_at=later, max_attempts=3),
        delta.JobSpec(Note(n=2), scheduled_at=earlier),
    ]
    specs += [Note(n=i) for i in range(3, size)]
    with delta.Client.connect(dsn) as client:
        results = client.enqueue_many(specs, priority=2, max_attempts=7)
        rows = [client.get_job(r.id) for r in results[:4]]
    assert [r.state for r in results[:4]] == [
        delta.JobState.AVAILABLE,
        delta.JobState.SCHEDULED,
        delta.JobState.AVAILABLE,
        delta.JobState.AVAILABLE,
    ]
    assert all(rows)
    assert [(r.priority, r.namespace, r.max_attempts, r.state) for r in rows if r] == [
        (4, "slow-lane", 7, delta.JobState.AVAILABLE),
        (2, "default", 3, delta.JobState.SCHEDULED),
        (2, "default", 7, delta.JobState.AVAILABLE),
        (2, "default", 7, delta.JobState.AVAILABLE),
    ]
    assert rows[1] is not None and rows[1].scheduled_at == later
    assert rows[2] is not None and rows[2].scheduled_at == earlier


def test_job_spec_unique_key_applies_to_its_job_only(dsn):
    """A JobSpec unique_key is stored on its job; its neighbours carry none."""
    with delta.Client.connect(dsn) as client:
        results = client.enqueue_many([delta.JobSpec(Note(n=0), unique_key="spec-key"), Note(n=1)])
        rows = [client.get_job(r.id) for r in results]
    assert [r.unique_key for r in rows if r] == ["spec-key", None]


# ---------------------------------------------------------------- unique keys


def test_duplicate_unique_key_returns_the_live_job(dsn):
    """A second enqueue with a live job's key inserts nothing and reports that job."""
    with delta.Client.connect(dsn) as client:
        first = client.enqueue(Note(n=1), unique_key="k")
        again = client.enqueue(Note(n=2), unique_key="k")
        other_kind = client.enqueue(Other(n=3), unique_key="k")  # keys are per kind
        stored = client.get_job(first.id)
    assert (first.duplicate, again.duplicate, other_kind.duplicate) == (False, True, False)
    assert again.id == first.id
    assert again.state is delta.JobState.AVAILABLE
    assert stored is not None and msgspec.json.decode(stored.args, type=Note) == Note(n=1)
    assert job_states(dsn) == {"available": 2}


def test_duplicates_within_one_batch_and_against_live_jobs(dsn):
    """In one batch, a repeated key and a key a live job holds all resolve to one job each."""
    with delta.Client.connect(dsn) as client:
        live = client.enqueue(Note(n=0), unique_key="live")
        batch = client.enqueue_many(
            [
                delta.JobSpec(Note(n=1), unique_key="b"),
                Note(n=2),
                delta.JobSpec(Note(n=3), unique_key="b"),
                delta.JobSpec(Note(n=4), unique_key="live"),
                delta.JobSpec(Note(n=5), unique_key="c"),
            ]
        )
    assert [r.duplicate for r in batch] == [False, False, True, True, False]
    assert batch[2].id == batch[0].id
    assert batch[3].id == live.id
    assert len({batch[0].id, batch[1].id, batch[4].id, live.id}) == 4
    assert job_states(dsn) == {"available": 4}


async def test_a_finished_unique_job_frees_its_key(dsn):
    """Once the keyed job completes (or is cancelled), the same key inserts a new job."""

    async def noop(job: Note) -> None:
        return None

    app = delta.App(jobs={Note: noop})
    client = await delta.AsyncClient.connect(dsn)
    try:
        first = await client.enqueue(Note(), unique_key="once")
        async with running_worker(app, dsn):
            await wait_until_async(lambda: is_state(client, first.id, delta.JobState.COMPLETED))
        second = await client.enqueue(Note(), unique_key="once")
        assert not second.duplicate
        assert second.id != first.id
        await client.cancel_job(second.id)
        third = await client.enqueue(Note(), unique_key="once")
        assert not third.duplicate
        assert third.id not in {first.id, second.id}
        assert job_states(dsn) == {"completed": 1, "cancelled": 1, "available": 1}
    finally:
        await client.close()


def _blocked_on_lock(dsn: str, pid: int) -> bool:
    with psycopg.connect(dsn, autocommit=True) as admin:
        row = admin.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
    return row is not None and row[0] == "Lock"


@pytest.mark.parametrize("first_commits", [True, False], ids=["commit", "rollback"])
def test_concurrent_transactions_with_one_unique_key_make_one_live_job(dsn, first_commits):
    """The second waits; then gets the first's job if it committed, or its own if not."""
    results: list[delta.EnqueuedJob] = []
    errors: list[BaseException] = []
    with (
        delta.Client.connect(dsn) as client,
        psycopg.connect(dsn) as first_conn,
        psycopg.connect(dsn) as second_conn,
    ):
        # Each transaction writes something of its own first, as an application would.
        for own in (first_conn, second_conn):
            own.execute("SELECT txid_current()")
        first = client.enqueue_tx(first_conn, Note(n=1), unique_key="race")

        def second() -> None:
            try:
                results.append(client.enqueue_tx(second_conn, Note(n=2), unique_key="race"))
                second_conn.commit()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        try:
            wait_until(
                lambda: _blocked_on_lock(dsn, second_conn.info.backend_pid),
                what="the second insert to wait on the first's key",
            )
        finally:
            if first_commits:
                first_conn.commit()
            else:
                first_conn.rollback()
            thread.join(10)
        assert not thread.is_alive()
        assert errors == []
        rows = [client.get_job(first.id), client.get_job(results[0].id)]
    if first_commits:
        assert results[0].duplicate
        assert results[0].id == first.id
    else:
        assert not results[0].duplicate
        assert results[0].id != first.id
        assert rows[0] is None
    live = rows[1]
    assert live is not None and live.unique_key == "race"
    assert job_states(dsn) == {"available": 1}


# ---------------------------------------------------------------- a job type's namespace


class Mail(delta.Job, kind="mail-job", namespace="mail"):
    to: str = ""


def test_a_job_type_that_declares_its_namespace_goes_there_unless_told_otherwise(dsn):
    """`namespace=` on the Job class is enqueue's default, also per type within a batch."""
    with delta.Client.connect(dsn) as client:
        assert client.enqueue(Mail()).namespace == "mail"
        assert client.enqueue(Note()).namespace == "default"
        # Without an app there is nothing to check an explicit namespace against.
        assert client.enqueue(Mail(), namespace="elsewhere").namespace == "elsewhere"
        mixed = client.enqueue_many([Mail(), Note(), delta.JobSpec(Mail(), priority=2), Mail()])
        assert [job.namespace for job in mixed] == ["mail", "default", "mail", "mail"]
    with psycopg.connect(dsn) as conn:
        queues = conn.execute(
            "SELECT namespace, count(*) FROM delta_job GROUP BY namespace ORDER BY namespace"
        ).fetchall()
    assert queues == [("default", 2), ("elsewhere", 1), ("mail", 4)]


def test_a_client_with_an_app_refuses_a_job_outside_its_declared_namespace(dsn):
    app = delta.App(
        jobs={Mail: lambda job: None, Note: lambda job: None},
        namespaces={"default": delta.Namespace(), "mail": delta.Namespace()},
    )
    with delta.Client.connect(dsn, app=app) as client:
        assert client.enqueue(Mail()).namespace == "mail"
        with pytest.raises(delta.ConfigError, match=r"'mail-job' runs in namespace 'mail'"):
            client.enqueue(Mail(), namespace="default")
        with pytest.raises(delta.ConfigError, match="runs in namespace 'mail'"):
            client.enqueue_many([Note(), delta.JobSpec(Mail(), namespace="default")])
    without_mail = delta.App(jobs={Mail: lambda job: None})
    with (
        delta.Client.connect(dsn, app=without_mail) as client,
        pytest.raises(delta.UnknownNamespaceError, match="mail"),
    ):
        client.enqueue(Mail())
    assert job_count(dsn) == 1, "a refused call wrote nothing"


def test_namespace_is_refused_on_objects_and_checked_on_jobs_at_class_creation():
    with pytest.raises(delta.ConfigError, match="controller's"):

        class Placed(delta.Object, kind="placed", namespace="elsewhere"):  # type: ignore[call-arg]
            key: str

            def id(self) -> str:
                return self.key

    with pytest.raises(delta.ConfigError, match="namespace of Bad"):

        class Bad(delta.Job, kind="bad", namespace="Not A Name"):
            pass
