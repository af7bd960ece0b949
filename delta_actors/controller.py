"""`delta.Controller[T]`: the control loop of one kind."""

from __future__ import annotations

import typing
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar

import msgspec

from delta_actors.config import DEFAULT_NAMESPACE
from delta_actors.errors import ConfigError
from delta_actors.model.object import Object
from delta_actors.model.resource import Resource

T = TypeVar("T", bound=Object)


class InformOptions(msgspec.Struct, frozen=True):
    """What an informer is asked to list.

    `after` is the cursor: list changes after it (None: everything). `full` is True when
    everything is asked for (the first run, a `run_informer(full=True)`, then every
    `full_interval`); after a successful full listing, resources that were not listed are
    deleted when the controller sets `tombstones`, so a full listing must list everything.
    """

    after: datetime | None = None
    full: bool = True


class Controller(Generic[T]):
    """Reconciles the resources of one kind; subclass as `Controller[MyObject]`.

    Override `work` (async, or a plain def for blocking or CPU-heavy code, which runs off
    the event loop), and optionally `finalize` (the same) and `inform`. Inside `work` and
    `finalize`, `delta.work_context()` gives the actor's client and effects that commit
    with the result. Class attributes tune it:

    - `namespace`: where its resources live unless an inform says otherwise;
    - `timeout`: seconds one `work` may run before it counts as a failed attempt (60);
    - `max_attempts`: failed attempts of one generation before it is degraded (10);
    - `inform_interval`: seconds between informer runs (3600; None disables);
    - `inform_timeout`: seconds one informer run may take before it fails (600; the
      cursor stays, as for any failed run);
    - `full_interval`: seconds between full listings (None: only the first run is full);
    - `tombstones`: after a full listing, delete the resources of the kind it did not
      list (False). True treats the informer as the source of truth for the whole kind,
      resources that application code informed included; "listed" limits it to the
      resources an informer stored or listed;
    - `concurrency`: at most this many works of the kind run at once, cluster-wide (None);
    - `rate`: (count, seconds): at most count works started in any such window (None).
    """

    object_type: ClassVar[type[Object]]
    namespace: ClassVar[str] = DEFAULT_NAMESPACE
    timeout: ClassVar[float] = 60.0
    max_attempts: ClassVar[int] = 10
    inform_interval: ClassVar[float | None] = 3600.0
    inform_timeout: ClassVar[float] = 600.0
    full_interval: ClassVar[float | None] = None
    tombstones: ClassVar[bool | Literal["listed"]] = False
    concurrency: ClassVar[int | None] = None
    rate: ClassVar[tuple[int, float] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is Controller:
                (arg,) = typing.get_args(base)
                if isinstance(arg, type) and issubclass(arg, Object):
                    cls.object_type = arg

    def work(self, resource: Resource[T]) -> Any:
        """Reconcile one resource; return normally when it is in sync."""
        raise NotImplementedError(f"{type(self).__qualname__} does not implement work()")

    def finalize(self, resource: Resource[T]) -> Any:
        """Undo the external side of a deleted resource; return normally when done.

        Optional. Without it a deletion is final at once; with it the resource is
        `deleting` until this returns (then `deleted`), retried like `work` when it
        raises. Never runs at the same time as a `work` of the same resource.
        """
        raise NotImplementedError(f"{type(self).__qualname__} does not implement finalize()")

    def inform(self, options: InformOptions) -> AsyncIterator[T]:
        """List objects from the external system (changes after `options.after`)."""
        raise NotImplementedError(f"{type(self).__qualname__} has no informer")


def object_type_of(controller: Controller[Any]) -> type[Object]:
    """Return the object type a controller reconciles, or raise ConfigError naming the fix."""
    object_type = getattr(type(controller), "object_type", None)
    if not (isinstance(object_type, type) and issubclass(object_type, Object)):
        name = type(controller).__qualname__
        raise ConfigError(
            f"controller {name} does not say which object it reconciles: "
            f"declare it as `class {name}(delta.Controller[MyObject])`"
        )
    return object_type


def runs_informer(controller: Controller[Any]) -> bool:
    """Whether the leader runs this controller's informer (it has one, on an interval)."""
    return has_informer(controller) and controller.inform_interval is not None


def has_informer(controller: Controller[Any]) -> bool:
    """Return whether the controller overrides inform()."""
    return type(controller).inform is not Controller.inform


def has_finalize(controller: Controller[Any]) -> bool:
    """Return whether the controller overrides finalize()."""
    return type(controller).finalize is not Controller.finalize
