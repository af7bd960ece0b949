"""The exceptions delta_actors raises: one root, a shallow tree.

Controller and job outcomes that are not failures (requeue, delete, cancel, permanent
error) are control flow, not errors; they live in `delta_actors.outcomes`.
"""

from __future__ import annotations


class DeltaError(Exception):
    """Root of every error delta_actors raises."""


class ConfigError(DeltaError):
    """Raised when a name, an option, an app or a registration is invalid."""


class UnknownKindError(ConfigError):
    """Raised when a kind is used that the app does not register."""


class UnknownNamespaceError(ConfigError):
    """Raised when a namespace is used that the app does not configure."""


class EncodeError(DeltaError):
    """Raised when a job, an object or a value given cannot be encoded for storage."""


class DecodeError(DeltaError):
    """Raised when stored arguments no longer decode into their type."""


class DatabaseError(DeltaError):
    """Raised when PostgreSQL cannot be reached or refuses an operation."""


class SchemaError(DatabaseError):
    """Raised when the database schema is missing or behind; `delta-actors migrate` fixes it."""


class ClusterError(DeltaError):
    """Raised when a local PostgreSQL cluster cannot be created, started or stopped."""


class ProtocolError(DeltaError):
    """Raised when a pipe frame between supervisor and actor is truncated or corrupt."""


class ActorLostError(DeltaError):
    """Raised in an actor that rescue declared dead (its heartbeat expired); it restarts."""
