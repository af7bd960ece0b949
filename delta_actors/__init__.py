"""delta_actors: keep resources in PostgreSQL in sync with the world, on a Postgres job queue.

The public API is what this module exports (`__all__`); everything else is internal.

General layout (docs/architecture.md has it whole). Each room imports only rooms below
it, never one above; tests/unit/test_layout.py holds the package to that:

- ops/: the `delta-actors` command, status and inspect, progress, logs.
- testing/: `delta.testing`, the inline test Runner and the pytest plugin (imported on
  first use of `delta.testing`, so `import delta_actors` never imports pytest).
- web/: the web console (`delta-actors web`, `delta_actors.web.create_app`).
- runtime/: the supervisor, its actor processes and their pipe protocol, the worker,
  metrics.
- leader/: the election and the cluster-wide duties (rescue, expiry, cleanup).
- context: `work_context()`, a running work's client and effects.
- client, bulk, events: what application code calls (bulk: by filter, for operators).
- resources/: the controller pattern: store informed objects, reconcile, run informers.
- queue/: the job table's lifecycle: insert, claim, run, complete, promote, listen.
- app, controller, config: what a deployment runs.
- tracing, middleware: OpenTelemetry spans (the `otel` extra), code run around handlers.
- local/: PostgreSQL clusters we run ourselves (embedded, throwaway).
- db/: the one PostgreSQL seam: connections, error translation, statements by table,
  migrations.
- model/: objects, jobs, resources and their rows.
- health, outcomes, errors, cancellation: the ground everything stands on.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from delta_actors.app import App
from delta_actors.client import AsyncClient, Client
from delta_actors.config import Namespace
from delta_actors.context import WorkContext, work_context
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
from delta_actors.middleware import Call
from delta_actors.model.job import Job
from delta_actors.model.job_row import EnqueuedJob, JobError, JobRow, JobState
from delta_actors.model.object import Object
from delta_actors.model.page import Page
from delta_actors.model.periodic import Periodic
from delta_actors.model.resource import InformOutcome, InformResult, Resource, State
from delta_actors.outcomes import Cancel, Delete, Outcome, PermanentError, Requeue
from delta_actors.queue.insert import JobSpec
from delta_actors.queue.runner import WorkerStats
from delta_actors.runtime.worker import Worker

if TYPE_CHECKING:
    from delta_actors import testing

__all__ = [
    "ActorLostError",
    "App",
    "AsyncClient",
    "AsyncSubscription",
    "Call",
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
    "Page",
    "Periodic",
    "PermanentError",
    "ProtocolError",
    "Requeue",
    "Resource",
    "SchemaError",
    "State",
    "Subscription",
    "UnknownKindError",
    "UnknownNamespaceError",
    "WorkContext",
    "Worker",
    "WorkerStats",
    "testing",
    "work_context",
]


def __getattr__(name: str) -> Any:
    """`delta.testing`, imported on first use (it is for tests; the rest never needs it)."""
    if name == "testing":
        return importlib.import_module("delta_actors.testing")
    raise AttributeError(f"module 'delta_actors' has no attribute {name!r}")
