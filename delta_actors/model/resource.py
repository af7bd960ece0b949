"""Resources: the stored state of one object, as user code sees it."""

from __future__ import annotations

import enum
from collections.abc import Sequence
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
    failed attempts, newest last. Times are the database's.
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


class InformResult(msgspec.Struct, Generic[T], frozen=True):
    """The result of informing about one object: the stored resource and what happened."""

    resource: Resource[T]
    outcome: InformOutcome


_errors_decoder = msgspec.json.Decoder(list[JobError])
_metadata_decoder = msgspec.json.Decoder(dict[str, Any])
_states = {state.value: state for state in State}


def _decode_metadata(text: str) -> dict[str, Any]:
    """The metadata column, read as text (see resource_sql.RESOURCE_COLUMNS)."""
    return _metadata_decoder.decode(text) if text != "{}" else {}


def resource_from_row(row: Sequence[Any], obj: T) -> Resource[T]:
    """Build a Resource from the 15 columns of resource_sql.RESOURCE_COLUMNS and its object."""
    (
        id_, kind, object_id, namespace, state, generation, attempt, max_attempts,
        errors, tags, metadata, created_at, updated_at, attempted_at, synced_at,
    ) = row[:15]  # fmt: skip
    return Resource(
        id_, kind, object_id, namespace, obj, _states[state], generation, attempt, max_attempts,
        _errors_decoder.decode(errors) if errors and errors != "[]" else [],
        list(tags), _decode_metadata(metadata),
        created_at, updated_at, attempted_at, synced_at,
    )  # fmt: skip
