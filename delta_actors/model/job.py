"""Plain background jobs: `delta.Job`, the arguments of one unit of work."""

from __future__ import annotations

from typing import ClassVar

from delta_actors.model.kinds import Kinded


class Job(Kinded):
    """Base class of plain background jobs: a msgspec Struct with a kind.

    Example::

        class SendEmail(delta.Job, kind="send-email"):
            to: str

    The optional class keyword `timeout=` (seconds, default 60) bounds one run of the
    handler; a run that takes longer is cancelled and counts as a failed attempt.
    `namespace=` names the queue its jobs go to when `enqueue` is not given one
    (`class SendEmail(delta.Job, kind="send-email", namespace="mail")`). `concurrency=`
    and `rate=(count, seconds)` limit its runs cluster-wide (model/limits.py).
    """

    default_namespace: ClassVar[str | None] = None
    concurrency: ClassVar[int | None] = None  # at most this many run at once, cluster-wide
    rate: ClassVar[tuple[int, float] | None] = None  # (count, seconds): starts per window
