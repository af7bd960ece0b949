"""The test harness's waiting helpers fail loudly at their deadline instead of hanging."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.waiting import wait_until, wait_until_async


def test_wait_until_fails_at_its_deadline_naming_what_it_waited_for():
    """A condition that never holds: AssertionError after the timeout, with the description."""
    began = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0\.05s waiting for nothing"):
        wait_until(lambda: False, 0.05, "nothing")
    assert time.monotonic() - began < 1.0


def test_wait_until_async_accepts_sync_and_async_conditions():
    """wait_until_async returns once a plain or awaitable condition holds, and fails otherwise."""
    calls = 0

    def third_time() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    async def never() -> bool:
        return False

    async def scenario() -> None:
        await wait_until_async(third_time, 1.0)
        with pytest.raises(AssertionError, match="waiting for never"):
            await wait_until_async(never, 0.05, "never")

    asyncio.run(scenario())
    assert calls == 3
