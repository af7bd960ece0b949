"""Namespace configuration."""

from __future__ import annotations

from dataclasses import dataclass

from delta_actors.errors import ConfigError

DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True)
class Namespace:
    """A partition of work with its own concurrency and processes.

    Args:
        max_workers: works run at once in each process of the namespace.
        processes: actor processes that serve the namespace.
        resource_expiry: seconds after which a synced resource is worked again; None: never.
        retention: seconds cancelled and discarded plain jobs, and deleted resources, are
            kept before cleanup (7 days: what an operator may want to retry).
        completed_retention: seconds completed plain jobs are kept (24 hours, as River).
        work_retention: seconds the finished works of resources are kept (1 hour): the
            resource row holds the state and the newest errors, so a work's own row only
            matters while someone looks into what just happened.
    """

    max_workers: int = 10
    processes: int = 1
    resource_expiry: float | None = None
    retention: float = 7 * 24 * 3600.0
    completed_retention: float = 24 * 3600.0
    work_retention: float = 3600.0

    def __post_init__(self) -> None:
        if not (isinstance(self.max_workers, int) and 1 <= self.max_workers <= 10_000):
            raise ConfigError(
                f"Namespace(max_workers=...) must be 1..10000, got {self.max_workers!r}"
            )
        if not (isinstance(self.processes, int) and 1 <= self.processes <= 256):
            raise ConfigError(f"Namespace(processes=...) must be 1..256, got {self.processes!r}")
        if self.resource_expiry is not None and not self.resource_expiry > 0:
            raise ConfigError(
                f"Namespace(resource_expiry=...) must be > 0 seconds or None, "
                f"got {self.resource_expiry!r}"
            )
        for name in ("retention", "completed_retention", "work_retention"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value >= 0):
                raise ConfigError(f"Namespace({name}=...) must be >= 0 seconds, got {value!r}")
