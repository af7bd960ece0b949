"""The typed rows and results of the job queue."""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec


class JobState(enum.StrEnum):
    """The state of a job (River's states)."""

    AVAILABLE = "available"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYABLE = "retryable"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    DISCARDED = "discarded"


FINAL_STATES = frozenset({JobState.COMPLETED, JobState.CANCELLED, JobState.DISCARDED})


class JobError(msgspec.Struct, frozen=True):
    """One failed attempt of a job, as kept in its bounded error history."""

    at: float
    attempt: int
    error: str
    trace: str = ""

    def __repr__(self) -> str:
        # A printed Resource or JobRow shows ten of these: keep tracebacks out of it.
        trace = f"<{len(self.trace)} characters>" if self.trace else "''"
        return (
            f"JobError(at={self.at!r}, attempt={self.attempt}, error={self.error!r}, trace={trace})"
        )


class EnqueuedJob(msgspec.Struct, frozen=True):
    """The result of enqueueing one job; `duplicate` when a live job had its unique key."""

    id: int
    kind: str
    namespace: str
    state: JobState
    duplicate: bool = False


class JobRow(msgspec.Struct, frozen=True):
    """A stored job with every column; `args` is its msgspec JSON encoding."""

    id: int
    kind: str
    namespace: str
    state: JobState
    args: bytes
    priority: int
    attempt: int
    max_attempts: int
    errors: list[JobError]
    unique_key: str | None
    claimed_by: int | None
    created_at: datetime
    scheduled_at: datetime
    attempted_at: datetime | None
    finalized_at: datetime | None


_JOB_ROW_FIELDS = JobRow.__struct_fields__


def job_row(values: tuple[object, ...]) -> JobRow:
    """Build a JobRow from a row selected with the columns of job_sql.JOB_COLUMNS."""
    return msgspec.convert(dict(zip(_JOB_ROW_FIELDS, values, strict=True)), JobRow)
