"""The job queue: enqueue, claim, run, complete, retry, snooze, cancel, schedule, stop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg
import pytest

import delta_actors as delta
from delta_actors.queue.retry import retry_delay
from tests.integration.workers import running_worker
from tests.waiting import wait_until, wait_until_async


class Note(delta.Job, kind="note"):
    n: int = 0


class Slow(delta.Job, kind="slow", timeout=0.3):
    seconds: float = 5.0


class Blocking(delta.Job, kind="blocking"):
    seconds: float = 2.0


def job_states(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return dict(conn.execute("SELECT state::text, count(*) FROM delta_job GROUP BY 1"))


# ---------------------------------------------------------------- enqueue


def test_enqueue_tx_is_invisible_until_commit_and_rollback_leaves_nothing(dsn):
    """A job enqueued in a transaction appears at commit; a rolled-back one never does."""
    with delta.Client.connect(dsn) as client, psycopg.connect(dsn) as conn:
        client.enqueue_tx(conn, Note(n=1))
        assert job_states(dsn) == {}
        conn.rollback()
        assert job_states(dsn) == {}
        job = client.enqueue_tx(conn, Note(n=2))
        conn.commit()
        stored = client.get_job(job.id)
    assert stored is not None
    assert msgspec.json.decode(stored.args, type=Note) == Note(n=2)
    assert job_states(dsn) == {"available": 1}


def test_one_notification_per_queue_per_transaction_at_commit(dsn):
    """Many jobs in one transaction: one NOTIFY per queue, delivered only at commit."""
    with (
        delta.Client.connect(dsn) as client,
        psycopg.connect(dsn, autocommit=True) as listener,
        psycopg.connect(dsn) as conn,
    ):
        listener.execute("LISTEN delta_jobs")
        for i in range(50):
            client.enqueue_tx(conn, Note(n=i))
        client.enqueue_many_tx(conn, [Note(n=i) for i in range(500)])
        client.enqueue_tx(conn, Note(), namespace="other")
        assert list(listener.notifies(timeout=0.2)) == []
        conn.commit()
        payloads = sorted(n.payload for n in listener.notifies(timeout=0.5))
    assert payloads == ["default", "other"]


def test_enqueue_many_keeps_input_order_and_per_job_options(dsn):
    """20,000 jobs come back in input order; JobSpec overrides take effect per job."""
    later = datetime.now(UTC) + timedelta(hours=1)
    with delta.Client.connect(dsn) as client:
        results = client.enqueue_many([Note(n=i) for i in range(20_000)])
        assert [r.id for r in results] == sorted(r.id for r in results)
        assert all(r.state is delta.JobState.AVAILABLE for r in results)
        specs = client.enqueue_many(
            [
                delta.JobSpec(Note(n=1), priority=4, namespace="slow-lane"),
                delta.JobSpec(Note(n=2), scheduled_at=later, max_attempts=3),
                Note(n=3),
            ]
        )
        rows = [client.get_job(r.id) for r in specs]
    assert [r.priority for r in rows if r] == [4, 1, 1]
    assert [r.namespace for r in rows if r] == ["slow-lane", "default", "default"]
    assert rows[1] is not None and rows[1].state is delta.JobState.SCHEDULED
    assert rows[1].max_attempts == 3
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM delta_job").fetchone() == (20_003,)


def test_unique_key_reports_the_live_job_instead_of_failing(dsn):
    """A duplicate unique key returns the existing job, also inside one batch."""
    with delta.Client.connect(dsn) as client:
        first = client.enqueue(Note(n=1), unique_key="k")
        again = client.enqueue(Note(n=2), unique_key="k")
        batch = client.enqueue_many(
            [delta.JobSpec(Note(), unique_key="b"), delta.JobSpec(Note(), unique_key="b")]
        )
    assert not first.duplicate
    assert again.duplicate
    assert again.id == first.id
    assert [r.duplicate for r in batch] == [False, True]
    assert batch[0].id == batch[1].id
    assert job_states(dsn) == {"available": 2}


async def test_unique_key_frees_once_the_job_finishes(dsn):
    """After the keyed job completes, the same key enqueues a new job."""
    app = delta.App(jobs={Note: _noop})
    client = await delta.AsyncClient.connect(dsn, app=app)
    try:
        first = await client.enqueue(Note(), unique_key="once")
        async with running_worker(app, dsn):
            await wait_until_async(lambda: _is_state(client, first.id, "completed"), 5)
        second = await client.enqueue(Note(), unique_key="once")
        assert not second.duplicate
        assert second.id != first.id
    finally:
        await client.close()


def test_concurrent_unique_enqueues_make_one_job(dsn):
    """Two transactions enqueueing the same key at once: one job, both told its id."""
    ids: list[int] = []
    barrier = threading.Barrier(2)

    def enqueue() -> None:
        with delta.Client.connect(dsn) as client, psycopg.connect(dsn) as conn:
            barrier.wait()
            ids.append(client.enqueue_tx(conn, Note(), unique_key="race").id)
            time.sleep(0.1)
            conn.commit()

    threads = [threading.Thread(target=enqueue) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1
    assert job_states(dsn) == {"available": 1}


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"namespace": "Bad"}, "invalid namespace 'Bad'"),
        ({"namespace": "x" * 64}, "64 characters"),
        ({"namespace": "x'; drop table delta_job; --"}, "invalid namespace"),
        ({"priority": 0}, "priority must be 1"),
        ({"max_attempts": 0}, "max_attempts must be"),
        ({"scheduled_at": datetime(2030, 1, 1)}, "no time zone"),
    ],
)
def test_bad_enqueue_options_raise_clear_errors_and_write_nothing(dsn, kwargs, needle):
    """Each bad option raises a ConfigError naming it, before anything is written."""
    with delta.Client.connect(dsn) as client, pytest.raises(delta.ConfigError, match=needle):
        client.enqueue(Note(), **kwargs)
    assert job_states(dsn) == {}


def test_unencodable_job_and_unknown_kind_are_rejected(dsn):
    """A job that does not encode, or a kind the app lacks, fails the whole batch."""

    class Odd(delta.Job, kind="odd"):
        value: object = None

    app = delta.App(jobs={Note: _noop}, namespaces={"default": delta.Namespace()})
    with delta.Client.connect(dsn, app=app) as client:
        with pytest.raises(delta.EncodeError, match="kind 'odd' does not encode"):
            delta.Client.connect(dsn).enqueue_many([Note(), Odd(value=object())])
        with pytest.raises(delta.UnknownKindError, match=r"'odd' \(registered: note\)"):
            client.enqueue(Odd())
        with pytest.raises(delta.UnknownNamespaceError, match="'elsewhere'"):
            client.enqueue(Note(), namespace="elsewhere")
    assert job_states(dsn) == {}
    with pytest.raises(delta.ConfigError, match="invalid kind"):

        class Bad(delta.Job, kind="Not Valid"):
            pass


def test_connect_errors_name_the_problem(empty_dsn, tmp_path):
    """An unreachable DSN: DatabaseError without the password; unmigrated: SchemaError."""
    with pytest.raises(delta.DatabaseError) as caught:
        delta.Client.connect(f"postgresql://u:pa55word@/x?host={tmp_path}&port=7")
    assert "pa55word" not in str(caught.value)
    with pytest.raises(delta.SchemaError, match="delta-actors migrate"):
        delta.Client.connect(empty_dsn)


# ---------------------------------------------------------------- claims


CLAIMER = """
import sys, psycopg
from delta_actors import queries
dsn, actor = sys.argv[1], int(sys.argv[2])
with psycopg.connect(dsn, autocommit=True) as conn:
    print("ready", flush=True)
    sys.stdin.readline()  # all claimers start together
    while True:
        rows = conn.execute(queries.CLAIM_JOBS, {"queue": "default", "limit": 7, "actor": actor})
        ids = [r[0] for r in rows]
        if not ids:
            break
        print(" ".join(map(str, ids)), flush=True)
"""


def test_concurrent_claimer_processes_claim_every_job_exactly_once(dsn):
    """Four processes racing over 5,000 jobs: each job is claimed by exactly one."""
    with delta.Client.connect(dsn) as client:
        jobs = client.enqueue_many([Note(n=i) for i in range(5_000)])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, dsn, str(actor)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for actor in range(1, 5)
    ]
    for proc in procs:  # connected and waiting
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    claimed: list[int] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        claimed.extend(int(x) for x in out.split())
    assert sorted(claimed) == sorted(j.id for j in jobs)
    with psycopg.connect(dsn, autocommit=True) as conn:
        per_actor = conn.execute(
            "SELECT count(DISTINCT claimed_by), max(attempt) FROM delta_job"
        ).fetchone()
    assert per_actor == (4, 1)


async def test_several_workers_run_every_job_exactly_once(dsn):
    """Three workers over 2,000 jobs: every job handled once and completed."""
    seen: list[int] = []

    async def record(job: Note) -> None:
        seen.append(job.n)

    app = delta.App(jobs={Note: record})
    client = await delta.AsyncClient.connect(dsn)
    try:
        await client.enqueue_many([Note(n=i) for i in range(2_000)])
        async with (
            running_worker(app, dsn, max_workers=10) as a,
            running_worker(app, dsn, max_workers=10) as b,
            running_worker(app, dsn, max_workers=10) as c,
        ):
            await wait_until_async(lambda: _true(len(seen) >= 2_000), 60, "2,000 jobs")
        assert sorted(seen) == list(range(2_000))
        assert min(w.stats.completed for w in (a, b, c)) > 0
        assert job_states(dsn) == {"completed": 2_000}
    finally:
        await client.close()


async def test_claims_never_exceed_free_slots(dsn):
    """max_workers=3: at most three jobs are running at any sampled moment."""
    release = asyncio.Event()

    async def block(job: Note) -> None:
        await release.wait()

    app = delta.App(jobs={Note: block})
    client = await delta.AsyncClient.connect(dsn)
    try:
        await client.enqueue_many([Note(n=i) for i in range(20)])
        async with running_worker(app, dsn, max_workers=3):
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                for _ in range(30):
                    cur = await conn.execute(
                        "SELECT count(*) FROM delta_job WHERE state = 'running'"
                    )
                    row = await cur.fetchone()
                    assert row is not None
                    assert row[0] <= 3
                    await asyncio.sleep(0.02)
            release.set()
            await wait_until_async(lambda: _true(job_states(dsn) == {"completed": 20}), 10)
    finally:
        await client.close()


async def test_notification_wakes_an_idle_worker(dsn):
    """With a 30 s poll interval, a job enqueued later still starts within a second."""
    started = asyncio.Event()

    async def mark(job: Note) -> None:
        started.set()

    app = delta.App(jobs={Note: mark})
    async with running_worker(app, dsn, poll_interval=30) as worker:
        await worker.wait_listening()
        await asyncio.sleep(0.3)  # let the first claim find nothing
        client = await delta.AsyncClient.connect(dsn)
        try:
            await client.enqueue(Note())
            async with asyncio.timeout(1.0):
                await started.wait()
        finally:
            await client.close()


# ---------------------------------------------------------------- outcomes


async def test_failures_retry_then_complete_with_errors_recorded(dsn):
    """Two failures then success: completed at attempt 3, both errors kept, newest last."""
    calls = 0

    async def flaky(job: Note) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ValueError(f"boom {calls}")

    app = delta.App(jobs={Note: flaky})
    client = await delta.AsyncClient.connect(dsn)
    try:
        job = await client.enqueue(Note())
        async with running_worker(app, dsn):
            await wait_until_async(lambda: _is_state(client, job.id, "completed"), 10)
        row = await client.get_job(job.id)
        assert row is not None
        assert row.attempt == 3
        assert [e.error for e in row.errors] == ["ValueError: boom 1", "ValueError: boom 2"]
        assert "Traceback" in row.errors[0].trace
    finally:
        await client.close()


async def test_exhausted_attempts_discard_and_history_stays_bounded(dsn):
    """Always failing: discarded after exactly max_attempts; at most ten errors kept."""

    async def fail(job: Note) -> None:
        raise RuntimeError(f"no {job.n}")

    app = delta.App(jobs={Note: fail})
    client = await delta.AsyncClient.connect(dsn)
    try:
        three = await client.enqueue(Note(n=3), max_attempts=3)
        fifteen = await client.enqueue(Note(n=15), max_attempts=15)
        async with running_worker(app, dsn):
            await wait_until_async(lambda: _is_state(client, fifteen.id, "discarded"), 20)
            await wait_until_async(lambda: _is_state(client, three.id, "discarded"), 5)
        short = await client.get_job(three.id)
        long = await client.get_job(fifteen.id)
        assert short is not None and short.attempt == 3 and len(short.errors) == 3
        assert long is not None and long.attempt == 15 and len(long.errors) == 10
        assert [e.attempt for e in long.errors] == list(range(6, 16))
        assert long.finalized_at is not None
    finally:
        await client.close()


def test_retry_delay_grows_as_attempt_to_the_fourth_with_jitter():
    """attempt**4 seconds, within +-10%, capped at a day, never under half a second."""
    for attempt in (1, 2, 5, 10):
        delays = [retry_delay(attempt) for _ in range(200)]
        base = max(float(attempt) ** 4, 0.5)
        assert all(base * 0.9 - 1e-9 <= d <= max(base * 1.1, 0.55) for d in delays)
        assert len(set(delays)) > 1
    assert retry_delay(1000) <= 24 * 3600 * 1.1


async def test_requeue_snoozes_without_counting_an_attempt(dsn):
    """Requeue(after=0.3): run again no sooner than 0.3 s later, attempt stays 1."""
    runs: list[float] = []

    async def snooze_once(job: Note) -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise delta.Requeue(after=0.3)

    app = delta.App(jobs={Note: snooze_once})
    client = await delta.AsyncClient.connect(dsn)
    try:
        job = await client.enqueue(Note())
        async with running_worker(app, dsn):
            await wait_until_async(lambda: _is_state(client, job.id, "completed"), 10)
        row = await client.get_job(job.id)
        assert row is not None and row.attempt == 1
        assert runs[1] - runs[0] >= 0.3
    finally:
        await client.close()


async def test_cancel_and_permanent_error_finish_at_once(dsn):
    """Cancel -> cancelled; PermanentError -> discarded after one attempt; no retries."""

    async def outcome(job: Note) -> None:
        if job.n == 1:
            raise delta.Cancel("not needed")
        raise delta.PermanentError("bad input")

    app = delta.App(jobs={Note: outcome})
    client = await delta.AsyncClient.connect(dsn)
    try:
        cancelled = await client.enqueue(Note(n=1))
        discarded = await client.enqueue(Note(n=2))
        async with running_worker(app, dsn):
            await wait_until_async(lambda: _is_state(client, discarded.id, "discarded"), 5)
            await wait_until_async(lambda: _is_state(client, cancelled.id, "cancelled"), 5)
        row = await client.get_job(discarded.id)
        assert row is not None and row.attempt == 1
        assert "permanent error: bad input" in row.errors[-1].error
        row = await client.get_job(cancelled.id)
        assert row is not None and row.finalized_at is not None
    finally:
        await client.close()


async def test_client_cancel_stops_waiting_jobs_only(dsn):
    """cancel_job cancels a scheduled job (it never runs); a completed one stays completed."""
    ran: list[int] = []

    async def record(job: Note) -> None:
        ran.append(job.n)

    app = delta.App(jobs={Note: record})
    client = await delta.AsyncClient.connect(dsn)
    try:
        later = await client.enqueue(
            Note(n=1), scheduled_at=datetime.now(UTC) + timedelta(seconds=0.5)
        )
        done = await client.enqueue(Note(n=2))
        cancelled = await client.cancel_job(later.id)
        assert cancelled is not None and cancelled.state is delta.JobState.CANCELLED
        async with running_worker(app, dsn):
            await wait_until_async(lambda: _is_state(client, done.id, "completed"), 5)
            await asyncio.sleep(0.8)
        assert ran == [2]
        again = await client.cancel_job(done.id)
        assert again is not None and again.state is delta.JobState.COMPLETED
        assert await client.cancel_job(123456789) is None
    finally:
        await client.close()


async def test_scheduled_jobs_run_when_due_and_not_before(dsn):
    """scheduled_at in 0.5 s: the job is scheduled, then runs after that time."""
    ran_at: list[datetime] = []

    async def record(job: Note) -> None:
        ran_at.append(datetime.now(UTC))

    app = delta.App(jobs={Note: record})
    client = await delta.AsyncClient.connect(dsn)
    try:
        due = datetime.now(UTC) + timedelta(seconds=0.5)
        job = await client.enqueue(Note(), scheduled_at=due)
        assert job.state is delta.JobState.SCHEDULED
        async with running_worker(app, dsn):
            await wait_until_async(lambda: _is_state(client, job.id, "completed"), 5)
        assert ran_at[0] >= due
    finally:
        await client.close()


async def test_timeout_fails_the_attempt(dsn):
    """A Job class with timeout=0.3 whose handler hangs: a failed attempt, 'timed out'."""

    async def hang(job: Slow) -> None:
        await asyncio.sleep(job.seconds)

    app = delta.App(jobs={Slow: hang})
    client = await delta.AsyncClient.connect(dsn)
    try:
        job = await client.enqueue(Slow(), max_attempts=1)
        async with running_worker(app, dsn):
            await wait_until_async(lambda: _is_state(client, job.id, "discarded"), 5)
        row = await client.get_job(job.id)
        assert row is not None and "timed out after 0.3s" in row.errors[-1].error
    finally:
        await client.close()


async def test_sync_handlers_run_off_the_event_loop(dsn):
    """Five plain-def handlers sleeping 0.4 s with five slots finish together, not in series."""

    def nap(job: Note) -> None:
        time.sleep(0.4)

    app = delta.App(jobs={Note: nap})
    client = await delta.AsyncClient.connect(dsn)
    try:
        await client.enqueue_many([Note(n=i) for i in range(5)])
        started = time.monotonic()
        async with running_worker(app, dsn, max_workers=5):
            await wait_until_async(lambda: _true(job_states(dsn) == {"completed": 5}), 5)
        assert time.monotonic() - started < 1.5
    finally:
        await client.close()


async def test_base_exceptions_from_handlers_are_failures(dsn):
    """SystemExit or KeyboardInterrupt in a handler fails its attempt; the worker goes on."""

    async def explode(job: Note) -> None:
        if job.n == 0:
            raise SystemExit(3)
        if job.n == 1:
            raise KeyboardInterrupt

    app = delta.App(jobs={Note: explode})
    client = await delta.AsyncClient.connect(dsn)
    try:
        jobs = await client.enqueue_many([Note(n=i) for i in range(3)], max_attempts=1)
        async with running_worker(app, dsn) as worker:
            await wait_until_async(lambda: _is_state(client, jobs[2].id, "completed"), 5)
            await wait_until_async(lambda: _is_state(client, jobs[1].id, "discarded"), 5)
        assert worker.stats.failed == 2
        row = await client.get_job(jobs[0].id)
        assert row is not None and "SystemExit" in row.errors[-1].error
    finally:
        await client.close()


async def test_unknown_kind_is_kept_and_offered_again_uncounted(dsn):
    """A job kind the worker has no handler for is not lost: rescheduled, attempt 0."""

    class Foreign(delta.Job, kind="foreign"):
        pass

    app = delta.App(jobs={Note: _noop})
    client = await delta.AsyncClient.connect(dsn)
    try:
        job = await client.enqueue(Foreign())
        async with running_worker(app, dsn) as worker:
            await wait_until_async(lambda: _true(worker.stats.unknown_kind == 1), 5)
        row = await client.get_job(job.id)
        assert row is not None
        assert row.state is delta.JobState.SCHEDULED
        assert row.attempt == 0
        assert "no handler for job kind 'foreign'" in row.errors[-1].error
        assert "registered: note" in row.errors[-1].error
    finally:
        await client.close()


async def test_stale_claims_cannot_overwrite_a_newer_result(dsn):
    """A claim rescued while its handler runs: its late result is fenced off and counted."""
    release = asyncio.Event()

    async def wait(job: Note) -> None:
        await release.wait()

    app = delta.App(jobs={Note: wait})
    client = await delta.AsyncClient.connect(dsn)
    try:
        job = await client.enqueue(Note())
        async with running_worker(app, dsn) as worker:
            await wait_until_async(lambda: _is_state(client, job.id, "running"), 5)
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(
                    "UPDATE delta_job SET claimed_by = -1, attempt = attempt + 1 WHERE id = %s",
                    (job.id,),
                )
            release.set()
            await wait_until_async(lambda: _true(worker.stats.stale == 1), 5)
        row = await client.get_job(job.id)
        assert row is not None
        assert row.state is delta.JobState.RUNNING
        assert row.claimed_by == -1
        assert row.attempt == 2
    finally:
        await client.close()


async def test_stop_finishes_short_jobs_and_hands_back_long_ones(dsn):
    """stop(timeout=0.5): a short job completes, async and sync long ones go back uncounted."""

    async def run(job: Note) -> None:
        await asyncio.sleep(0.1 if job.n == 0 else 30)

    def block(job: Blocking) -> None:
        time.sleep(job.seconds)

    app = delta.App(jobs={Note: run, Blocking: block})
    client = await delta.AsyncClient.connect(dsn)
    try:
        short, long = await client.enqueue_many([Note(n=0), Note(n=1)])
        blocking = await client.enqueue(Blocking(seconds=2.0))
        worker = delta.Worker(app, dsn, poll_interval=0.2)
        await worker.start()
        await wait_until_async(
            lambda: _true(job_states(dsn).get("running", 0) == 3), 5, "three running"
        )
        started = time.monotonic()
        await worker.stop(timeout=0.5)
        assert time.monotonic() - started < 2.0
        for job_id, state, attempt in (
            (short.id, delta.JobState.COMPLETED, 1),
            (long.id, delta.JobState.AVAILABLE, 0),
            (blocking.id, delta.JobState.AVAILABLE, 0),
        ):
            row = await client.get_job(job_id)
            assert row is not None
            assert (row.state, row.attempt) == (state, attempt)
        assert worker.stats.handed_back == 2
    finally:
        await client.close()


async def _noop(job: object) -> None:
    return None


async def _true(value: object) -> bool:
    return bool(value)


async def _is_state(client: delta.AsyncClient, job_id: int, state: str) -> bool:
    row = await client.get_job(job_id)
    return row is not None and row.state == state


def test_wait_until_is_used_with_a_deadline():
    """The waiting helper fails loudly at its deadline instead of hanging."""
    with pytest.raises(AssertionError, match="timed out"):
        wait_until(lambda: False, 0.05, "nothing")


async def test_stop_does_not_hang_on_a_handler_that_swallows_cancellation(dsn):
    """A handler that ignores its cancellation cannot hold stop(); its claim goes back."""

    async def stubborn(job: Note) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(30)

    app = delta.App(jobs={Note: stubborn})
    client = await delta.AsyncClient.connect(dsn)
    try:
        job = await client.enqueue(Note())
        worker = delta.Worker(app, dsn, poll_interval=0.2)
        await worker.start()
        await wait_until_async(lambda: _is_state(client, job.id, "running"), 5)
        started = time.monotonic()
        await worker.stop(timeout=0.2)
        assert time.monotonic() - started < 8.0
        row = await client.get_job(job.id)
        assert row is not None
        assert (row.state, row.attempt) == (delta.JobState.AVAILABLE, 0)
    finally:
        await client.close()
