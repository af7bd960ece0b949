"""Keeping a cancelled task cancelled.

On Python 3.11, `asyncio.wait_for` (used inside psycopg_pool, among others) can swallow a
cancellation that arrives just as the awaited thing completes (CPython gh-86296): the task
is left with a pending cancellation request (`task.cancelling() > 0`) but carries on. A
service loop that then sleeps for its interval would delay a shutdown by that long. Every
long-lived loop therefore calls `raise_if_cancelling()` once per iteration.

A task is asked to stop once, never twice (`cancel_once`). A task cancelled inside a
psycopg query sends the server a cancel request and waits for the query to end; a second
cancellation interrupts that, and psycopg closes the connection while its cancel request
is in flight. PgBouncer 1.18 (Debian 12's) exits on that race ("FATAL ... disconnect_client():
bad client state"), taking every client of the pooler down with it. For the same reason a
task left running after its cancellation (not awaited, so that a cut network does not hold
a stop up) is given a moment to end (`settle`) before its loop closes: closing the loop
cancels every task still pending, a second time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

# How long a stop waits for cancelled queries to end: a server answers a cancel request
# in milliseconds; one the network cut off never does, and is not waited for longer.
SETTLE_TIMEOUT = 1.0


def raise_if_cancelling() -> None:
    """Raise CancelledError if someone asked to cancel the current task."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def cancel_once(task: asyncio.Task[object] | asyncio.Future[object] | None) -> None:
    """Cancel `task` unless it is done or already being cancelled (see the module's note)."""
    if task is None or task.done():
        return
    if isinstance(task, asyncio.Task) and task.cancelling():
        return
    task.cancel()


async def settle(tasks: Iterable[asyncio.Task[Any]], timeout: float = SETTLE_TIMEOUT) -> None:
    """Cancel each of `tasks` once and wait up to `timeout` s for them all to end."""
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        cancel_once(task)
    if pending:
        await asyncio.wait(pending, timeout=timeout)
