"""Outcome rules: what each way a run can end writes, and how it is counted. One home.

Every result to write comes from one of the functions below, whoever ended the run: the
job runner, the reconciler, the worker handing claims back, rescue. Each says the row's
new state, whether the run counts as an attempt, the follow-up, and the `ending` that
metrics count (the `result` label; docs/operations.md lists them).

Plain jobs (a job's `attempt` counts its runs; a run that does not count gives its
attempt back):

    ending           state                           counts_attempt  follow-up
    done             completed                       yes             -
    failed           retryable, or available at once yes             after the backoff
                     (no backoff); discarded after
                     its last attempt
    requeued         scheduled / available           no              after `Requeue.after`
    cancelled        cancelled                       yes             -
    discarded        discarded (PermanentError)      yes             -
    unknown kind     scheduled                       no              UNKNOWN_KIND_DELAY
    rescued          as failed, due at once          yes             -

Resource works (the work's job row always finishes; a follow-up is a new queued work;
a resource's `attempt` counts the failed attempts of its generation, and degrades it at
`max_attempts`, in COMPLETE_WORKS):

    ending           job row     resource      counts_attempt  follow-up
    synced           completed   synced        no              -
    requeued         completed   scheduled     no              after `Requeue.after`
    deleted          completed   deleted       no              -
    deleting         completed   deleting      no              at once (runs finalize)
    degraded         discarded   degraded      yes             -
    failed           discarded   failed        yes             after the backoff
    unknown kind     cancelled   (as it is)    no              UNKNOWN_KIND_DELAY
    resource gone    cancelled   -             no              -
    handed back      cancelled   (as it is)    no              at once
    rescued          as failed, due at once
    effects refused  as failed, due at once (the database refused the work's effects)

A resource marked for deletion runs `finalize` instead of `work` (`deleting=True`): its
return is `deleted`; a requeue or failure keeps it `deleting` (the failure counted, so it
degrades at `max_attempts` with the mark kept); `deleting` above is a `Delete` raised
from `work` of a controller that has a `finalize`.

"Hand back" is the one verb for a claim returned without a counted attempt: at a stop
deadline, or when a claim's reply was lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec
import psycopg

from delta_actors.model.job_row import JobState
from delta_actors.model.resource import State

UNKNOWN_KIND_DELAY = 60.0  # seconds before a claim nobody here can run is offered again


# The results are frozen msgspec Structs, not frozen dataclasses: one is made for every
# run, and a frozen dataclass sets each field through object.__setattr__ (a JobResult took
# 0.8 us to make, a tenth of a no-op job's whole run in the worker; as a Struct 0.15 us).


class JobResult(msgspec.Struct, frozen=True):
    """The outcome of one plain job's claim, to be written (job_sql.COMPLETE_JOBS)."""

    id: int
    attempt: int
    state: JobState
    counts_attempt: bool  # False: the run gives its attempt back (requeue, unknown kind)
    ending: str  # the metrics `result` label
    delay: float | None = None  # seconds until it is due again (retry or requeue)
    error: str | None = None  # an encoded JobError


class Effect(Protocol):
    """A write made by a running work (`delta.work_context()`) that commits with its result:
    the completer calls `write` in the transaction that writes the result."""

    async def write(self, conn: psycopg.AsyncConnection[Any]) -> None: ...


class WorkResult(msgspec.Struct, frozen=True):
    """The outcome of one resource work, to be written (resource_sql.COMPLETE_WORKS)."""

    id: int
    attempt: int
    generation: int  # the generation the work saw
    job_state: JobState  # completed, cancelled or discarded: a work's job always finishes
    resource_state: State | None  # what the resource becomes; None leaves it as it is
    counts_attempt: bool  # a failed attempt of this generation
    ending: str  # the metrics `result` label
    delay: float | None = None  # queue a follow-up work after this many seconds
    error: str | None = None  # an encoded JobError
    effects: tuple[Effect, ...] = ()  # written with this result, iff it is written
    finalized: bool = False  # with effects: the run was a finalize (see effects_refused)


Result = JobResult | WorkResult

# The endings whose effects are written: the work did what it meant to. A failure of any
# kind (an error, a timeout, a permanent error), a hand-back and a rescue drop them.
_KEEPS_EFFECTS = frozenset({"success", "requeue", "deleting", "deleted"})


def with_effects(
    result: WorkResult, effects: Sequence[Effect], *, finalized: bool = False
) -> WorkResult:
    """`result` carrying `effects` (of a `finalize` run, if `finalized`) if its ending keeps
    them, else `result` as it is."""
    if not effects or result.ending not in _KEEPS_EFFECTS:
        return result
    return msgspec.structs.replace(result, effects=tuple(effects), finalized=finalized)


# ---------------------------------------------------------------- plain jobs


def job_done(job_id: int, attempt: int) -> JobResult:
    """The handler returned."""
    return JobResult(job_id, attempt, JobState.COMPLETED, True, "success")


def job_failed(job_id: int, attempt: int, max_attempts: int, delay: float, error: str) -> JobResult:
    """The handler failed (raised, timed out), or its actor died running it (delay 0)."""
    if attempt >= max_attempts:
        return JobResult(job_id, attempt, JobState.DISCARDED, True, "discarded", error=error)
    # No backoff means due now: available at once rather than waiting for promotion.
    state = JobState.AVAILABLE if delay <= 0 else JobState.RETRYABLE
    return JobResult(job_id, attempt, state, True, "error", delay=delay, error=error)


def job_requeued(job_id: int, attempt: int, after: float) -> JobResult:
    """The handler raised Requeue(after): run again then, the attempt given back."""
    state = JobState.AVAILABLE if after <= 0 else JobState.SCHEDULED
    return JobResult(job_id, attempt, state, False, "requeue", delay=after)


def job_cancelled(job_id: int, attempt: int, error: str) -> JobResult:
    """The handler raised Cancel."""
    return JobResult(job_id, attempt, JobState.CANCELLED, True, "cancelled", error=error)


def job_discarded(job_id: int, attempt: int, error: str) -> JobResult:
    """The handler raised PermanentError: no retry can help."""
    return JobResult(job_id, attempt, JobState.DISCARDED, True, "discarded", error=error)


def job_of_unknown_kind(job_id: int, attempt: int, error: str) -> JobResult:
    """No handler here: offered again later, uncounted, so a deploy that has it runs it."""
    return JobResult(
        job_id, attempt, JobState.SCHEDULED, False, "requeue",
        delay=UNKNOWN_KIND_DELAY, error=error,
    )  # fmt: skip


# ---------------------------------------------------------------- resource works


def work_synced(job_id: int, attempt: int, generation: int) -> WorkResult:
    """`work` returned: the resource is in sync."""
    return WorkResult(
        job_id, attempt, generation, JobState.COMPLETED, State.SYNCED, False, "success"
    )


def work_requeued(
    job_id: int, attempt: int, generation: int, after: float, *, deleting: bool = False
) -> WorkResult:
    """`work` (or `finalize`) raised Requeue(after): a new one then, no failure counted."""
    state = State.DELETING if deleting else State.SCHEDULED
    return WorkResult(
        job_id, attempt, generation, JobState.COMPLETED, state, False, "requeue", delay=after
    )


def work_deleted(
    job_id: int, attempt: int, generation: int, error: str | None = None
) -> WorkResult:
    """`finalize` returned, or nothing needs finalizing (`Delete` from a controller without
    one, a marked resource whose controller has none): the resource is gone."""
    return WorkResult(
        job_id, attempt, generation, JobState.COMPLETED, State.DELETED, False, "deleted",
        error=error,
    )  # fmt: skip


def work_deleting(job_id: int, attempt: int, generation: int, error: str | None) -> WorkResult:
    """`work` raised Delete and the controller has a `finalize`: marked, and it runs next."""
    return WorkResult(
        job_id, attempt, generation, JobState.COMPLETED, State.DELETING, False, "deleting",
        delay=0.0, error=error,
    )  # fmt: skip


def work_degraded(job_id: int, attempt: int, generation: int, error: str) -> WorkResult:
    """`work` raised PermanentError: degraded at once."""
    return WorkResult(
        job_id, attempt, generation, JobState.DISCARDED, State.DEGRADED, True, "degraded",
        error=error,
    )  # fmt: skip


def work_failed(
    job_id: int, attempt: int, generation: int, delay: float, error: str,
    *, deleting: bool = False,
) -> WorkResult:  # fmt: skip
    """`work` (or `finalize`) failed (raised, timed out, its object no longer decodes), or
    its actor died running it (delay 0); COMPLETE_WORKS degrades it at its last attempt."""
    state = State.DELETING if deleting else State.FAILED
    return WorkResult(
        job_id, attempt, generation, JobState.DISCARDED, state, True, "error",
        delay=delay, error=error,
    )  # fmt: skip


def effects_refused(result: WorkResult, error: str) -> WorkResult:
    """The database refused the effects of a work that succeeded: written as a failure of
    that work (due again at once, so it degrades at `max_attempts` if they stay refused),
    without its effects."""
    return work_failed(
        result.id, result.attempt, result.generation, 0.0, error, deleting=result.finalized
    )


def work_of_unknown_kind(job_id: int, attempt: int, generation: int, error: str) -> WorkResult:
    """No controller here: the resource is left as it is and offered again later."""
    return WorkResult(
        job_id, attempt, generation, JobState.CANCELLED, None, False, "cancelled",
        delay=UNKNOWN_KIND_DELAY, error=error,
    )  # fmt: skip


def work_of_vanished_resource(job_id: int, attempt: int) -> WorkResult:
    """The resource row is gone (cleaned up): nothing to reconcile."""
    return WorkResult(job_id, attempt, 0, JobState.CANCELLED, None, False, "cancelled")


def work_handed_back(job_id: int, attempt: int, generation: int) -> WorkResult:
    """A claimed work that did not run to its end: its row cancelled, a new work queued
    at once, no attempt counted (a stop deadline, a claim whose reply was lost)."""
    return WorkResult(
        job_id, attempt, generation, JobState.CANCELLED, None, False, "cancelled", delay=0.0
    )
