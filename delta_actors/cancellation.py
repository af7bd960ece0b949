"""Keeping a cancelled task cancelled.

On Python 3.11, `asyncio.wait_for` (used inside psycopg_pool, among others) can swallow a
cancellation that arrives just as the awaited thing completes (CPython gh-86296): the task
is left with a pending cancellation request (`task.cancelling() > 0`) but carries on. A
service loop that then sleeps for its interval would delay a shutdown by that long. Every
long-lived loop therefore calls `raise_if_cancelling()` once per iteration.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Raise CancelledError if someone asked to cancel the current task."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
