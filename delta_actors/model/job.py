"""Plain background jobs: `delta.Job`, the arguments of one unit of work."""

from __future__ import annotations

from delta_actors.model.kinds import Kinded


class Job(Kinded):
    """Base class of plain background jobs: a msgspec Struct with a kind.

    Example::

        class SendEmail(delta.Job, kind="send-email"):
            to: str

    The optional class keyword `timeout=` (seconds, default 60) bounds one run of the
    handler; a run that takes longer is cancelled and counts as a failed attempt.
    """
