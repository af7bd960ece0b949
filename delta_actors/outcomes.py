"""Outcomes a handler signals by raising: control flow, not failures.

Raise one of these from a job handler or a controller's `work` to say what should happen
next. Any other exception is a failure, retried with backoff. `Cancel` is for plain jobs
only: from a controller's `work` it is a failure whose message names the fix.
"""

from __future__ import annotations


class Outcome(Exception):  # noqa: N818 (these are signals, not errors)
    """Base of the outcomes a handler raises to steer its job."""


class Requeue(Outcome):
    """Run again after `after` seconds without counting a failed attempt (River's snooze)."""

    def __init__(self, after: float = 0.0) -> None:
        if not after >= 0:
            raise ValueError(f"Requeue(after=...) must be >= 0 seconds, got {after!r}")
        super().__init__(f"requeue after {after}s")
        self.after = float(after)


class Cancel(Outcome):
    """Stop for good: the job is cancelled, not retried and not counted as failed."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class PermanentError(Outcome):
    """A failure that retrying cannot fix: the job is discarded at once (a resource degrades)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class Delete(Outcome):
    """The resource is gone: mark it deleted; it stays so until a newer change is informed."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
