"""`delta.App`: what a deployment runs, the handlers and the namespaces they run in."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from delta_actors import tracing
from delta_actors.config import DEFAULT_NAMESPACE, Namespace
from delta_actors.controller import Controller, has_finalize, object_type_of
from delta_actors.errors import ConfigError, UnknownKindError, UnknownNamespaceError
from delta_actors.middleware import Middleware, Wrap, check_middleware
from delta_actors.model.job import Job
from delta_actors.model.kinds import kind_of
from delta_actors.model.limits import Limit, check_limit
from delta_actors.model.names import validate_name
from delta_actors.model.object import Object, has_compare
from delta_actors.model.periodic import Periodic

JobHandler = Callable[[Any], Awaitable[None]] | Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class ControllerRegistration:
    """A kind with its controller, object type and how to run its work."""

    kind: str
    controller: Controller[Any]
    object_type: type[Object]
    is_async: bool
    timeout: float
    max_attempts: int
    namespace: str
    has_compare: bool
    decoder: msgspec.json.Decoder[Any]
    finalizes: bool  # it has a finalize(): a deletion is `deleting` until that returns
    finalize_is_async: bool


@dataclass(frozen=True, slots=True)
class JobRegistration:
    """A job kind with its type, handler and how to run it."""

    kind: str
    type: type[Job]
    handler: JobHandler
    is_async: bool
    timeout: float
    decoder: msgspec.json.Decoder[Any]


class App:
    """The job handlers and namespaces a deployment runs.

    Args:
        controllers: one delta.Controller per kind.
        jobs: job type -> handler (`async def` or a plain `def`, which runs off the event loop).
        namespaces: name -> Namespace; defaults to one namespace, "default".
        periodic: delta.Periodic jobs the leader enqueues on their schedules; their job
            types must be among `jobs`.
        middleware: code run around every work, finalize and plain job, the first
            outermost: async context manager factories of the `delta.Call`, or
            `async def (call, proceed)` functions (middleware.py). With the `otel` extra
            installed, OpenTelemetry's comes first (tracing.py).
    """

    def __init__(
        self,
        *,
        controllers: Sequence[Controller[Any]] = (),
        jobs: Mapping[type[Job], JobHandler] | None = None,
        namespaces: Mapping[str, Namespace] | None = None,
        periodic: Sequence[Periodic] = (),
        middleware: Sequence[Middleware] = (),
    ) -> None:
        # Checked first: a mistake in it is one of the whole app, not of a handler.
        own = check_middleware(middleware)
        self.middleware: tuple[Wrap, ...] = (*tracing.middleware(), *own)
        self._untraced = own
        self.namespaces: dict[str, Namespace] = {}
        for name, namespace in (namespaces or {DEFAULT_NAMESPACE: Namespace()}).items():
            validate_name(name, "namespace")
            if not isinstance(namespace, Namespace):
                raise ConfigError(
                    f"namespace {name!r} must be a delta.Namespace, got {type(namespace).__name__}"
                )
            self.namespaces[name] = namespace
        self.controllers: dict[str, ControllerRegistration] = {}
        for controller in controllers:
            self._register_controller(controller)
        self.jobs: dict[str, JobRegistration] = {}
        for job_type, handler in (jobs or {}).items():
            self._register_job(job_type, handler)
        # Kind -> its cluster-wide limits (queue/claimer.py), for controllers and jobs alike.
        self.limits: dict[str, Limit] = {}
        for kind, registration in self.controllers.items():
            limit = check_limit(
                registration.controller.concurrency, registration.controller.rate,
                f"{type(registration.controller).__qualname__}:",
            )  # fmt: skip
            if limit is not None:
                self.limits[kind] = limit
        for kind, job in self.jobs.items():
            limit = check_limit(job.type.concurrency, job.type.rate, f"{job.type.__qualname__}:")
            if limit is not None:
                self.limits[kind] = limit
        self.periodic: list[Periodic] = []
        for entry in periodic:
            self._register_periodic(entry)

    def _register_periodic(self, periodic: Periodic) -> None:
        if not isinstance(periodic, Periodic):
            raise ConfigError(f"periodic takes delta.Periodic entries, got {periodic!r:.100}")
        registration = self.jobs.get(periodic.kind)
        if registration is None or not isinstance(periodic.job, registration.type):
            raise ConfigError(
                f"{periodic!r}: its job kind {periodic.kind!r} has no handler in this app: "
                f"add {type(periodic.job).__qualname__} to App(jobs=...)"
            )
        periodic.namespace = periodic.namespace or DEFAULT_NAMESPACE
        self.namespace(periodic.namespace)
        if any(p.name == periodic.name for p in self.periodic):
            raise ConfigError(
                f"two periodics are named {periodic.name!r} (the same job, arguments and "
                "schedule): remove one, or give each its own name="
            )
        self.periodic.append(periodic)

    def _register_controller(self, controller: Controller[Any]) -> None:
        if not isinstance(controller, Controller):
            raise ConfigError(f"controllers must be delta.Controller instances, got {controller!r}")
        object_type = object_type_of(controller)
        kind = kind_of(object_type)
        if kind in self.controllers:
            raise ConfigError(
                f"kind {kind!r} has two controllers: "
                f"{type(self.controllers[kind].controller).__qualname__} and "
                f"{type(controller).__qualname__}"
            )
        name = type(controller).__qualname__
        if type(controller).work is Controller.work and not has_finalize(controller):
            raise ConfigError(
                f"controller {name} overrides neither work() nor finalize(): define "
                "`async def work(self, resource)` (or a plain def) to reconcile its resources"
            )
        if not controller.timeout > 0:
            raise ConfigError(f"{name}.timeout must be > 0 seconds, got {controller.timeout!r}")
        if not (isinstance(controller.max_attempts, int) and 1 <= controller.max_attempts <= 32767):
            raise ConfigError(
                f"{name}.max_attempts must be 1..32767, got {controller.max_attempts!r}"
            )
        if controller.tombstones not in (True, False, "listed"):
            raise ConfigError(
                f'{name}.tombstones must be False, True or "listed", got {controller.tombstones!r}'
            )
        self.namespace(validate_name(controller.namespace, f"namespace of {name}"))
        self.controllers[kind] = ControllerRegistration(
            kind=kind,
            controller=controller,
            object_type=object_type,
            is_async=inspect.iscoroutinefunction(controller.work),
            timeout=float(controller.timeout),
            max_attempts=controller.max_attempts,
            namespace=controller.namespace,
            has_compare=has_compare(object_type),
            decoder=msgspec.json.Decoder(object_type),
            finalizes=has_finalize(controller),
            finalize_is_async=inspect.iscoroutinefunction(controller.finalize),
        )

    def _register_job(self, job_type: type[Job], handler: JobHandler) -> None:
        if not (isinstance(job_type, type) and issubclass(job_type, Job)):
            raise ConfigError(f"jobs keys must be delta.Job subclasses, got {job_type!r}")
        kind = kind_of(job_type)
        if kind in self.jobs:
            raise ConfigError(
                f"job kind {kind!r} is registered twice: "
                f"{self.jobs[kind].type.__qualname__} and {job_type.__qualname__}"
            )
        if not callable(handler):
            raise ConfigError(f"handler for job kind {kind!r} is not callable: {handler!r}")
        self.jobs[kind] = JobRegistration(
            kind=kind,
            type=job_type,
            handler=handler,
            is_async=inspect.iscoroutinefunction(handler)
            or inspect.iscoroutinefunction(getattr(handler, "__call__", None)),  # noqa: B004
            timeout=job_type.timeout,
            decoder=msgspec.json.Decoder(job_type),
        )

    def chain(self, traced: bool) -> tuple[Wrap, ...]:
        """The middleware of a run: without the work span unless `traced` (a tracer
        provider records: tracing.recording(), asked once per claim), so an installed
        but unconfigured OpenTelemetry costs a run nothing."""
        return self.middleware if traced else self._untraced

    def namespace(self, name: str) -> Namespace:
        """Return the configuration of namespace `name`, or raise UnknownNamespaceError."""
        try:
            return self.namespaces[name]
        except KeyError:
            raise UnknownNamespaceError(
                f"unknown namespace {name!r} (configured: {', '.join(sorted(self.namespaces))})"
            ) from None

    def job(self, kind: str) -> JobRegistration:
        """Return the registration of job kind `kind`, or raise UnknownKindError."""
        try:
            return self.jobs[kind]
        except KeyError:
            registered = ", ".join(sorted(self.jobs)) or "none"
            raise UnknownKindError(
                f"unknown job kind {kind!r} (registered: {registered})"
            ) from None

    def controller(self, kind: str) -> ControllerRegistration:
        """Return the controller registration of `kind`, or raise UnknownKindError."""
        try:
            return self.controllers[kind]
        except KeyError:
            registered = ", ".join(sorted(self.controllers)) or "none"
            raise UnknownKindError(f"unknown kind {kind!r} (registered: {registered})") from None


def load_app(path: str) -> App:
    """Import `module:attr` and return the delta.App it names, or raise ConfigError."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--app {path!r} is not of the form module:attr, e.g. myapp.main:app")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"--app {path!r}: cannot import module {module_name!r} ({exc}); check the name "
            "and that it is importable from the current directory or PYTHONPATH"
        ) from exc
    try:
        app = getattr(module, attr)
    except AttributeError:
        raise ConfigError(
            f"--app {path!r}: module {module_name!r} has no attribute {attr!r}"
        ) from None
    if not isinstance(app, App):
        raise ConfigError(f"--app {path!r} is a {type(app).__name__}, not a delta.App")
    return app
