"""delta_actors: keep resources in PostgreSQL in sync with the world, on a Postgres job queue.

The public API; everything else is internal.
"""

from __future__ import annotations

from delta_actors.app import App
from delta_actors.client import AsyncClient, Client
from delta_actors.config import Namespace
from delta_actors.controller import Controller, InformOptions
from delta_actors.errors import (
    ActorLostError,
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
from delta_actors.events import AsyncSubscription, Event, Gap, Subscription
from delta_actors.job import Job
from delta_actors.object import Object
from delta_actors.outcomes import Cancel, Delete, Outcome, PermanentError, Requeue
from delta_actors.queue.insert import JobSpec
from delta_actors.queue.rows import EnqueuedJob, JobError, JobRow, JobState
from delta_actors.queue.runner import WorkerStats
from delta_actors.queue.worker import Worker
from delta_actors.resource import InformOutcome, InformResult, Resource, State

__all__ = [
    "ActorLostError",
    "App",
    "AsyncClient",
    "AsyncSubscription",
    "Cancel",
    "Client",
    "ClusterError",
    "ConfigError",
    "Controller",
    "DatabaseError",
    "DecodeError",
    "Delete",
    "DeltaError",
    "EncodeError",
    "EnqueuedJob",
    "Event",
    "Gap",
    "InformOptions",
    "InformOutcome",
    "InformResult",
    "Job",
    "JobError",
    "JobRow",
    "JobSpec",
    "JobState",
    "Namespace",
    "Object",
    "Outcome",
    "PermanentError",
    "ProtocolError",
    "Requeue",
    "Resource",
    "SchemaError",
    "State",
    "Subscription",
    "UnknownKindError",
    "UnknownNamespaceError",
    "Worker",
    "WorkerStats",
]
