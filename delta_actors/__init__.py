"""delta_actors: keep resources in PostgreSQL in sync with the world, on a Postgres job queue.

The public API; everything else is internal.
"""

from __future__ import annotations

from delta_actors.app import App
from delta_actors.client import AsyncClient, Client
from delta_actors.config import Namespace
from delta_actors.errors import (
    ClusterError,
    ConfigError,
    DatabaseError,
    DecodeError,
    DeltaError,
    EncodeError,
    ProtocolError,
    SchemaError,
    UnknownKindError,
    UnknownNamespaceError,
)
from delta_actors.job import Job
from delta_actors.outcomes import Cancel, Outcome, PermanentError, Requeue
from delta_actors.queue.insert import JobSpec
from delta_actors.queue.rows import EnqueuedJob, JobError, JobRow, JobState
from delta_actors.queue.worker import Worker, WorkerStats

__all__ = [
    "App",
    "AsyncClient",
    "Cancel",
    "Client",
    "ClusterError",
    "ConfigError",
    "DatabaseError",
    "DecodeError",
    "DeltaError",
    "EncodeError",
    "EnqueuedJob",
    "Job",
    "JobError",
    "JobRow",
    "JobSpec",
    "JobState",
    "Namespace",
    "Outcome",
    "PermanentError",
    "ProtocolError",
    "Requeue",
    "SchemaError",
    "UnknownKindError",
    "UnknownNamespaceError",
    "Worker",
    "WorkerStats",
]
