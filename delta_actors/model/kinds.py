"""The metaclass behind `delta.Job` and `delta.Object`: a msgspec Struct with a kind.

A kind is a class-level constant given once as a class keyword, `class X(delta.Job,
kind="x")`. It is validated when the class is created, so a bad name fails at import time
rather than at the first enqueue. Subclasses without `kind=` are abstract bases.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from delta_actors.errors import ConfigError
from delta_actors.model.limits import check_limit
from delta_actors.model.names import validate_name


class KindMeta(msgspec.StructMeta):
    """Struct metaclass that accepts and validates `kind=` (and `timeout=`, and for jobs
    `namespace=`, `concurrency=` and `rate=`) class keywords."""

    def __new__(
        mcls,
        name: str,
        bases: tuple[type, ...],
        attrs: dict[str, Any],
        /,
        *,
        kind: str | None = None,
        timeout: float | None = None,
        namespace: str | None = None,
        concurrency: int | None = None,
        rate: tuple[int, float] | None = None,
        **struct_options: Any,
    ) -> KindMeta:
        cls = super().__new__(mcls, name, bases, attrs, **struct_options)
        if concurrency is not None or rate is not None:
            if not hasattr(cls, "default_namespace"):
                raise ConfigError(
                    f"{name} cannot declare concurrency= or rate=: an object's limits are "
                    "its controller's (`concurrency = ...`, `rate = ...` on the Controller)"
                )
            check_limit(concurrency, rate, f"{name}:")
            cls.concurrency = concurrency  # type: ignore[attr-defined]
            cls.rate = rate  # type: ignore[attr-defined]
        if kind is not None:
            validate_name(kind, f"kind of {name}")
            cls.kind = kind  # type: ignore[attr-defined]
            check = getattr(cls, "check_kinded", None)
            if check is not None:
                check()  # what the base needs of a concrete type, e.g. Object's id()
        if namespace is not None:
            if not hasattr(cls, "default_namespace"):
                raise ConfigError(
                    f"{name} cannot declare namespace=: an object's namespace is its "
                    "controller's (`namespace = ...` on the Controller), or an inform's"
                )
            validate_name(namespace, f"namespace of {name}")
            cls.default_namespace = namespace
        if timeout is not None:
            if not timeout > 0:
                raise ConfigError(f"timeout of {name} must be > 0 seconds, got {timeout!r}")
            cls.timeout = float(timeout)  # type: ignore[attr-defined]
        return cls


class Kinded(msgspec.Struct, metaclass=KindMeta):
    """Base of the user types that carry a kind; not used directly."""

    kind: ClassVar[str]
    timeout: ClassVar[float] = 60.0  # seconds a handler may run before it counts as failed


def kind_of(cls: type[Kinded]) -> str:
    """Return the kind of `cls`, or raise ConfigError naming the fix."""
    if not isinstance(cls, type):
        raise ConfigError(
            f"expected a delta.Object or delta.Job type (e.g. Order, not an instance or "
            f"the kind's name), got {cls!r:.100}"
        )
    kind = cls.__dict__.get("kind") or getattr(cls, "kind", None)
    if not isinstance(kind, str):
        raise ConfigError(
            f"{cls.__qualname__} has no kind: declare it as "
            f'`class {cls.__name__}(..., kind="name")`'
        )
    return kind
