"""What a test Runner call ran, for assertions that read like the behaviour they pin down.

Resource works are listed as "kind/id" strings by how their run ended, one entry per run
in run order (a resource that failed twice then degraded is twice in `failed` and once
in `degraded`); plain jobs as `JobRun`s, their decoded arguments in `completed`; informer
runs as `InformerRun`s; every run of either kind, in order, in `runs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from delta_actors.model.job import Job
from delta_actors.model.job_row import JobState

WorkOutcome = Literal[
    "synced", "requeued", "failed", "degraded", "deleting", "deleted", "cancelled", "stale"
]


@dataclass(frozen=True, slots=True)
class WorkRun:
    """One run of a resource's `work` or `finalize`, as its result was written.

    `outcome`: synced, requeued, failed (retried after the backoff), degraded (a
    PermanentError, or a failure of its last attempt), deleting (Delete raised by a
    controller with a `finalize`, which runs next), deleted, cancelled (no controller for
    the kind in the app, or the resource vanished), stale (its claim was taken from the
    Runner meanwhile: nothing written). `error`: the error recorded for it, if any.
    """

    kind: str
    object_id: str
    outcome: WorkOutcome
    generation: int
    finalize: bool  # the run was a `finalize`
    error: str | None = None

    @property
    def key(self) -> str:
        """ "kind/id", as the lists of `Results` hold it."""
        return f"{self.kind}/{self.object_id}"


@dataclass(frozen=True, slots=True)
class JobRun:
    """One run of a plain job: its decoded `job` (None if it no longer decodes or no handler
    is registered), the `state` its row was left in, and the error recorded, if any."""

    id: int
    kind: str
    job: Job | None
    state: JobState  # completed; retryable/available (failed); scheduled (requeued); ...
    ending: str  # the metrics `result` label: success, error, requeue, cancelled, ...
    error: str | None = None


@dataclass(frozen=True, slots=True)
class InformerRun:
    """One informer run: `objects` written, resources `tombstoned`, the `error` if it
    failed (its cursor then stays), and whether it was a `full` listing."""

    kind: str
    full: bool
    objects: int
    tombstoned: int = 0
    error: str | None = None


@dataclass
class Results:
    """What one Runner call ran (see the module docstring)."""

    runs: list[WorkRun | JobRun] = field(default_factory=list)
    informers: list[InformerRun] = field(default_factory=list)

    def _works(self, outcome: WorkOutcome) -> list[str]:
        return [r.key for r in self.runs if isinstance(r, WorkRun) and r.outcome == outcome]

    @property
    def works(self) -> list[WorkRun]:
        """Every resource work run, in order."""
        return [r for r in self.runs if isinstance(r, WorkRun)]

    @property
    def synced(self) -> list[str]:
        """Resources whose `work` returned."""
        return self._works("synced")

    @property
    def requeued(self) -> list[str]:
        """Resources whose run raised (or returned) Requeue: due again after `after`."""
        return self._works("requeued")

    @property
    def failed(self) -> list[str]:
        """Resources whose run failed and is retried after the backoff."""
        return self._works("failed")

    @property
    def degraded(self) -> list[str]:
        """Resources degraded by this run: a PermanentError, or a last failed attempt."""
        return self._works("degraded")

    @property
    def deleting(self) -> list[str]:
        """Resources marked for deletion by a Delete from `work`; `finalize` runs next."""
        return self._works("deleting")

    @property
    def deleted(self) -> list[str]:
        """Resources deleted by this run (`finalize` returned, or nothing to finalize)."""
        return self._works("deleted")

    @property
    def cancelled(self) -> list[str]:
        """Works that could not run: no controller for the kind, or the row vanished."""
        return self._works("cancelled")

    @property
    def jobs(self) -> list[JobRun]:
        """Every plain job run, in order."""
        return [r for r in self.runs if isinstance(r, JobRun)]

    @property
    def completed(self) -> list[Job]:
        """The decoded arguments of the plain jobs whose handler returned."""
        return [r.job for r in self.jobs if r.state is JobState.COMPLETED and r.job is not None]

    @property
    def errors(self) -> list[str]:
        """The errors recorded by this call's runs (works and jobs), in order."""
        return [r.error for r in self.runs if r.error is not None]

    def extend(self, other: Results) -> None:
        """Append what `other` ran."""
        self.runs.extend(other.runs)
        self.informers.extend(other.informers)
