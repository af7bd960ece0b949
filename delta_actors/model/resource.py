"""Resources: the stored state of one object, as user code sees it."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec

from delta_actors.model.job_row import JobError

T = TypeVar("T")


class State(enum.StrEnum):
    """The state of a resource."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    SYNCED = "synced"
    FAILED = "failed"
    DEGRADED = "degraded"
    EXPIRED = "expired"
    DELETING = "deleting"
    DELETED = "deleted"


class InformOutcome(enum.StrEnum):
    """What an inform did with one object."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    STALE = "stale"


class Resource(msgspec.Struct, Generic[T], frozen=True):
    """A stored resource: the decoded object and its row's fields.

    `state` is `running` while a work of the resource runs. `errors` holds the newest ten
    failed attempts, newest last. `deletion_requested_at` is set from the moment its
    deletion was asked for (it stays set once deleted, and a newer inform clears it): while
    set, its controller's `finalize` runs instead of `work`. Times are the database's.
    """

    id: int
    kind: str
    object_id: str
    namespace: str
    object: T
    state: State
    generation: int
    attempt: int
    max_attempts: int
    errors: list[JobError]
    tags: list[str]
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    attempted_at: datetime | None
    synced_at: datetime | None
    deletion_requested_at: datetime | None


class InformResult(msgspec.Struct, Generic[T], frozen=True):
    """The result of informing about one object: the stored resource and what happened."""

    resource: Resource[T]
    outcome: InformOutcome
