"""cancel_once and settle (cancellation.py): a task is asked to stop once, then waited for."""

from __future__ import annotations

import asyncio

from delta_actors.cancellation import cancel_once, settle


async def test_a_second_cancel_once_leaves_the_cleanup_of_the_first_alone():
    cleaned = asyncio.Event()

    async def query() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # as psycopg sends its cancel request
            cleaned.set()
            raise

    task = asyncio.create_task(query())
    await asyncio.sleep(0)
    cancel_once(task)
    await asyncio.sleep(0.01)
    cancel_once(task)  # a plain cancel() here would interrupt the cleanup
    await asyncio.gather(task, return_exceptions=True)
    assert cleaned.is_set() and task.cancelled()


async def test_settle_waits_for_cancelled_tasks_but_no_longer_than_its_timeout():
    async def cleans_up(seconds: float) -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(seconds)

    quick = asyncio.create_task(cleans_up(0.02))
    stuck = asyncio.create_task(cleans_up(5))
    await asyncio.sleep(0)
    await settle([quick, stuck], timeout=0.2)
    assert quick.cancelled()
    assert not stuck.done()  # settle gave up on it after 0.2 s, not its 5 s cleanup
    stuck.cancel()
    await asyncio.gather(stuck, return_exceptions=True)
