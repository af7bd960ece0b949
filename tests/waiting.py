"""Waiting on a condition with a deadline, instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll `condition` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.01)


async def wait_until_async(
    condition: Callable[[], Awaitable[object] | object], timeout: float = 10.0, what: str = ""
) -> None:
    """Check `condition` (sync or async) until it is true; fail after `timeout` seconds.

    Between checks the event loop runs, so the workers under test make progress.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await _check(condition):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(0.01)


async def _check(condition: Callable[[], Awaitable[object] | object]) -> bool:
    result = condition()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)
