"""What a handler's outcome does to its job: retry, discard, snooze, cancel, schedule, time out."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

import delta_actors as delta
from delta_actors.queue.completer import array_literal
from delta_actors.queue.results import UNKNOWN_KIND_DELAY
from delta_actors.testing import AsyncRunner
from tests.integration.job_table import get_job, is_state
from tests.integration.workers import running_worker
from tests.waiting import wait_until_async

COMPLETED = delta.JobState.COMPLETED
DISCARDED = delta.JobState.DISCARDED
CANCELLED = delta.JobState.CANCELLED


class Note(delta.Job, kind="note"):
    n: int = 0


class Slow(delta.Job, kind="slow", timeout=0.2):
    seconds: float = 5.0


# ---------------------------------------------------------------- failures and retries


async def test_two_failures_then_success_completes_at_attempt_three_with_both_errors(dsn):
    """Fail, fail, succeed: completed at attempt 3; two errors kept, newest last, with text."""
    calls = 0

    async def flaky(job: Note) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ValueError(f"flaky failure number {calls}")

    app = delta.App(jobs={Note: flaky})
    client = await delta.AsyncClient.connect(dsn)
    try:
        job = await client.enqueue(Note(), max_attempts=5)
        async with running_worker(app, dsn) as worker:
            await wait_until_async(lambda: is_state(client, job.id, COMPLETED), 10)
        row = await get_job(client, job.id)
        assert calls == 3
        assert row.attempt == 3
        assert [e.attempt for e in row.errors] == [1, 2]
        assert [e.error for e in row.errors] == [
            "ValueError: flaky failure number 1",
            "ValueError: flaky failure number 2",
        ]
        assert row.errors[0].at <= row.errors[1].at
        assert "Traceback" in row.errors[1].trace
        assert "flaky failure number 2" in row.errors[1].trace
        assert row.finalized_at is not None
        assert row.claimed_by is None
        assert (worker.stats.failed, worker.stats.completed) == (2, 1)
    finally:
        await client.close()


async def test_always_failing_job_is_discarded_after_exactly_max_attempts(delta_dsn):
    """max_attempts=3 and a handler that always fails: three runs, each retry after its
    backoff (30 s, 60 s) on the Runner's clock and not before, then discarded."""
    calls = 0

    async def fail(job: Note) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError(f"run {calls} failed")

    # Margins of 10 s between "not yet" and "due": real time passes too.
    runner = AsyncRunner(
        delta.App(jobs={Note: fail}), delta_dsn, retry_policy=lambda attempt: 30.0 * attempt
    )
    client = await delta.AsyncClient.connect(delta_dsn)
    try:
        job = await client.enqueue(Note(), max_attempts=3)
        first = await runner.run_until_idle()
        assert [(r.id, r.state) for r in first.jobs] == [(job.id, delta.JobState.RETRYABLE)]
        assert (await runner.advance(20.0)).runs == []
        assert [r.state for r in (await runner.advance(10.0)).jobs] == [delta.JobState.RETRYABLE]
        assert (await runner.advance(50.0)).runs == []
        assert [r.state for r in (await runner.advance(10.0)).jobs] == [DISCARDED]
        row = await get_job(client, job.id)
        assert calls == 3
        assert row.state is DISCARDED
        assert row.attempt == 3
        assert [e.error for e in row.errors] == [f"RuntimeError: run {i} failed" for i in (1, 2, 3)]
        assert row.finalized_at is not None
        assert (await runner.advance(3600.0)).runs == []
    finally:
        await client.close()


async def test_error_history_keeps_only_the_newest_ten(delta_dsn):
    """max_attempts=15, always failing: discarded at attempt 15 with errors of attempts 6..15."""

    async def fail(job: Note) -> None:
        raise RuntimeError("still broken")

    runner = AsyncRunner(delta.App(jobs={Note: fail}), delta_dsn, retry_policy=lambda a: 0.0)
    client = await delta.AsyncClient.connect(delta_dsn)
    try:
        job = await client.enqueue(Note(), max_attempts=15)
        results = await runner.run_until_idle()
        assert len(results.jobs) == 15
        assert results.errors == ["RuntimeError: still broken"] * 15
        row = await get_job(client, job.id)
        assert row.state is DISCARDED
        assert row.attempt == 15
        assert [e.attempt for e in row.errors] == list(range(6, 16))
        with psycopg.connect(delta_dsn, autocommit=True) as conn:
            stored = conn.execute(
                "SELECT cardinality(errors) FROM delta_job WHERE id = %s", (job.id,)
            ).fetchone()
        assert stored == (10,)
    finally:
        await client.close()


async def test_a_failure_with_zero_backoff_is_retried_at_once(dsn):
    """retry_policy -> 0 s: each retry runs right away, not after the scheduler's interval."""
    runs: list[float] = []

    async def fail_four_times(job: Note) -> None:
        runs.append(time.monotonic())
        if len(runs) <= 4:
            raise RuntimeError("not yet")

    app = delta.App(jobs={Note: fail_four_times})
    client = await delta.AsyncClient.connect(dsn)
    try:
        job = await client.enqueue(Note())
        async with running_worker(app, dsn, retry_policy=lambda attempt: 0.0):
            await wait_until_async(lambda: is_state(client, job.id, COMPLETED), 10)
        gaps = [later - earlier for earlier, later in itertools.pairwise(runs)]
        assert len(runs) == 5
        assert max(gaps) < 0.5, f"retries waited {gaps} s with a 0 s backoff"
    finally:
        await client.close()


async def test_retry_waits_for_the_backoff_of_the_retry_policy(dsn):
    """A failure with a 0.4 s backoff: retryable meanwhile, run again no sooner than 0.4 s."""
    runs: list[float] = []

    async def fail_once(job: Note) -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise RuntimeError("once")

    app = delta.App(jobs={Note: fail_once})
    client = await delta.AsyncClient.connect(dsn)
    try:
        job = await client.enqueue(Note())
        async with running_worker(app, dsn, retry_policy=lambda attempt: 0.4):
            await wait_until_async(
                lambda: is_state(client, job.id, delta.JobState.RETRYABLE), 5, "retryable"
            )
            await wait_until_async(lambda: is_state(client, job.id, COMPLETED), 5)
        row = await get_job(client, job.id)
        assert row.attempt == 2
        assert runs[1] - runs[0] >= 0.4
    finally:
        await client.close()


async def test_permanent_error_discards_at_once_after_one_attempt(dsn):
    """PermanentError: discarded after one run though attempts were left; reason recorded."""
    calls = 0

    async def refuse(job: Note) -> None:
        nonlocal calls
        calls += 1
        raise delta.PermanentError("account closed")

    app = delta.App(jobs={Note: refuse})
    client = await delta.AsyncClient.connect(dsn)
    try:
        job = await client.enqueue(Note(), max_attempts=25)
        async with running_worker(app, dsn) as worker:
            await wait_until_async(lambda: is_state(client, job.id, DISCARDED), 5)
        row = await get_job(client, job.id)
        assert calls == 1
        assert row.attempt == 1
        assert [e.error for e in row.errors] == ["permanent error: account closed"]
        assert row.finalized_at is not None
        assert (worker.stats.discarded, worker.stats.failed) == (1, 0)
    finally:
        await client.close()


@pytest.mark.parametrize(
    "exc", [SystemExit(3), KeyboardInterrupt()], ids=["SystemExit", "KeyboardInterrupt"]
)
@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
async def test_base_exception_in_a_handler_fails_the_attempt_and_the_worker_goes_on(
    dsn, exc, is_async
):
    """SystemExit/KeyboardInterrupt raised by a handler: a failed attempt; later jobs still run."""

    def run(job: Note) -> None:
        if job.n == 0:
            raise exc

    async def run_async(job: Note) -> None:
        run(job)

    app = delta.App(jobs={Note: run_async if is_async else run})
    client = await delta.AsyncClient.connect(dsn)
    try:
        bad = await client.enqueue(Note(n=0), max_attempts=2)
        async with running_worker(app, dsn) as worker:
            await wait_until_async(lambda: is_state(client, bad.id, DISCARDED), 5)
            after = await client.enqueue(Note(n=1))
            await wait_until_async(lambda: is_state(client, after.id, COMPLETED), 5)
        row = await get_job(client, bad.id)
        assert row.attempt == 2
        assert [e.error.split(":")[0] for e in row.errors] == [type(exc).__name__] * 2
        assert (worker.stats.failed, worker.stats.completed) == (2, 1)
    finally:
        await client.close()


async def test_handler_over_its_class_timeout_fails_the_attempt(dsn):
    """A Job class with timeout=0.2 whose handler sleeps 5 s: a failed 'timed out' attempt."""
    runs = 0

    async def hang_once(job: Slow) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            await asyncio.sleep(job.seconds)

    app = delta.App(jobs={Slow: hang_once})
    client = await delta.AsyncClient.connect(dsn)
    try:
        started = time.monotonic()
        job = await client.enqueue(Slow(), max_attempts=2)
        async with running_worker(app, dsn) as worker:
            await wait_until_async(lambda: is_state(client, job.id, COMPLETED), 5)
        assert time.monotonic() - started < 3.0
        row = await get_job(client, job.id)
        assert row.attempt == 2
        assert len(row.errors) == 1
        assert "timed out" in row.errors[0].error
        assert "0.2s" in row.errors[0].error
        assert row.errors[0].attempt == 1
        assert worker.stats.failed == 1
    finally:
        await client.close()


# ---------------------------------------------------------------- snooze and cancel


async def test_requeue_runs_again_after_the_delay_without_counting_an_attempt(dsn):
    """Requeue(after=0.3) once: the next run starts >= 0.3 s later; completed at attempt 1."""
    runs: list[float] = []

    async def snooze_once(job: Note) -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise delta.Requeue(after=0.3)

    app = delta.App(jobs={Note: snooze_once})
    client = await delta.AsyncClient.connect(dsn)
    try:
        job = await client.enqueue(Note(), max_attempts=1)
        async with running_worker(app, dsn) as worker:
            await wait_until_async(lambda: is_state(client, job.id, COMPLETED), 5)
        row = await get_job(client, job.id)
        assert len(runs) == 2
        assert runs[1] - runs[0] >= 0.3
        assert runs[1] - runs[0] < 1.5
        assert row.attempt == 1
        assert row.errors == []
        assert (worker.stats.snoozed, worker.stats.failed) == (1, 0)
    finally:
        await client.close()


async def test_requeue_leaves_the_job_scheduled_uncounted_until_due(delta_dsn):
    """Requeue(after=60): scheduled, attempt back to 0, due in a minute, no error; on the
    Runner's clock it runs again after 60 s, not before."""
    runs = 0

    async def snooze_once(job: Note) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise delta.Requeue(after=60)

    runner = AsyncRunner(delta.App(jobs={Note: snooze_once}), delta_dsn)
    client = await delta.AsyncClient.connect(delta_dsn)
    try:
        job = await client.enqueue(Note(), max_attempts=1)
        first = await runner.run_until_idle()
        assert [r.ending for r in first.jobs] == ["requeue"]
        row = await get_job(client, job.id)
        assert row.state is delta.JobState.SCHEDULED
        assert row.attempt == 0
        assert row.claimed_by is None
        assert row.errors == []
        assert row.finalized_at is None
        due_in = (row.scheduled_at - datetime.now(UTC)).total_seconds()
        assert 55 < due_in <= 60
        assert (await runner.advance(50.0)).runs == []  # 10 s for real time to pass
        assert (await runner.advance(10.0)).completed == [Note()]
        row = await get_job(client, job.id)
        assert (row.state, row.attempt, runs) == (COMPLETED, 1, 2)
    finally:
        await client.close()


async def test_cancel_raised_by_the_handler_cancels_the_job(dsn):
    """delta.Cancel("x"): cancelled after one run, finalized, reason recorded, no retry."""
    calls = 0

    async def cancel(job: Note) -> None:
        nonlocal calls
        calls += 1
        raise delta.Cancel("x")

    app = delta.App(jobs={Note: cancel})
    client = await delta.AsyncClient.connect(dsn)
    try:
        job = await client.enqueue(Note())
        async with running_worker(app, dsn) as worker:
            await wait_until_async(lambda: is_state(client, job.id, CANCELLED), 5)
        row = await get_job(client, job.id)
        assert calls == 1
        assert row.attempt == 1
        assert row.finalized_at is not None
        assert [e.error for e in row.errors] == ["cancelled: x"]
        assert (worker.stats.cancelled, worker.stats.failed) == (1, 0)
    finally:
        await client.close()


async def test_cancel_job_on_a_scheduled_job_means_it_never_runs(dsn):
    """client.cancel_job on a scheduled job: cancelled at once; a later job runs, it does not."""
    ran: list[int] = []

    async def record(job: Note) -> None:
        ran.append(job.n)

    app = delta.App(jobs={Note: record})
    client = await delta.AsyncClient.connect(dsn)
    try:
        now = datetime.now(UTC)
        doomed = await client.enqueue(Note(n=1), scheduled_at=now + timedelta(seconds=0.2))
        marker = await client.enqueue(Note(n=2), scheduled_at=now + timedelta(seconds=0.5))
        cancelled = await client.cancel_job(doomed.id)
        assert cancelled is not None
        assert cancelled.state is CANCELLED
        assert cancelled.finalized_at is not None
        async with running_worker(app, dsn):
            # The marker is due after the cancelled job would have been: once it ran, the
            # cancelled job had its chance.
            await wait_until_async(lambda: is_state(client, marker.id, COMPLETED), 5)
        assert ran == [2]
        row = await get_job(client, doomed.id)
        assert (row.state, row.attempt, row.attempted_at) == (CANCELLED, 0, None)
    finally:
        await client.close()


async def test_cancel_job_leaves_running_and_finished_jobs_alone(dsn):
    """cancel_job of a running job lets it finish; of a completed job changes nothing."""
    release = asyncio.Event()

    async def wait(job: Note) -> None:
        await release.wait()

    app = delta.App(jobs={Note: wait})
    client = await delta.AsyncClient.connect(dsn)
    try:
        job = await client.enqueue(Note())
        async with running_worker(app, dsn):
            await wait_until_async(lambda: is_state(client, job.id, delta.JobState.RUNNING), 5)
            during = await client.cancel_job(job.id)
            assert during is not None and during.state is delta.JobState.RUNNING
            release.set()
            await wait_until_async(lambda: is_state(client, job.id, COMPLETED), 5)
        done = await get_job(client, job.id)
        after = await client.cancel_job(job.id)
        assert after == done
        assert after is not None and after.state is COMPLETED
        assert await client.cancel_job(987_654_321) is None
    finally:
        await client.close()


# ---------------------------------------------------------------- scheduling


async def test_scheduled_job_waits_for_its_time_then_runs(dsn):
    """Due in 0.5 s: scheduled, not run before, then run promptly (promotion NOTIFY, poll 30 s)."""
    ran_at: list[datetime] = []

    async def record(job: Note) -> None:
        ran_at.append(datetime.now(UTC))

    app = delta.App(jobs={Note: record})
    client = await delta.AsyncClient.connect(dsn)
    try:
        due = datetime.now(UTC) + timedelta(seconds=0.5)
        job = await client.enqueue(Note(), scheduled_at=due)
        assert job.state is delta.JobState.SCHEDULED
        async with running_worker(app, dsn, poll_interval=30) as worker:
            await worker.wait_listening()
            early = await get_job(client, job.id)
            if datetime.now(UTC) < due:
                assert early.state is delta.JobState.SCHEDULED
            await wait_until_async(lambda: is_state(client, job.id, COMPLETED), 5)
        row = await get_job(client, job.id)
        assert ran_at[0] >= due
        assert ran_at[0] - due < timedelta(seconds=1.5)
        assert row.attempted_at is not None and row.attempted_at >= due
        assert row.attempt == 1
    finally:
        await client.close()


# ---------------------------------------------------------------- unknown kinds


async def test_a_job_of_an_unknown_kind_is_kept_and_offered_again_uncounted(dsn):
    """A kind the worker's app lacks: not lost, scheduled again, attempt 0, error says why."""

    class Foreign(delta.Job, kind="foreign"):
        pass

    class Audit(delta.Job, kind="audit"):
        pass

    async def noop(job: object) -> None:
        return None

    app = delta.App(jobs={Note: noop, Audit: noop})
    client = await delta.AsyncClient.connect(dsn)  # no app: any kind is accepted
    try:
        job = await client.enqueue(Foreign(), max_attempts=1)
        async with running_worker(app, dsn) as worker:
            await wait_until_async(lambda: worker.stats.unknown_kind == 1, 5)
            await wait_until_async(lambda: is_state(client, job.id, delta.JobState.SCHEDULED), 5)
        row = await get_job(client, job.id)
        assert row.attempt == 0
        assert row.claimed_by is None
        assert row.finalized_at is None
        assert len(row.errors) == 1
        message = row.errors[0].error
        assert "job kind 'foreign'" in message
        assert "(registered: audit, note)" in message
        due_in = (row.scheduled_at - datetime.now(UTC)).total_seconds()
        assert UNKNOWN_KIND_DELAY - 5 < due_in <= UNKNOWN_KIND_DELAY
        assert (worker.stats.failed, worker.stats.completed) == (0, 0)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("values", "cast"),
    [
        ([1, 2**40, -3], "bigint[]"),
        ([0.1, 1e-05, 2.5e300, None, 0.0], "float8[]"),
        ([True, False, None], "boolean[]"),
        ([COMPLETED, DISCARDED, None], "delta_job_state[]"),
        ([delta.State.SYNCED, None, delta.State.DEGRADED], "delta_resource_state[]"),
    ],
    ids=["ints", "floats", "booleans", "job-states", "resource-states"],
)
def test_result_arrays_reach_postgresql_exactly(dsn, values, cast):
    """Completions send their numbers, flags and states as array literals: each value
    arrives as itself, None as NULL, and a batch of Nones only as a NULL array."""
    literal = array_literal(values)
    assert array_literal([None] * len(values)) is None
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT %s::{cast}::text[]", (literal,)).fetchone()
    assert row is not None
    if cast == "float8[]":
        assert [None if v is None else float(v) for v in row[0]] == values
    elif cast == "boolean[]":
        assert row[0] == [None if v is None else str(v).lower() for v in values]
    else:
        assert row[0] == [None if v is None else str(v) for v in values]
